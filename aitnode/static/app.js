// aitnode client page.
//
// Plain JavaScript, no dependencies, nothing loaded from anywhere but the
// node (the page is served with Content-Security-Policy: default-src 'self').
// Transactions are signed here, in the browser: canonical CBOR (below),
// SHA-256 and Ed25519 from WebCrypto, bech32 addresses.  The private key
// never leaves the page.  The wire contract is docs/protocol.md.

import * as verify from "./verify.js";

// -- bytes and hex ---------------------------------------------------------

const utf8 = new TextEncoder();

export function hex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

// Lowercase hex only (the protocol's one spelling); null when malformed.
export function unhex(text, nbytes) {
  if (typeof text !== "string" || text.length % 2 || !/^[0-9a-f]*$/.test(text)) return null;
  if (nbytes !== undefined && text.length !== 2 * nbytes) return null;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return out;
}

export function concat(parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function b64urlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const bin = atob(b64);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

// -- canonical CBOR (RFC 8949 core deterministic encoding) -----------------
//
// The consensus value space only: unsigned integers below 2**64 (Number or
// BigInt), text strings, arrays, maps with text keys, booleans.

export const U64_MAX = (1n << 64n) - 1n;

function cborHead(major, n) {
  n = BigInt(n);
  const m = major << 5;
  if (n < 24n) return Uint8Array.of(m | Number(n));
  let size, info;
  if (n < 0x100n) [size, info] = [1, 24];
  else if (n < 0x10000n) [size, info] = [2, 25];
  else if (n < 0x100000000n) [size, info] = [4, 26];
  else [size, info] = [8, 27];
  const out = new Uint8Array(1 + size);
  out[0] = m | info;
  for (let i = size; i >= 1; i--) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

function cborItem(value, where, parts) {
  if (typeof value === "boolean") {
    parts.push(Uint8Array.of(value ? 0xf5 : 0xf4));
  } else if (typeof value === "number" || typeof value === "bigint") {
    if (typeof value === "number" && !Number.isInteger(value)) throw new TypeError(`${where}: floats are not allowed`);
    if (typeof value === "number" && !Number.isSafeInteger(value)) throw new TypeError(`${where}: ${value} is not exact; use a BigInt`);
    const n = BigInt(value);
    if (n < 0n || n > U64_MAX) throw new RangeError(`${where}: integers must lie in [0, 2**64)`);
    parts.push(cborHead(0, n));
  } else if (typeof value === "string") {
    const bytes = utf8.encode(value);
    parts.push(cborHead(3, bytes.length), bytes);
  } else if (Array.isArray(value)) {
    parts.push(cborHead(4, value.length));
    value.forEach((item, i) => cborItem(item, `${where}[${i}]`, parts));
  } else if (value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const entries = Object.keys(value).map((k) => {
      const kb = utf8.encode(k);
      return [concat([cborHead(3, kb.length), kb]), value[k], k];
    });
    // Sorted by the bytes of the encoded keys: shorter keys first, then bytewise.
    entries.sort((a, b) => compareBytes(a[0], b[0]));
    parts.push(cborHead(5, entries.length));
    for (const [kb, v, k] of entries) {
      parts.push(kb);
      cborItem(v, `${where}.${k}`, parts);
    }
  } else {
    throw new TypeError(`${where}: ${value === null ? "null" : typeof value} is not a consensus value`);
  }
}

export function canonical(value) {
  const parts = [];
  cborItem(value, "value", parts);
  return concat(parts);
}

// -- JSON with exact big integers -------------------------------------------

// JSON.parse, but integers beyond 2**53 come back as BigInt (exact).
// Browsers with JSON.parse source text access (Chromium 114+, Firefox 135+)
// use it; others get a small parser of their own.
const HAS_JSON_SOURCE = (() => {
  try {
    let seen = false;
    JSON.parse("1", (k, v, c) => ((seen = !!(c && c.source === "1")), v));
    return seen;
  } catch (e) {
    return false;
  }
})();

export function parseJSON(text) {
  if (!HAS_JSON_SOURCE) return parseJSONExact(text);
  return JSON.parse(text, function (key, value, context) {
    if (typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
      return BigInt(context.source);
    }
    return value;
  });
}

export function parseJSONExact(text) {
  let i = 0;
  const fail = () => {
    throw new SyntaxError(`bad JSON at position ${i}`);
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out = {};
      ws();
      if (text[i] === "}") return i++, out;
      for (;;) {
        ws();
        if (text[i] !== '"') fail();
        const k = str();
        ws();
        if (text[i++] !== ":") fail();
        out[k] = value();
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") return i++, out;
        else fail();
      }
    }
    if (c === "[") {
      i++;
      const out = [];
      ws();
      if (text[i] === "]") return i++, out;
      for (;;) {
        out.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "]") return i++, out;
        else fail();
      }
    }
    if (c === '"') return str();
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (m) {
      i += m[0].length;
      const n = Number(m[0]);
      return !m[2] && !m[3] && !Number.isSafeInteger(n) ? BigInt(m[0]) : n;
    }
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, i)) return (i += word.length), v;
    }
    fail();
  };
  const str = () => {
    const m = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(text.slice(i));
    if (!m) fail();
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const out = value();
  ws();
  if (i !== text.length) fail();
  return out;
}

// JSON.stringify that writes BigInt as plain digits.
export function toJSON(value) {
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return "[" + value.map(toJSON).join(",") + "]";
  if (value !== null && typeof value === "object") {
    return "{" + Object.keys(value).map((k) => JSON.stringify(k) + ":" + toJSON(value[k])).join(",") + "}";
  }
  return JSON.stringify(value);
}

// -- hashes -------------------------------------------------------------------

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// -- bech32 addresses (BIP-173 checksum, hrp "ait", no version byte) ---------

const CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
const GEN = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
export const HRP = "ait";

function polymod(values) {
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = (((chk & 0x1ffffff) << 5) ^ v) >>> 0;
    for (let i = 0; i < 5; i++) if ((top >>> i) & 1) chk = (chk ^ GEN[i]) >>> 0;
  }
  return chk;
}

function hrpExpand(hrp) {
  const out = [];
  for (const c of hrp) out.push(c.charCodeAt(0) >> 5);
  out.push(0);
  for (const c of hrp) out.push(c.charCodeAt(0) & 31);
  return out;
}

function convertBits(data, from, to, pad) {
  let acc = 0, bits = 0;
  const out = [], maxv = (1 << to) - 1;
  for (const value of data) {
    if (value >> from) return null;
    acc = ((acc << from) | value) & 0xffffff;
    bits += from;
    while (bits >= to) {
      bits -= to;
      out.push((acc >> bits) & maxv);
    }
  }
  if (pad) {
    if (bits) out.push((acc << (to - bits)) & maxv);
  } else if (bits >= from || ((acc << (to - bits)) & maxv)) {
    return null;
  }
  return out;
}

export function bech32Encode(hrp, data5) {
  const pm = polymod([...hrpExpand(hrp), ...data5, 0, 0, 0, 0, 0, 0]) ^ 1;
  let out = hrp + "1";
  for (const d of data5) out += CHARSET[d];
  for (let i = 0; i < 6; i++) out += CHARSET[(pm >>> (5 * (5 - i))) & 31];
  return out;
}

// The 20 bytes behind an address, or null (lowercase "ait1..." only).
export function addressBytes(text) {
  if (typeof text !== "string" || text.length > 90 || text !== text.toLowerCase()) return null;
  const pos = text.lastIndexOf("1");
  if (pos < 1 || pos + 7 > text.length || text.slice(0, pos) !== HRP) return null;
  const data = [];
  for (const c of text.slice(pos + 1)) {
    const v = CHARSET.indexOf(c);
    if (v < 0) return null;
    data.push(v);
  }
  if (polymod([...hrpExpand(HRP), ...data]) !== 1) return null;
  const raw = convertBits(data.slice(0, -6), 5, 8, false);
  return raw && raw.length === 20 ? Uint8Array.from(raw) : null;
}

export function addressFromBytes(raw20) {
  return bech32Encode(HRP, convertBits(raw20, 8, 5, true));
}

export async function addressOf(pubkey) {
  return addressFromBytes((await sha256(pubkey)).slice(0, 20));
}

// -- Ed25519 keys (WebCrypto) -----------------------------------------------

// PKCS#8 wrapping of a 32-byte Ed25519 seed (RFC 8410).
const PKCS8_ED25519 = unhex("302e020100300506032b657004220420");

// {seed, publicKey, address, privateKey (CryptoKey)} from a 32-byte seed.
export async function keyFromSeed(seed) {
  if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new TypeError("a seed is 32 bytes");
  const privateKey = await crypto.subtle.importKey("pkcs8", concat([PKCS8_ED25519, seed]), { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const publicKey = b64urlDecode(jwk.x);
  return { seed, publicKey, address: await addressOf(publicKey), privateKey };
}

export async function ed25519Sign(key, message) {
  return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key.privateKey, message));
}

// -- transactions -----------------------------------------------------------

// Sign a transaction: {body, signBytes, txHash, wire} (section 5 of the protocol).
export async function signTx(key, chainId, type, nonce, fee, payload) {
  const body = { chain_id: chainId, type, sender: key.address, nonce, fee, payload };
  const signBytes = await sha256(canonical(body));
  const sig = hex(await ed25519Sign(key, signBytes));
  const pubkey = hex(key.publicKey);
  const txHash = hex(await sha256(canonical({ ...body, pubkey, sig })));
  const wire = { type, sender: key.address, nonce, fee, payload, pubkey, sig };
  return { body, signBytes: hex(signBytes), txHash, wire };
}

// -- the node's RPC ----------------------------------------------------------

// The node's base URL: this file is served at <base>static/app.js.
const BASE = new URL("../", import.meta.url);

export class RpcError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export async function rpc(path, body) {
  const init = body === undefined
    ? { method: "GET", cache: "no-store" }
    : { method: "POST", headers: { "content-type": "application/json" }, body: toJSON(body) };
  let resp, text;
  try {
    resp = await fetch(new URL(path.replace(/^\//, ""), BASE), init);
    text = await resp.text();
  } catch (e) {
    throw new RpcError("unreachable", `the node did not answer (${e.message})`, 0);
  }
  let out;
  try {
    out = parseJSON(text);
  } catch (e) {
    throw new RpcError("bad_answer", `HTTP ${resp.status}: the answer is not JSON`, resp.status);
  }
  if (!resp.ok) {
    const err = (out && out.error) || {};
    throw new RpcError(err.code || `http_${resp.status}`, err.message || `HTTP ${resp.status}`, resp.status);
  }
  return out;
}

// -- self test against the protocol's vectors ----------------------------------

// The vectors cbor, keys (sender, receiver), transfer of docs/protocol.md
// (tests/test_page.py checks that this copy matches the document).
const BUILTIN_VECTORS = String.raw`
{"cbor":{"cases":[{"value":0,"cbor":"00"},{"value":23,"cbor":"17"},{"value":24,"cbor":"1818"},{"value":256,"cbor":"190100"},{"value":65536,"cbor":"1a00010000"},{"value":4294967296,"cbor":"1b0000000100000000"},{"value":18446744073709551615,"cbor":"1bffffffffffffffff"},{"value":false,"cbor":"f4"},{"value":true,"cbor":"f5"},{"value":"\u00fc","cbor":"62c3bc"},{"value":[1,[2,3]],"cbor":"8201820203"},{"value":{"b":1,"a":2,"aa":3,"":4},"cbor":"a4600461610261620162616103"}]},
 "keys":{"sender":{"private_key":"0c0958cb2c5f8d3a6b2b41eb974a19f254ab5de9cbbdaf49c430cb69cfa820b9","public_key":"3d79622505f9ef41ac0422a8c36c012992850342f2b8c2ebac9042363e14eaf6","address":"ait1d7r56muqpr3eunnqacyc7u7dr0yarfwqswchl4"},"receiver":{"private_key":"6a567468b6d7bd9b66f43e7ebc6580337bfeea97286963ddeef4db9e4d169647","public_key":"da89d31d5621b907bf2b0628c2c29f1596b8e2767c4f4ab9202d3e9fea8221a4","address":"ait1pxp7qmk6nqtd0zavnnl8wxd37xcz0flrl7f5vl"},"zero_address":"ait1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq2424ay","ff_address":"ait1llllllllllllllllllllllllllllllllxyt66w"},
 "transfer":{"chain_id":"ait-vector","seed":"0c0958cb2c5f8d3a6b2b41eb974a19f254ab5de9cbbdaf49c430cb69cfa820b9","body":{"chain_id":"ait-vector","type":"TRANSFER","sender":"ait1d7r56muqpr3eunnqacyc7u7dr0yarfwqswchl4","nonce":1,"fee":68,"payload":{"to":"ait1pxp7qmk6nqtd0zavnnl8wxd37xcz0flrl7f5vl","amount":12345}},"body_cbor":"a66366656518446474797065685452414e53464552656e6f6e6365016673656e646572782a6169743164377235366d757170723365756e6e7161637963377537647230796172667771737763686c34677061796c6f6164a262746f782a6169743170787037716d6b366e717464307a61766e6e6c38777864333778637a30666c726c376635766c66616d6f756e7419303968636861696e5f69646a6169742d766563746f72","sign_bytes":"55adb1844187f1a54106e16b0b4ea040c58f0573d194155132d8ae4680857df2","sig":"dcc2b2d025173bd27a08e432c971e0b3049fbeeed9a6162edbc786f13103753e5690b4d52b9aeeb75e1d767b4b5716e9136af0a7c2c277706280cbfb5e999f01","tx_hash":"f4dc5757ca9a37a6bf1488546fa1c909da2cbca6c2892b62696cd979bb297402"}}
`;

function sameJSON(a, b) {
  return toJSON(a) === toJSON(b);
}

// Check this page's CBOR, hashing, keys, addresses and signing against the
// protocol's test vectors: the built-in copy, or vectorsText (the JSON text
// of {name: vector} as docs/protocol.md has them; any subset of cbor, keys,
// transfer, min_fee, genesis, block1).  Resolves to {ok, passed, failed}.
export async function selfTest(vectorsText) {
  const v = parseJSON(vectorsText || BUILTIN_VECTORS);
  const passed = [], failed = [];
  const check = async (name, fn) => {
    try {
      const r = await fn();
      if (r === true) passed.push(name);
      else failed.push(`${name}: ${r}`);
    } catch (e) {
      failed.push(`${name}: ${e.name}: ${e.message}`);
    }
  };
  const expect = (got, want) => (got === want ? true : `got ${got}, want ${want}`);

  if (v.cbor) {
    for (const [i, c] of v.cbor.cases.entries()) {
      await check(`cbor[${i}]`, () => expect(hex(canonical(c.value)), c.cbor));
    }
    await check("cbor refuses null, floats, negatives, 2**64", () => {
      for (const bad of [null, 1.5, -1, 1n << 64n, undefined, { a: null }]) {
        try {
          canonical(bad);
          return `accepted ${String(bad)}`;
        } catch (e) { /* refused, as it should be */ }
      }
      return true;
    });
  }
  if (v.keys) {
    for (const [name, k] of Object.entries(v.keys)) {
      if (typeof k === "string") continue;
      await check(`keys.${name}`, async () => {
        const key = await keyFromSeed(unhex(k.private_key, 32));
        const r = expect(hex(key.publicKey), k.public_key);
        if (r !== true) return r;
        if (addressBytes(k.address) === null) return `${k.address} does not decode`;
        return expect(key.address, k.address);
      });
    }
    if (v.keys.zero_address) {
      await check("keys.zero_address", () => expect(addressFromBytes(new Uint8Array(20)), v.keys.zero_address));
    }
    if (v.keys.ff_address) {
      await check("keys.ff_address", () => expect(addressFromBytes(new Uint8Array(20).fill(255)), v.keys.ff_address));
    }
    await check("addresses refuse uppercase and bad checksums", () => {
      const good = v.keys.sender ? v.keys.sender.address : "ait1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq2424ay";
      const flipped = good.slice(0, -1) + (good.endsWith("q") ? "p" : "q");
      if (addressBytes(good.toUpperCase()) !== null) return "accepted uppercase";
      if (addressBytes(flipped) !== null) return "accepted a bad checksum";
      if (addressBytes("bc1" + good.slice(4)) !== null) return "accepted another hrp";
      return true;
    });
  }
  if (v.transfer) {
    const t = v.transfer;
    await check("transfer", async () => {
      const key = await keyFromSeed(unhex(t.seed, 32));
      const b = t.body;
      let r = expect(hex(canonical(b)), t.body_cbor);
      if (r !== true) return `body_cbor ${r}`;
      const signed = await signTx(key, t.chain_id, b.type, b.nonce, b.fee, b.payload);
      if ((r = expect(signed.signBytes, t.sign_bytes)) !== true) return `sign_bytes ${r}`;
      if ((r = expect(signed.wire.sig, t.sig)) !== true) return `sig ${r}`;
      if ((r = expect(signed.txHash, t.tx_hash)) !== true) return `tx_hash ${r}`;
      if (t.hashed_cbor !== undefined) {
        const hashed = { ...b, pubkey: signed.wire.pubkey, sig: signed.wire.sig };
        if ((r = expect(hex(canonical(hashed)), t.hashed_cbor)) !== true) return `hashed_cbor ${r}`;
      }
      if (t.wire !== undefined && !sameJSON(signed.wire, t.wire)) return `wire form differs: ${toJSON(signed.wire)}`;
      return true;
    });
  }
  if (v.min_fee) {
    for (const [i, c] of v.min_fee.cases.entries()) {
      await check(`min_fee[${i}]`, () => {
        const bytes = canonical(c.payload);
        const r = expect(hex(bytes), c.payload_cbor);
        if (r !== true) return r;
        const fee = c.type === "MINT" || c.type === "PARAM_UPDATE" || c.type === "AUTHORITY_UPDATE"
          ? 0n : BigInt(c.params.base_fee) + BigInt(c.params.fee_per_byte) * BigInt(bytes.length);
        return expect(fee.toString(), String(c.min_fee));
      });
    }
  }
  if (v.genesis) {
    await check("genesis header", async () => {
      const r = expect(hex(canonical(v.genesis.header)), v.genesis.header_cbor);
      return r !== true ? r : expect(hex(await sha256(canonical(v.genesis.header))), v.genesis.hash);
    });
  }
  if (v.block1) {
    await check("block1 header", async () => expect(hex(await sha256(canonical(v.block1.header))), v.block1.hash));
    await check("block1 txHashes", async () => {
      const chainId = v.block1.header.chain_id;
      for (const [i, tx] of v.block1.txs.entries()) {
        const h = hex(await sha256(canonical({ chain_id: chainId, ...tx })));
        const r = expect(h, v.block1.tx_hashes[i]);
        if (r !== true) return `tx ${i}: ${r}`;
      }
      return true;
    });
  }
  return { ok: failed.length === 0 && passed.length > 0, passed, failed };
}

// ===========================================================================
// The page
// ===========================================================================

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "title") e.title = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

// 1234567 -> "1,234,567" (Numbers and BigInts alike, exactly).
function fmt(n) {
  if (typeof n !== "number" && typeof n !== "bigint") return String(n);
  return BigInt(n).toLocaleString("en-US");
}

function signed(n) {
  const b = BigInt(n);
  return (b > 0n ? "+" : "") + fmt(b);
}

function short(text, n = 10) {
  return text && text.length > n + 3 ? text.slice(0, n) + "\u2026" : text || "";
}

function shortAddr(addr) {
  return addr && addr.length > 20 ? addr.slice(0, 9) + "\u2026" + addr.slice(-6) : addr || "\u2014";
}

// Block timestamps are seconds, or milliseconds on chains that stamp blocks
// in ms (any value past 10**11: seconds that large are 5,000 years away).
function ago(ts) {
  const t = Number(ts);
  const s = Math.max(0, Math.round(Date.now() / 1000 - (t > 1e11 ? t / 1000 : t)));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

// An address cell: the short form, the whole address on hover, a click
// shows that account.
function addrLink(addr) {
  if (!addr) return el("span", { class: "muted" }, "\u2014");
  const a = el("a", { href: "#", class: "addr", title: addr }, shortAddr(addr));
  a.addEventListener("click", (ev) => {
    ev.preventDefault();
    showAccount(addr);
  });
  return a;
}

function showError(box, err) {
  box.replaceChildren();
  box.hidden = false;
  box.className = "error";
  if (err instanceof RpcError) {
    box.append(el("code", {}, err.code), " ", err.message);
  } else {
    box.append(el("code", {}, err.name || "error"), " ", err.message || String(err));
  }
}

function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

const state = {
  chainId: null,
  height: -1,
  hash: null,
  justified: null, // {height, hash} from getHead, or null when the node does not say
  finalized: null,
  blocks: new Map(), // height -> full block
  receipts: [], // newest first: {receipt_id, miner, compute_units, height, minted, ...}
  seenClaims: new Set(),
  account: null,
  online: null,
  trust: null, // {hash, source} of the genesis the light client starts from, or null (none pinned)
  chain: null, // the verify.HeaderChain followed from it
  finalHeight: -1, // the verified finalized height the marks were last checked at
  offered: null, // the node's genesis hash, offered for pinning
  detail: null, // the receipt in the detail view
};

const SHOW_BLOCKS = 10;
const SCAN_BLOCKS = 30; // how far back the first load looks for receipts
const SHOW_RECEIPTS = 12;

function setOnline(ok, err) {
  if (state.online === ok) return;
  state.online = ok;
  const s = $("node-status");
  s.textContent = ok ? "live" : "node unreachable";
  s.className = ok ? "pill ok" : "pill bad";
  s.title = ok ? "" : (err && err.message) || "";
}

// -- head, blocks, receipts ---------------------------------------------------

async function fetchBlocks(heights) {
  // a few at a time, in order
  for (let i = 0; i < heights.length; i += 8) {
    const batch = heights.slice(i, i + 8);
    const blocks = await Promise.all(batch.map((h) => rpc(`rpc/getBlock/${h}?full=true`)));
    for (const b of blocks) {
      state.blocks.set(Number(b.height), b);
      findClaims(b);
    }
  }
}

// The highest height whose block no longer links to the one above it
// (another branch replaced it), or -1.
function staleBelow(to) {
  for (let h = to; h > 0; h--) {
    const b = state.blocks.get(h), p = state.blocks.get(h - 1);
    if (!b || !p) continue;
    if (b.parent !== p.hash) return h - 1;
  }
  return -1;
}

async function loadBlocks(from, to) {
  const missing = [];
  for (let h = from; h <= to; h++) if (!state.blocks.has(h)) missing.push(h);
  await fetchBlocks(missing);
  const low = to - SHOW_BLOCKS + 1;
  const stale = staleBelow(to);
  if (stale >= 0) {
    const again = [];
    for (let h = stale; h >= Math.max(0, low); h--) {
      state.blocks.delete(h);
      again.unshift(h);
    }
    await fetchBlocks(again);
  }
  for (const h of [...state.blocks.keys()]) if (h < low || h > to) state.blocks.delete(h);
}

function findClaims(block) {
  for (const tx of block.txs) {
    if (tx.type !== "RECEIPT_CLAIM" || typeof tx.payload !== "object") continue;
    const p = tx.payload;
    if (state.seenClaims.has(p.receipt_id)) continue;
    state.seenClaims.add(p.receipt_id);
    const r = {
      receipt_id: p.receipt_id,
      miner: p.miner_addr,
      client: p.client_addr,
      compute_units: p.compute_units,
      price: p.price,
      height: Number(block.height),
      minted: null,
    };
    state.receipts.push(r);
    rpc(`rpc/getReceipt/${encodeURIComponent(p.receipt_id)}`)
      .then((out) => {
        r.minted = out.paid ? out.paid.mint : null;
        r.miner_paid = out.paid ? out.paid.miner_paid : null;
        renderReceipts();
        checkReceipts();
      })
      .catch(() => {
        r.minted = "?";
        renderReceipts();
      });
  }
  state.receipts.sort((a, b) => b.height - a.height);
  state.receipts.length = Math.min(state.receipts.length, 50);
}

// getHead's "justified"/"finalized": {height, hash} when well formed, else
// null (a node from before finality sends neither: the page shows "–").
function checkpoint(c) {
  if (c === null || typeof c !== "object" || Array.isArray(c)) return null;
  const h = c.height;
  if (!(typeof h === "bigint" ? h >= 0n : Number.isSafeInteger(h) && h >= 0)) return null;
  if (unhex(c.hash, 32) === null) return null;
  return { height: Number(h), hash: c.hash };
}

function sameCheckpoint(a, b) {
  return a === b || (a !== null && b !== null && a.height === b.height && a.hash === b.hash);
}

function renderCheckpoint(id, c) {
  const e = $(id);
  e.textContent = c ? fmt(c.height) : "–";
  e.setAttribute("data-height", c ? String(c.height) : "");
  e.title = c ? c.hash : "this node does not report finality";
}

function isFinal(height) {
  return state.finalized !== null && height <= state.finalized.height;
}

function renderHead() {
  const h = $("head-height");
  h.textContent = fmt(state.height);
  h.setAttribute("data-height", String(state.height));
  renderCheckpoint("finalized-height", state.finalized);
  renderCheckpoint("justified-height", state.justified);
  $("head-hash").textContent = state.hash || "";
  $("head-hash").title = state.hash || "";
  const top = state.blocks.get(state.height);
  $("head-age").textContent = top ? ago(top.timestamp) : "";
}

function renderBlocks() {
  const rows = [];
  const heights = [...state.blocks.keys()].sort((a, b) => b - a).slice(0, SHOW_BLOCKS);
  for (const h of heights) {
    const b = state.blocks.get(h);
    const claims = b.txs.filter((t) => t.type === "RECEIPT_CLAIM").length;
    const final = isFinal(h);
    rows.push(el("tr", { "data-height": String(h), "data-finalized": final ? "1" : "0", class: final ? "finalized" : "" },
      el("td", { class: "num" }, fmt(h)),
      el("td", { class: "mono", title: b.hash }, short(b.hash, 12)),
      el("td", { class: "num" }, b.txs.length, claims ? el("span", { class: "tag", title: "receipt claims" }, `${claims} rcpt`) : null),
      el("td", {}, b.proposer ? addrLink(b.proposer) : el("span", { class: "muted" }, "genesis")),
      el("td", { class: "muted" }, ago(b.timestamp)),
      el("td", {}, final ? el("span", { class: "final", title: "finalized: never reverted" }, "final") : ""),
    ));
  }
  $("blocks-body").replaceChildren(...rows);
}

function renderReceipts() {
  const list = state.receipts.slice(0, SHOW_RECEIPTS);
  $("receipts-empty").hidden = list.length > 0;
  $("receipts-body").replaceChildren(...list.map((r) => el("tr", {},
    el("td", { class: "num" }, fmt(r.height)),
    el("td", { class: "mono", title: r.receipt_id }, short(r.receipt_id, 14)),
    el("td", {}, addrLink(r.miner)),
    el("td", { class: "num" }, fmt(r.compute_units)),
    el("td", { class: "num strong" }, r.minted === null ? "\u2026" : fmt(r.minted)),
    el("td", {}, receiptMark(r)),
  )));
  if (state.detail) renderDetail();
}

async function refreshSupply() {
  try {
    const s = await rpc("rpc/getSupply");
    $("supply-total").textContent = fmt(s.total);
    $("supply-receipts").textContent = fmt(s.receipts);
  } catch (e) { /* shown by the status pill when the node is gone */ }
}

let polling = false;

async function tick() {
  if (polling) return;
  polling = true;
  try {
    const head = await rpc("rpc/getHead");
    setOnline(true);
    const height = Number(head.height);
    const justified = checkpoint(head.justified), finalized = checkpoint(head.finalized);
    const finality = !sameCheckpoint(justified, state.justified) || !sameCheckpoint(finalized, state.finalized);
    state.justified = justified;
    state.finalized = finalized;
    if (height !== state.height || head.hash !== state.hash) {
      const first = state.height < 0;
      // The head went back, or was replaced at the same height: another branch won.
      const reorg = !first && height <= state.height;
      if (reorg) state.blocks.clear();
      let from = height - (first ? SCAN_BLOCKS : SHOW_BLOCKS) + 1;
      if (!first && !reorg) from = Math.max(from, state.height + 1);
      await loadBlocks(Math.max(0, from), height);
      // Only now: if a block could not be read, the next tick tries again.
      state.height = height;
      state.hash = head.hash;
      renderHead();
      renderBlocks();
      renderReceipts();
      refreshSupply();
      if (state.account) refreshAccount(false);
      onHeadForSend();
    } else {
      renderHead();
      if (finality) renderBlocks();
    }
  } catch (e) {
    setOnline(false, e);
  } finally {
    polling = false;
  }
  follow();
}

// -- account panel -------------------------------------------------------------

function showAccount(addr) {
  $("acct-address").value = addr;
  loadAccount();
  $("account").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function loadAccount() {
  const addr = $("acct-address").value.trim();
  const err = $("acct-error");
  if (addressBytes(addr) === null) {
    state.account = null;
    $("acct-result").hidden = true;
    showError(err, new RpcError("bad_address", "an address is ait1 followed by 38 lowercase bech32 characters"));
    return;
  }
  state.account = addr;
  await refreshAccount(true);
}

async function refreshAccount(showErrors) {
  const addr = state.account;
  if (!addr) return;
  try {
    const [bal, hist] = await Promise.all([
      rpc(`rpc/getBalance/${addr}`),
      rpc(`rpc/getHistory/${addr}?limit=20`),
    ]);
    if (state.account !== addr) return;
    clearError($("acct-error"));
    $("acct-result").hidden = false;
    $("acct-shown").textContent = addr;
    const b = $("acct-balance");
    b.textContent = fmt(bal.balance);
    b.setAttribute("data-value", String(bal.balance));
    $("acct-nonce").textContent = fmt(bal.nonce);
    checkBalance(addr, bal);
    const rows = [];
    for (const p of hist.pending) rows.push(historyRow(addr, p, true));
    for (const t of hist.txs) rows.push(historyRow(addr, t, false));
    $("acct-history").replaceChildren(...rows);
    $("acct-history-empty").hidden = rows.length > 0;
  } catch (e) {
    if (showErrors) showError($("acct-error"), e);
  }
}

function historyRow(addr, t, pending) {
  const p = t.payload || {};
  let other = null;
  if (t.type === "TRANSFER" || t.type === "MINT") other = t.sender === addr ? p.to : t.sender;
  else if (t.type === "RECEIPT_CLAIM") other = p.client_addr;
  const delta = pending ? null : BigInt(t.delta);
  return el("tr", { class: pending ? "pending" : "" },
    el("td", { class: "num" }, pending ? el("span", { class: "tag" }, "pending") : fmt(t.height)),
    el("td", {}, t.type),
    el("td", {}, other ? el("span", {}, t.sender === addr ? "to " : "from ", addrLink(other)) : "\u2014"),
    el("td", { class: "num " + (delta === null ? "" : delta < 0n ? "neg" : "pos") }, delta === null ? "" : signed(delta)),
    el("td", { class: "num muted" }, fmt(t.fee)),
    el("td", { class: "mono muted", title: t.txHash }, short(t.txHash, 10)),
  );
}

// -- send AIT ----------------------------------------------------------------------

let sendKey = null; // the key from the seed field, once it parses

async function onSeedInput() {
  const text = $("send-seed").value.trim().toLowerCase();
  const seed = unhex(text, 32);
  sendKey = null;
  $("send-from").textContent = "\u2014";
  $("send-from-balance").textContent = "";
  if (!text) return;
  if (!seed) {
    $("send-from").textContent = "a seed is 64 hex characters";
    return;
  }
  try {
    const key = await keyFromSeed(seed);
    if ($("send-seed").value.trim().toLowerCase() !== text) return; // changed meanwhile
    sendKey = key;
    $("send-from").replaceChildren(addrLink(key.address));
    $("send-from").setAttribute("data-address", key.address);
    onHeadForSend();
  } catch (e) {
    showError($("send-error"), e.name === "NotSupportedError"
      ? new Error("this browser's WebCrypto has no Ed25519; use a current Chromium or Firefox")
      : e);
  }
}

async function onHeadForSend() {
  if (!sendKey) return;
  try {
    const bal = await rpc(`rpc/getBalance/${sendKey.address}`);
    $("send-from-balance").textContent = `balance ${fmt(bal.balance)} \u00b7 nonce ${fmt(bal.nonce)}`;
  } catch (e) { /* the status pill says it */ }
}

function generateKey() {
  const seed = crypto.getRandomValues(new Uint8Array(32));
  $("send-seed").value = hex(seed);
  $("send-seed").type = "text";
  $("send-seed-toggle").textContent = "hide";
  onSeedInput();
  setSendStatus("idle", "A new key: it holds nothing until someone sends it AIT. Keep the seed if you want it.");
}

function setSendStatus(stateName, message, extra) {
  const s = $("send-status");
  s.setAttribute("data-state", stateName);
  s.className = "status " + stateName;
  s.replaceChildren(el("span", { class: "state" }, stateName), " ", message || "", ...(extra || []));
  s.hidden = false;
}

async function chainId() {
  if (!state.chainId) {
    const g = await rpc("rpc/getBlock/0");
    state.chainId = g.chain_id;
    $("chain-id").textContent = g.chain_id;
  }
  return state.chainId;
}

function parseU64(text, what, min) {
  if (!/^[0-9]+$/.test(text)) throw new RpcError("bad_number", `${what} must be a whole number of AIT units`);
  const n = BigInt(text);
  if (n < BigInt(min) || n > U64_MAX) throw new RpcError("number_out_of_range", `${what} must be from ${min} to 2**64 - 1`);
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

let sending = false;

async function send(ev) {
  ev.preventDefault();
  if (sending) return;
  const errBox = $("send-error");
  clearError(errBox);
  $("send-result").hidden = true;
  $("send-result").replaceChildren();
  sending = true;
  $("send-button").disabled = true;
  try {
    await onSeedInput();
    if (!sendKey) throw new RpcError("bad_key", "paste a private key seed (64 hex characters) or generate one");
    const key = sendKey;
    const to = $("send-to").value.trim();
    if (addressBytes(to) === null) throw new RpcError("bad_address", "the recipient is not an ait1... address");
    const amount = parseU64($("send-amount").value.trim(), "amount", 1);
    setSendStatus("signing", "reading nonce and fee\u2026");
    const cid = await chainId();
    const [bal, hist] = await Promise.all([
      rpc(`rpc/getBalance/${key.address}`),
      rpc(`rpc/getHistory/${key.address}?limit=1`),
    ]);
    const nonce = Number(bal.nonce) + 1 + hist.pending.length;
    const payload = { to, amount };
    const feeText = $("send-fee").value.trim();
    let fee;
    if (feeText) {
      fee = parseU64(feeText, "fee", 0);
    } else {
      fee = (await rpc("rpc/estimateFee", { type: "TRANSFER", sender: key.address, nonce, fee: 0, payload })).fee;
    }
    setSendStatus("signing", `signing nonce ${nonce}, fee ${fmt(fee)}\u2026`);
    const tx = await signTx(key, cid, "TRANSFER", nonce, fee, payload);
    const sent = await rpc("rpc/sendTx", tx.wire);
    if (sent.txHash !== tx.txHash) throw new RpcError("hash_mismatch", `the node reports txHash ${sent.txHash}, this page computed ${tx.txHash}`);
    const txLine = el("div", { class: "mono small" }, "txHash ", el("span", { id: "send-txhash", title: tx.txHash }, tx.txHash));
    setSendStatus("pending", "sent; waiting for a block\u2026", [txLine]);
    const result = await waitForTx(tx.txHash);
    if (result.status === "included") {
      setSendStatus("included", `in block ${fmt(result.block.height)} at index ${result.block.index}`, [txLine]);
      const [mine, theirs] = await Promise.all([rpc(`rpc/getBalance/${key.address}`), rpc(`rpc/getBalance/${to}`)]);
      const out = $("send-result");
      out.replaceChildren(
        el("div", {}, "sender ", addrLink(key.address), " now holds ",
          el("strong", { id: "send-from-new", "data-value": String(mine.balance) }, fmt(mine.balance))),
        el("div", {}, "recipient ", addrLink(to), " now holds ",
          el("strong", { id: "send-to-balance", "data-value": String(theirs.balance) }, fmt(theirs.balance))),
      );
      out.hidden = false;
      onHeadForSend();
      if (state.account) refreshAccount(false);
    } else {
      const e = (result.receipt && result.receipt.error) || {};
      setSendStatus("failed", "", [txLine]);
      showError(errBox, new RpcError(e.code || "failed", e.message || "the transaction was dropped"));
    }
  } catch (e) {
    setSendStatus("error", "not sent");
    showError(errBox, e);
  } finally {
    sending = false;
    $("send-button").disabled = false;
  }
}

async function waitForTx(txHash, timeoutMs = 120000) {
  const deadline = Date.now() + timeoutMs;
  let misses = 0;
  while (Date.now() < deadline) {
    try {
      const out = await rpc(`rpc/getTx/${txHash}`);
      if (out.status === "included" || out.status === "failed") return out;
    } catch (e) {
      if (!(e instanceof RpcError) || e.code !== "not_found" || ++misses > 10) throw e;
    }
    await new Promise((r) => setTimeout(r, 400));
  }
  throw new RpcError("timeout", "the transaction was not included within two minutes; it may still be pending");
}

// -- the light client: what the page shows, verified ------------------------------------
//
// The genesis hash the header chain starts from is the one pinned in the
// address (#genesis=<64 hex>, say a bookmark from the chain's operator) or
// the one pinned in this browser with the "pin" button; the node's own
// genesis is never taken on its word.  Without a pin, every mark says
// "unverified: no genesis pinned" and the button offers the node's genesis
// (after comparing it with a published one, the user may pin it).

const PIN_KEY = "aitnode.genesis";

// What the light client verified is kept per pinned genesis (the genesis
// hash fixes the chain id, which the entry holds and the node's headers
// must match), so the next visit resumes from there (verify.HeaderChain).
function lightStore(genesis) {
  const key = `aitnode.light.${genesis}`;
  return {
    load() {
      try {
        return localStorage.getItem(key);
      } catch (e) {
        return null;
      }
    },
    save(text) {
      try {
        localStorage.setItem(key, text);
      } catch (e) { /* private mode or full: the next visit starts from genesis */ }
    },
    clear() {
      try {
        localStorage.removeItem(key);
      } catch (e) { /* nothing kept */ }
    },
  };
}

// ?headers_page=N&headers_round=M: smaller getHeaders answers and rounds
// (tests use them to follow a short chain in many rounds).
function lightOptions() {
  const q = new URLSearchParams(location.search);
  const int = (name, lo, hi) => {
    const v = Number(q.get(name));
    return q.get(name) !== null && Number.isSafeInteger(v) && v >= lo && v <= hi ? v : undefined;
  };
  return { pageSize: int("headers_page", 2, verify.PAGE), roundCalls: int("headers_round", 1, verify.ROUND_CALLS) };
}

function newChain(genesis) {
  return new verify.HeaderChain(genesis, rpc, { store: lightStore(genesis), ...lightOptions() });
}

function storedPin() {
  try {
    return localStorage.getItem(PIN_KEY);
  } catch (e) {
    return null;
  }
}

function setupTrust() {
  const m = /(?:^#|&)genesis=([0-9a-f]{64})(?:&|$)/.exec(location.hash);
  const stored = storedPin();
  if (m) state.trust = { hash: m[1], source: "pinned in the page address" };
  else if (stored && unhex(stored, 32)) state.trust = { hash: stored, source: "pinned in this browser" };
  else state.trust = null;
  state.chain = state.trust ? newChain(state.trust.hash) : null;
  renderTrust();
  if (!state.trust) {
    rpc("rpc/getBlock/0").then((g) => {
      state.offered = g.hash;
      renderTrust();
    }).catch(() => {});
  }
}

function pinGenesis() {
  if (!state.offered) return;
  try {
    localStorage.setItem(PIN_KEY, state.offered);
  } catch (e) { /* private mode: the pin lasts as long as the page */ }
  state.trust = { hash: state.offered, source: "pinned in this browser" };
  replaceChain();
}

// Follow the pinned genesis's chain afresh; what waits for it is checked
// again once it reaches the node's head.
function replaceChain() {
  if (state.chain) state.chain.close();
  state.chain = newChain(state.trust.hash);
  state.finalHeight = -1;
  for (const r of state.receipts) r.verify = null;
  renderTrust();
  renderReceipts();
  follow();
}

// The "clear" button: forget what this browser verified of this chain
// (the node contradicts it, or it does not validate), and start again
// from the pinned genesis.
function forgetVerified() {
  if (!state.trust) return;
  lightStore(state.trust.hash).clear();
  replaceChain();
}

function renderTrust() {
  const box = $("trust"), text = $("trust-text");
  const chain = state.chain;
  const g = state.trust ? state.trust.hash : state.offered;
  $("trust-genesis").textContent = g ? short(g, 16) : "\u2026";
  $("trust-genesis").title = g || "";
  $("trust-source").textContent = state.trust ? `(${state.trust.source})` : "(not pinned: this node's genesis)";
  $("trust-pin").hidden = !!state.trust || !state.offered;
  $("trust-clear").hidden = !(state.trust && chain && (chain.errorStored || chain.notice));
  const fin = chain && chain.finalized();
  $("trust-final").textContent = fin ? fmt(fin.height) : "\u2013";
  $("trust-final").setAttribute("data-height", fin ? String(fin.height) : "");
  if (!state.trust) {
    box.setAttribute("data-state", "unpinned");
    text.textContent = "no genesis pinned: balances and receipts are not verified";
  } else if (chain.error) {
    box.setAttribute("data-state", "failed");
    text.textContent = chain.errorStored ? chain.error : `the node's headers do not verify: ${chain.error}`;
  } else if (chain.notice) {
    box.setAttribute("data-state", "failed");
    text.textContent = chain.notice;
  } else if (fin && !chain.behind) {
    box.setAttribute("data-state", "ok");
    const from = chain.resumedAt === null ? "" : ` (from block ${fmt(chain.resumedAt)}, verified before in this browser)`;
    text.textContent = `${fmt(chain.tip().height)} headers followed, signatures and finality votes checked${from}`;
  } else if (fin) {
    box.setAttribute("data-state", "following");
    text.textContent = `${chain.progress()}, signatures and finality votes checked so far\u2026`;
  } else {
    box.setAttribute("data-state", "starting");
    text.textContent = "following headers\u2026";
  }
}

const NO_PIN = { state: "unverified", reason: "no genesis pinned: pin this chain's genesis hash to verify" };

function setMark(e, result) {
  e.setAttribute("data-state", result.state);
  e.textContent = result.state;
  e.title = result.reason || "";
}

let following = false;

// Follow the header chain to the node's head, a bounded round at a time
// (another round right after one that did not reach the head); when the
// verified finalized height moves and the head is reached, check again
// what waits for it.
async function follow() {
  const chain = state.chain;
  if (!chain || following) return;
  if (chain.error) {
    renderTrust(); // a check of a balance or a receipt may have met the error first
    return;
  }
  following = true;
  try {
    await chain.sync();
  } catch (e) {
    if (!(e instanceof verify.VerifyError)) {
      if (!(e instanceof RpcError)) console.error("following headers:", e);
      return; // the node is away: the next tick tries again
    }
  } finally {
    following = false;
    renderTrust();
    if (state.chain !== chain || (!chain.error && chain.behind)) setTimeout(follow, 250);
  }
  if (chain !== state.chain || (!chain.error && chain.behind)) return;
  const fin = chain.finalized();
  const h = chain.error ? -2 : fin ? fin.height : -1;
  if (h !== state.finalHeight) {
    state.finalHeight = h;
    if (state.account) refreshAccount(false);
    checkReceipts();
  }
}

let balanceRun = 0;

async function checkBalance(addr, bal) {
  const mark = $("acct-verify"), reason = $("acct-verify-reason");
  const run = ++balanceRun;
  const result = state.chain ? await verify.verifyBalance(state.chain, addr, bal) : NO_PIN;
  if (run !== balanceRun || state.account !== addr) return;
  setMark(mark, result);
  mark.setAttribute("data-balance", String(bal.balance));
  mark.setAttribute("data-height", result.height === null || result.height === undefined ? "" : String(result.height));
  reason.textContent = result.reason || "";
}

function receiptMark(r) {
  const v = r.verify || { state: "checking", reason: "not checked yet" };
  const b = el("button", { type: "button", class: "vmark", "data-receipt": r.receipt_id });
  setMark(b, v);
  b.addEventListener("click", () => showDetail(r));
  return b;
}

let receiptsRunning = false;

// Check, one at a time, the receipts not yet verified or refused.
async function checkReceipts() {
  if (receiptsRunning) return;
  receiptsRunning = true;
  try {
    for (const r of state.receipts.slice(0, SHOW_RECEIPTS)) {
      if (r.minted === null || (r.verify && r.verify.state !== "pending" && r.verify.state !== "checking")) continue;
      await checkReceipt(r, false);
    }
  } finally {
    receiptsRunning = false;
  }
}

async function checkReceipt(r, again) {
  if (!state.chain) {
    r.verify = NO_PIN;
  } else {
    if (again) r.verify = { state: "checking", reason: "checking\u2026", checks: [] };
    if (again) renderReceipts();
    r.verify = await verify.verifyReceipt(state.chain, {
      receipt_id: r.receipt_id, miner: r.miner, compute_units: r.compute_units, minted: r.minted, height: r.height,
    });
  }
  renderReceipts();
}

function showDetail(r) {
  state.detail = r;
  $("receipt-detail").hidden = false;
  renderDetail();
  $("receipt-detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function renderDetail() {
  const r = state.detail;
  const v = r.verify || { state: "checking", reason: "not checked yet", checks: [] };
  $("rd-id").textContent = r.receipt_id;
  setMark($("rd-mark"), v);
  $("rd-reason").textContent = v.reason || "";
  $("rd-fields").replaceChildren(
    el("div", {}, el("span", { class: "label" }, "block"), " ", fmt(r.height)),
    el("div", {}, el("span", { class: "label" }, "miner"), " ", addrLink(r.miner)),
    el("div", {}, el("span", { class: "label" }, "units"), " ", fmt(r.compute_units)),
    el("div", {}, el("span", { class: "label" }, "minted"), " ", r.minted === null ? "\u2026" : fmt(r.minted)),
  );
  $("rd-checks").replaceChildren(...(v.checks || []).map((c) => el("li", { "data-ok": c.ok ? "1" : "0" },
    c.ok ? "" : "FAILED: ", c.name, c.detail ? el("span", { class: "detail" }, c.detail) : null)));
}

// -- start ---------------------------------------------------------------------------

async function runSelfTest() {
  const s = $("selftest");
  try {
    const r = await selfTest();
    s.textContent = r.ok ? `signing self-test passed (${r.passed.length} checks)` : `signing self-test FAILED: ${r.failed.join("; ")}`;
    s.className = r.ok ? "ok" : "bad";
    if (!r.ok) showError($("send-error"), new Error("this browser cannot sign transactions correctly: " + r.failed[0]));
  } catch (e) {
    s.textContent = `signing self-test could not run: ${e.message}`;
    s.className = "bad";
  }
}

function start() {
  window.aitSelfTest = selfTest;
  window.ait = { canonical, hex, unhex, sha256, keyFromSeed, signTx, addressOf, addressBytes, rpc, parseJSON, parseJSONExact, toJSON };
  $("acct-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadAccount();
  });
  $("send-form").addEventListener("submit", send);
  $("send-seed").addEventListener("input", onSeedInput);
  $("send-generate").addEventListener("click", generateKey);
  $("send-seed-toggle").addEventListener("click", () => {
    const f = $("send-seed");
    f.type = f.type === "password" ? "text" : "password";
    $("send-seed-toggle").textContent = f.type === "password" ? "show" : "hide";
  });
  $("send-from-show").addEventListener("click", () => sendKey && showAccount(sendKey.address));
  $("trust-pin").addEventListener("click", pinGenesis);
  $("trust-clear").addEventListener("click", forgetVerified);
  $("rd-close").addEventListener("click", () => {
    state.detail = null;
    $("receipt-detail").hidden = true;
  });
  $("rd-again").addEventListener("click", () => state.detail && checkReceipt(state.detail, true));
  window.ait.verify = verify;
  window.ait.state = state;
  setupTrust();
  chainId().catch(() => {});
  runSelfTest();
  tick();
  setInterval(tick, 1000);
  setInterval(() => {
    if (state.height >= 0) {
      renderHead();
      renderBlocks();
    }
  }, 5000);
  document.documentElement.setAttribute("data-ready", "1");
}

if (typeof document !== "undefined" && document.getElementById("app")) start();
