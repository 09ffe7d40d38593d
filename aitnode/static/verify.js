// aitnode client page: the light client.
//
// What the page shows of balances and compute receipts is checked here,
// in the browser, against a header chain it follows itself from a genesis
// hash it was given (never the node's word for it): parent links, proposer
// signatures, the authority set each header commits to, and the finality
// votes that reach quorum (docs/protocol.md 10.1 and "Finality votes and
// evidence").  Against a finalized header it checks state proofs (11.2:
// a binary sparse Merkle tree with collapsed leaves) and a claim's
// tx_root branch (10.3), with WebCrypto SHA-256 and Ed25519 only.
//
// Not checked: turns (10.5: they need block_interval_ms, a parameter that
// may change) and the epoch rule of when a block must carry the set (a
// header whose set hash changes without carrying the set is refused
// anyway, since the set is then unknown).

import { canonical, concat, hex, unhex, sha256, addressOf, rpc } from "./app.js";

export class VerifyError extends Error {
  constructor(message) {
    super(message);
    this.name = "VerifyError";
  }
}

function fail(message) {
  throw new VerifyError(message);
}

function cat(...parts) {
  return concat(parts);
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

function needHex(text, nbytes, what) {
  const out = unhex(text, nbytes);
  if (out === null) fail(`${what} is not ${nbytes === undefined ? "" : nbytes + " bytes of "}lowercase hex`);
  return out;
}

const ZERO32 = new Uint8Array(32);
const ZERO_HEX = "0".repeat(64);

// -- canonical CBOR, read back ---------------------------------------------------
//
// The consensus value space (2.1): every integer comes back as a BigInt
// (balances are u64), text, arrays, maps with text keys, booleans.  Only
// the one canonical spelling is accepted: the value is encoded again and
// must give the same bytes.

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

export function decodeCanonical(bytes) {
  let i = 0;
  const need = (n) => {
    if (n > bytes.length - i) fail("value_cbor is truncated");
  };
  const head = () => {
    need(1);
    const b = bytes[i++];
    const major = b >> 5, info = b & 31;
    if (major === 7) return [7, info];
    if (info < 24) return [major, BigInt(info)];
    if (info > 27) fail("value_cbor has an indefinite or reserved length");
    const size = 1 << (info - 24);
    need(size);
    let n = 0n;
    for (let k = 0; k < size; k++) n = (n << 8n) | BigInt(bytes[i++]);
    return [major, n];
  };
  const item = (depth) => {
    if (depth > 32) fail("value_cbor is nested too deeply");
    const [major, n] = head();
    if (major === 0) return n;
    if (major === 3) {
      need(n > BigInt(bytes.length) ? bytes.length + 1 : Number(n));
      const text = strictUtf8.decode(bytes.subarray(i, i + Number(n)));
      i += Number(n);
      return text;
    }
    if (major === 4 || major === 5) {
      if (n > BigInt(bytes.length - i)) fail("value_cbor is truncated");
      if (major === 4) {
        const out = [];
        for (let k = 0n; k < n; k++) out.push(item(depth + 1));
        return out;
      }
      const out = {};
      for (let k = 0n; k < n; k++) {
        const key = item(depth + 1);
        if (typeof key !== "string") fail("value_cbor has a map key that is not text");
        if (Object.prototype.hasOwnProperty.call(out, key)) fail("value_cbor has a key twice");
        Object.defineProperty(out, key, { value: item(depth + 1), enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    if (major === 7 && (n === 20 || n === 21)) return n === 21;
    return fail("value_cbor holds something outside the consensus value space");
  };
  let value;
  try {
    value = item(0);
  } catch (e) {
    if (e instanceof VerifyError) throw e;
    fail(`value_cbor is malformed (${e.message})`);
  }
  if (i !== bytes.length) fail("value_cbor has trailing bytes");
  if (!sameBytes(canonical(value), bytes)) fail("value_cbor is not canonical");
  return value;
}

// -- the state tree (11.2) ----------------------------------------------------------

export async function keyHash(ns, key) {
  return sha256(canonical([ns, key]));
}

async function leafHash(kh, vh) {
  return sha256(cat(Uint8Array.of(0), kh, vh));
}

async function innerHash(left, right) {
  return sha256(cat(Uint8Array.of(1), left, right));
}

function bitOf(k, i) {
  return (k[i >> 3] >> (7 - (i & 7))) & 1;
}

// {leaf: [keyHash, valueHash] or null, siblings: [32 bytes]} of a proof's
// binary form; VerifyError unless it is exactly one well-formed proof.
export function decodeProof(data) {
  if (!(data instanceof Uint8Array) || data.length === 0 || data[0] > 1) fail("the proof is malformed (first byte)");
  let pos = 1;
  let leaf = null;
  if (data[0] === 1) {
    if (data.length < 65) fail("the proof is malformed (leaf)");
    leaf = [data.slice(1, 33), data.slice(33, 65)];
    pos = 65;
  }
  if (data.length < pos + 2) fail("the proof is malformed (length)");
  const n = (data[pos] << 8) | data[pos + 1];
  pos += 2;
  if (n > 256) fail("the proof has more than 256 siblings");
  const nb = (n + 7) >> 3;
  if (data.length < pos + nb) fail("the proof is malformed (bitmap)");
  const bitmap = data.subarray(pos, pos + nb);
  if (n % 8 && bitmap[nb - 1] & (0xff >> (n % 8))) fail("the proof is malformed (bitmap padding)");
  pos += nb;
  const siblings = [];
  for (let i = 0; i < n; i++) {
    if (bitmap[i >> 3] & (0x80 >> (i & 7))) {
      if (data.length < pos + 32) fail("the proof is malformed (truncated)");
      siblings.push(data.slice(pos, pos + 32));
      pos += 32;
    } else {
      siblings.push(ZERO32);
    }
  }
  if (pos !== data.length) fail("the proof is malformed (trailing bytes)");
  return { leaf, siblings };
}

function commonPrefixBits(a, b) {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] ^ b[i];
    if (x) return i * 8 + Math.clz32(x) - 24;
  }
  return a.length * 8;
}

// Check that the tree with root (32 bytes) maps key hash kh to value hash
// vh, or holds no kh when vh is null.  Resolves, or rejects with VerifyError.
export async function verifyStateProof(root, kh, vh, proof) {
  const { leaf, siblings } = decodeProof(proof);
  const n = siblings.length;
  if (vh !== null) {
    if (leaf === null) fail("the proof shows the key absent");
    if (!sameBytes(leaf[0], kh)) fail("the proof is for another key");
    if (!sameBytes(leaf[1], vh)) fail("the value does not match the proof");
  } else if (leaf !== null) {
    if (sameBytes(leaf[0], kh)) fail("the proof shows the key present");
    if (commonPrefixBits(leaf[0], kh) < n) fail("the proof's leaf does not cover the key");
  }
  let h = leaf === null ? ZERO32 : await leafHash(leaf[0], leaf[1]);
  for (let i = n - 1; i >= 0; i--) {
    h = bitOf(kh, i) ? await innerHash(siblings[i], h) : await innerHash(h, siblings[i]);
  }
  if (!sameBytes(h, root)) fail("the proof does not lead to the state root");
}

// The same from the wire: root and proof as hex, the value as value_cbor
// hex or null.  Resolves to the decoded value (null when absent).
export async function checkStateProof(rootHex, ns, key, valueCborHex, proofHex) {
  const root = needHex(rootHex, 32, "state_root");
  const proof = needHex(proofHex, undefined, "proof");
  let value = null, vh = null;
  if (valueCborHex !== null) {
    const raw = needHex(valueCborHex, undefined, "value_cbor");
    value = decodeCanonical(raw);
    vh = await sha256(raw);
  }
  await verifyStateProof(root, await keyHash(ns, key), vh, proof);
  return value;
}

// -- binary Merkle trees of 10.3 (tx_root, votes_root) ---------------------------------

export async function merkleRoot(leafInputs) {
  if (leafInputs.length === 0) return ZERO32;
  let level = [];
  for (const x of leafInputs) level.push(await sha256(cat(Uint8Array.of(0), x)));
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i + 1 < level.length; i += 2) next.push(await innerHash(level[i], level[i + 1]));
    if (level.length % 2) next.push(level[level.length - 1]);
    level = next;
  }
  return level[0];
}

// The root a getTxProof branch leads to (leafInput: 32 bytes).
export async function txBranchRoot(leafInput, index, count, branch) {
  if (!Number.isSafeInteger(count) || count < 1 || !Number.isSafeInteger(index) || index < 0 || index >= count) {
    fail("the transaction's index and count do not fit");
  }
  if (!Array.isArray(branch)) fail("the branch is not a list");
  let h = await sha256(cat(Uint8Array.of(0), leafInput));
  let idx = index, size = count, used = 0;
  while (size > 1) {
    if (!(idx === size - 1 && size % 2 === 1)) {
      if (used >= branch.length) fail("the branch is too short");
      const s = needHex(branch[used++], 32, "a branch item");
      h = idx % 2 === 0 ? await innerHash(h, s) : await innerHash(s, h);
    }
    idx = Math.floor(idx / 2);
    size = Math.floor((size + 1) / 2);
  }
  if (used !== branch.length) fail("the branch has items left over");
  return h;
}

// -- Ed25519 (WebCrypto) ----------------------------------------------------------------

const publicKeys = new Map(); // hex -> CryptoKey

export async function ed25519Verify(pubkeyHex, sigHex, message) {
  const pub = unhex(pubkeyHex, 32), sig = unhex(sigHex, 64);
  if (pub === null || sig === null) return false;
  let key = publicKeys.get(pubkeyHex);
  if (!key) {
    try {
      key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
    } catch (e) {
      return false;
    }
    if (publicKeys.size > 1000) publicKeys.clear();
    publicKeys.set(pubkeyHex, key);
  }
  return crypto.subtle.verify({ name: "Ed25519" }, key, sig, message);
}

// -- following headers ------------------------------------------------------------------

export function quorum(n) {
  return n - Math.floor((n - 1) / 3);
}

const HEADER_FIELDS = ["chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root",
  "votes_root", "evidence_root", "authorities_hash"];
const VOTE_FIELDS = ["voter", "height", "hash", "source_height", "source_hash", "sig"];

function isObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

function isU64(x) {
  return typeof x === "bigint" ? x >= 0n && x < 1n << 64n : Number.isSafeInteger(x) && x >= 0;
}

function exactly(obj, fields, what) {
  if (!isObject(obj)) fail(`${what} is not an object`);
  const keys = Object.keys(obj);
  if (keys.length !== fields.length || !fields.every((f) => Object.prototype.hasOwnProperty.call(obj, f))) {
    fail(`${what} does not have exactly the members ${fields.join(", ")}`);
  }
}

function parseSet(list, what) {
  if (!Array.isArray(list) || list.length === 0) fail(`${what} is not a non-empty list`);
  for (const m of list) {
    exactly(m, ["address", "public_key", "jailed"], `a member of ${what}`);
    if (typeof m.jailed !== "boolean" || unhex(m.public_key, 32) === null) fail(`a member of ${what} is malformed`);
  }
  return list;
}

// The chain of headers from a pinned genesis, as far as the node serves it.
// Per height it keeps {hash, parent, timestamp, stateRoot, txRoot, setHash,
// J, F} (J and F: the latest justified and finalized {height, hash} that
// block leaves, computed here from the votes), and `final`: the highest
// finalized block seen, which never goes back.  A chain that breaks any
// rule stops for good: `error` says why.
//
// What it verified is kept in `store` (this browser's localStorage, one
// entry per pinned genesis, see app.js): the finalized block's record, the
// authority set in effect for it (its child's is the same or carried by
// the child, which add() requires), the chain id and the finality it
// leaves.  The next visit resumes from there: the node's header at that
// height must hash to the kept hash, or the page says the node's chain
// contradicts what this browser verified before, and trusts nothing until
// the user clears it.  Each sync() is one bounded round; `behind` says the
// node's head was not reached yet (the page runs further rounds).
export const PAGE = 256; // headers asked for at once (getHeaders' largest limit)
export const ROUND_CALLS = 20; // getHeaders calls in one round: 5,120 headers, then the state is kept and shown
const WALK_CALLS = 16; // calls recordAt makes at most to link a block below the one resumed from
const STORED_VERSION = 1;
const STORED_FIELDS = ["version", "genesis", "chain_id", "height", "hash", "parent", "timestamp", "state_root", "tx_root",
  "authorities_hash", "justified", "finalized", "authorities"];

async function hashOf(header) {
  try {
    return hex(await sha256(canonical(header)));
  } catch (e) {
    return null;
  }
}

function checkpointOf(x, what) {
  exactly(x, ["height", "hash"], what);
  if (!Number.isSafeInteger(x.height) || x.height < 0 || unhex(x.hash, 32) === null) fail(`${what} is malformed`);
  return { height: x.height, hash: x.hash };
}

export class HeaderChain {
  // options: store ({load() -> text or null, save(text), clear()}: where
  // what was verified is kept), pageSize (2 to 256), roundCalls.
  constructor(genesisHash, fetchJSON = rpc, options = {}) {
    this.genesisHash = genesisHash;
    this.fetchJSON = fetchJSON;
    this.store = options.store || null;
    this.pageSize = Math.min(PAGE, Math.max(2, options.pageSize || PAGE));
    this.roundCalls = Math.max(1, options.roundCalls || ROUND_CALLS);
    this.base = 0; // the height of records[0]
    this.records = [];
    this.ancestors = new Map(); // height -> record, below base: linked by parent hashes down from it
    this.floor = 0; // the lowest height records and ancestors hold, without gaps
    this.sets = new Map(); // authorities_hash -> set
    this.pendingVotes = []; // the votes for the last record, by its child (bound once the child is read)
    this.final = null;
    this.chainId = null;
    this.error = null;
    this.errorStored = false; // the error is about the state kept in this browser: clearing it is the way on
    this.notice = null; // why the node serves nothing past what was verified (not an error)
    this.loaded = false;
    this.resumedAt = null; // the height resumed from, when a kept state was used
    this.savedHeight = null; // the height of the state kept in the store
    this.closed = false;
    this.behind = true; // the last round did not reach the node's head
    this.headHeight = null; // the node's head, as its last getHeaders answer said
    this.busy = null;
    this.checked = { headers: 0, votes: 0 };
  }

  tip() {
    return this.records.length ? this.records[this.records.length - 1] : null;
  }

  next() {
    return this.base + this.records.length;
  }

  progress() {
    const tip = this.tip();
    return `following headers: block ${tip ? tip.height : 0} of ${this.headHeight === null ? "?" : this.headHeight}`;
  }

  // One round: read headers towards the node's head, at most maxCalls
  // calls of pageSize.  One caller at a time; the others wait for its result.
  sync(maxCalls = this.roundCalls) {
    if (!this.busy) {
      this.busy = this._sync(maxCalls).finally(() => {
        this.busy = null;
      });
    }
    return this.busy;
  }

  async _sync(maxCalls) {
    if (this.error) throw new VerifyError(this.error);
    try {
      if (!this.loaded) await this.resume();
      let caughtUp = false;
      for (let calls = 0; calls < maxCalls && !caughtUp; calls++) {
        // From the last record again: its votes arrive with its child.
        const from = Math.max(0, this.next() - 1);
        const out = await this.fetchJSON(`rpc/getHeaders?from=${from}&limit=${this.pageSize}`);
        if (!isObject(out) || !Array.isArray(out.headers)) fail("getHeaders did not answer a list of headers");
        const head = isObject(out.head) && Number.isSafeInteger(out.head.height) ? out.head.height : null;
        this.headHeight = head;
        const got = out.headers;
        if (got.length === 0) {
          if (this.records.length === 0) fail("the node has no genesis block");
          const last = this.tip();
          if (last.height > this.final.height) {
            this.rewind(); // a shorter branch above finality
            continue;
          }
          this.notice = `the node serves no block ${last.height}` + (head === null ? "" : ` (its chain ends at block ${head})`) +
            (this.savedHeight === null ? "" : `: it may still be catching up; if the chain was started over, clear what this browser verified before`);
          caughtUp = true;
          break;
        }
        this.notice = null;
        const before = this.next();
        let start = 0;
        if (this.records.length) {
          const e = got[0];
          const last = this.tip();
          if (!isObject(e) || e.hash !== last.hash || !isObject(e.header) || (await hashOf(e.header)) !== last.hash) {
            if (last.height <= this.final.height) this.contradicted(last);
            this.rewind(); // another branch: keep what is final, read the rest again
            continue;
          }
          if (e.header.chain_id !== this.chainId) {
            this.errorStored = true;
            fail(`the verified state kept in this browser has chain id ${this.chainId}, block ${last.height}'s is ${e.header.chain_id}; clear it`);
          }
          if (!Array.isArray(e.votes)) fail(`block ${from}: votes is not a list`);
          this.pendingVotes = e.votes;
          start = 1;
        }
        let again = false;
        for (let i = start; i < got.length; i++) {
          const e = got[i];
          const tip = this.tip();
          if (tip && isObject(e) && isObject(e.header) && e.header.parent !== tip.hash && tip.height > this.final.height) {
            this.rewind();
            again = true;
            break;
          }
          await this.add(e);
        }
        if (again) continue;
        caughtUp = head !== null ? this.tip().height >= head : got.length < this.pageSize;
        if (!caughtUp && this.next() === before) break; // nothing new in this answer: the next round asks again
      }
      this.behind = !caughtUp;
    } catch (e) {
      if (e instanceof VerifyError) {
        this.error = e.message;
      }
      throw e;
    } finally {
      this.save();
    }
    return this;
  }

  // The node's chain does not hold `last`, a finalized block.
  contradicted(last) {
    if (this.savedHeight !== null) {
      this.errorStored = true;
      fail(`the node's chain contradicts what this browser verified before at block ${last.height}; if the chain was started over, clear it`);
    }
    fail(`the node's chain does not hold finalized block ${last.height} ${last.hash}`);
  }

  // Forget everything above the finalized block (the node moved to
  // another branch above it).
  rewind() {
    this.records.length = this.final.height + 1 - this.base;
    this.pendingVotes = [];
  }

  // -- what this browser verified before ------------------------------------------------

  // Start from the state kept in the store, if any; VerifyError (and
  // errorStored) when it does not validate.
  async resume() {
    this.loaded = true;
    if (!this.store) return;
    const text = this.store.load();
    if (text === null || text === undefined) return;
    const bad = (why) => {
      this.errorStored = true;
      fail(`the verified state kept in this browser ${why}; clear it to follow the chain from genesis again`);
    };
    let s;
    try {
      s = JSON.parse(text);
    } catch (e) {
      bad("is malformed (not JSON)");
    }
    let rec, set;
    try {
      exactly(s, STORED_FIELDS, "it");
      if (s.version !== STORED_VERSION) fail(`version ${String(s.version)}, not ${STORED_VERSION}`);
      if (s.genesis !== this.genesisHash) bad(`is for another genesis (${String(s.genesis).slice(0, 16)}\u2026)`);
      if (typeof s.chain_id !== "string" || s.chain_id === "") fail("chain_id");
      if (!Number.isSafeInteger(s.height) || s.height < 1) fail("height");
      for (const f of ["hash", "parent", "state_root", "tx_root", "authorities_hash"]) needHex(s[f], 32, f);
      if (typeof s.timestamp !== "string" || !/^[0-9]{1,20}$/.test(s.timestamp)) fail("timestamp");
      const J = checkpointOf(s.justified, "justified"), F = checkpointOf(s.finalized, "finalized");
      if (!(F.height <= J.height && J.height < s.height)) fail("justified and finalized do not fit its height");
      set = parseSet(s.authorities, "authorities");
      if (hex(await sha256(canonical(set))) !== s.authorities_hash) fail("its authorities do not hash to its authorities_hash");
      rec = {
        height: s.height, hash: s.hash, parent: s.parent, timestamp: BigInt(s.timestamp), setHash: s.authorities_hash, J, F,
        stateRoot: s.state_root, txRoot: s.tx_root,
      };
    } catch (e) {
      if (e instanceof VerifyError && !this.errorStored) bad(`is malformed (${e.message})`);
      throw e;
    }
    this.base = this.floor = rec.height;
    this.records = [rec];
    this.sets.set(rec.setHash, set);
    this.chainId = s.chain_id;
    this.final = { height: rec.height, hash: rec.hash };
    this.resumedAt = this.savedHeight = rec.height;
  }

  // Keep the verified finalized block in the store, when it moved.
  save() {
    if (!this.store || this.closed || this.errorStored) return;
    const fin = this.finalized();
    if (!fin || fin.height === 0 || fin.height === this.savedHeight) return;
    this.store.save(JSON.stringify({
      version: STORED_VERSION, genesis: this.genesisHash, chain_id: this.chainId, height: fin.height, hash: fin.hash,
      parent: fin.parent, timestamp: String(fin.timestamp), state_root: fin.stateRoot, tx_root: fin.txRoot,
      authorities_hash: fin.setHash, justified: fin.J, finalized: fin.F, authorities: this.sets.get(fin.setHash),
    }));
    this.savedHeight = fin.height;
  }

  // This chain is no longer the page's: it keeps nothing more.
  close() {
    this.closed = true;
  }

  // -- checking headers -------------------------------------------------------------------

  async add(e) {
    const h = this.next();
    const where = `block ${h}`;
    if (!isObject(e) || !isObject(e.header)) fail(`${where}: the node's header entry is malformed`);
    exactly(e.header, HEADER_FIELDS, `${where}'s header`);
    const header = e.header;
    const hash = hex(await sha256(canonical(header)));
    if (e.hash !== hash) fail(`${where}: its hash is not the hash of its header`);
    if (header.height !== h) fail(`${where}: the header says height ${String(header.height)}`);
    if (!isU64(header.timestamp)) fail(`${where}: bad timestamp`);
    for (const f of ["parent", "tx_root", "state_root", "votes_root", "evidence_root", "authorities_hash"]) {
      needHex(header[f], 32, `${where}'s ${f}`);
    }
    if (!Array.isArray(e.votes)) fail(`${where}: votes is not a list`);
    if (e.authorities !== undefined) {
      const set = parseSet(e.authorities, `${where}'s authorities`);
      if (hex(await sha256(canonical(set))) !== header.authorities_hash) {
        fail(`${where}: its authorities do not hash to its authorities_hash`);
      }
      this.sets.set(header.authorities_hash, set);
    }
    let rec;
    if (h === 0) {
      if (hash !== this.genesisHash) fail(`the node's genesis block is ${hash}, not the pinned genesis ${this.genesisHash}`);
      if (header.parent !== ZERO_HEX) fail("genesis: its parent is not 64 zeros");
      this.chainId = header.chain_id;
      const cp = { height: 0, hash };
      rec = { height: 0, hash, timestamp: BigInt(header.timestamp), setHash: header.authorities_hash, J: cp, F: cp };
      this.final = cp;
    } else {
      const parent = this.tip();
      if (header.chain_id !== this.chainId) fail(`${where}: chain_id ${header.chain_id} is not ${this.chainId}`);
      if (header.parent !== parent.hash) fail(`${where}: its parent is not block ${h - 1} ${parent.hash}`);
      if (BigInt(header.timestamp) <= parent.timestamp) fail(`${where}: its timestamp is not after its parent's`);
      if (e.authorities === undefined && header.authorities_hash !== parent.setHash) {
        fail(`${where}: its authority set changed but the block does not carry it`);
      }
      const set = this.sets.get(header.authorities_hash);
      if (!set) fail(`${where}: its authority set is unknown (no block carried it)`);
      const member = set.find((m) => m.address === header.proposer);
      if (!member || member.jailed) fail(`${where}: its proposer ${header.proposer} is not an authority of its set`);
      if (!(await ed25519Verify(member.public_key, e.sig, unhex(hash, 32)))) {
        fail(`${where}: the proposer's signature does not verify`);
      }
      // The votes for the parent, carried by this block.
      const justified = await this.countVotes(parent, header.votes_root, this.pendingVotes, where);
      const J = justified ? { height: parent.height, hash: parent.hash } : parent.J;
      const F = justified && parent.J.height === h - 2 ? parent.J : parent.F;
      rec = { height: h, hash, timestamp: BigInt(header.timestamp), setHash: header.authorities_hash, J, F };
      if (F.height > this.final.height) {
        if (this.record(F.height).hash !== F.hash) fail(`${where}: finalizes a block not on this chain`);
        this.final = F;
      }
    }
    rec.parent = header.parent;
    rec.stateRoot = header.state_root;
    rec.txRoot = header.tx_root;
    this.records.push(rec);
    this.pendingVotes = e.votes;
    this.checked.headers++;
  }

  // Check the votes for block `target` that its child carries (bound to
  // the child's votes_root); true when they reach the quorum.
  async countVotes(target, votesRoot, votes, where) {
    const leaves = [];
    for (const v of votes) leaves.push(await sha256(canonical(v)));
    if (hex(await merkleRoot(leaves)) !== votesRoot) fail(`${where}: its votes_root does not match the votes the node lists`);
    if (votes.length === 0) return false;
    const set = this.sets.get(target.setHash);
    if (!set) fail(`${where}: the set its votes count against is unknown`);
    const live = set.filter((m) => !m.jailed);
    let prev = "";
    for (const v of votes) {
      exactly(v, VOTE_FIELDS, `${where}: a vote`);
      if (typeof v.voter !== "string" || v.voter <= prev) fail(`${where}: its votes are not sorted by voter, each once`);
      prev = v.voter;
      const m = live.find((a) => a.address === v.voter);
      if (!m) fail(`${where}: a vote by ${v.voter}, not an authority of block ${target.height}'s set`);
      if (v.height !== target.height || v.hash !== target.hash) fail(`${where}: a vote for another block`);
      if (v.source_height !== target.J.height || v.source_hash !== target.J.hash) fail(`${where}: a vote with the wrong source`);
      const msg = await sha256(canonical({
        chain_id: this.chainId, height: v.height, hash: v.hash, source_height: v.source_height, source_hash: v.source_hash,
      }));
      if (!(await ed25519Verify(m.public_key, v.sig, msg))) fail(`${where}: the vote by ${v.voter} does not verify`);
      this.checked.votes++;
    }
    return votes.length >= quorum(live.length);
  }

  record(height) {
    if (height >= this.base) return this.records[height - this.base] || null;
    return this.ancestors.get(height) || null;
  }

  // The record of block `height` of the followed chain, at most its tip;
  // below the height resumed from, read from the node and linked by parent
  // hashes down from it (its hash, parent, stateRoot and txRoot only).
  // Null above the tip; VerifyError when the node's headers do not link.
  async recordAt(height) {
    const known = this.record(height);
    if (known || !this.records.length || !Number.isSafeInteger(height) || height < 0 || height >= this.floor) return known;
    let calls = 0, want = this.pageSize;
    while (this.floor > height) {
      if (++calls > WALK_CALLS) fail(`block ${height} is too far below block ${this.floor}, the lowest this page links to`);
      const top = this.floor; // (another walk may lower it meanwhile)
      const start = Math.max(height, top - want);
      const n = top - start;
      const out = await this.fetchJSON(`rpc/getHeaders?from=${start}&limit=${n}`);
      if (!isObject(out) || !Array.isArray(out.headers)) fail("getHeaders did not answer a list of headers");
      const got = out.headers;
      if (got.length === 0) fail(`the node serves no block ${start}`);
      if (got.length > n) fail("getHeaders answered more headers than asked for");
      if (got.length < n) {
        want = got.length; // the answer was cut short: ask for fewer at once
        continue;
      }
      let parent = this.record(top).parent;
      for (let i = n - 1; i >= 0; i--) {
        const h = start + i, e = got[i];
        const hash = isObject(e) && isObject(e.header) ? await hashOf(e.header) : null;
        if (hash === null || hash !== parent || e.header.height !== h) {
          fail(`block ${h}: the node's header is not the parent of the verified block ${h + 1}`);
        }
        exactly(e.header, HEADER_FIELDS, `block ${h}'s header`);
        this.ancestors.set(h, { height: h, hash, parent: e.header.parent, stateRoot: e.header.state_root, txRoot: e.header.tx_root });
        this.floor = Math.min(this.floor, h);
        parent = e.header.parent;
      }
    }
    return this.record(height);
  }

  // The verified finalized header: {height, hash, stateRoot, ...}.
  finalized() {
    return this.final && this.record(this.final.height);
  }
}

// -- checking what the page shows ---------------------------------------------------------

// A list of checks, each {name, ok, detail}; the first failed one ends it.
class Checks {
  constructor() {
    this.list = [];
  }

  pass(name, detail = "") {
    this.list.push({ name, ok: true, detail });
  }

  // Run fn; its VerifyError becomes the failed check `name`.  The detail
  // shown is describe(result), or the result when it is text.
  async run(name, fn, describe) {
    try {
      const out = await fn();
      this.pass(name, describe ? describe(out) : typeof out === "string" ? out : "");
      return out;
    } catch (e) {
      const msg = e instanceof VerifyError ? e.message : `${e.code || e.name || "error"}: ${e.message}`;
      this.list.push({ name, ok: false, detail: msg });
      throw new VerifyError(`${name}: ${msg}`);
    }
  }
}

// The node's getProof answer for (ns, key) at a verified header rec:
// resolves to the proven value (null when absent).
export async function provenEntry(fetchJSON, rec, ns, key) {
  const p = await fetchJSON(`rpc/getProof/${ns}/${encodeURIComponent(key)}?height=${rec.height}`);
  if (!isObject(p)) fail("getProof did not answer an object");
  if (p.height !== rec.height) fail(`the proof is for height ${String(p.height)}, not ${rec.height}`);
  if (p.block_hash !== rec.hash) fail(`the proof is for block ${p.block_hash}, not the verified ${rec.hash}`);
  if (p.state_root !== rec.stateRoot) fail("the proof's state_root is not the verified header's");
  if (p.namespace !== ns || p.key !== key) fail(`the proof is for ${p.namespace}/${p.key}, not ${ns}/${key}`);
  if ((p.value === null) !== (p.value_cbor === null)) fail("value and value_cbor disagree about the entry existing");
  const value = await checkStateProof(rec.stateRoot, ns, key, p.value_cbor, p.proof);
  if (value !== null && !sameValue(p.value, value)) fail("the JSON value is not the proven value_cbor");
  return value;
}

function big(x) {
  return typeof x === "bigint" ? x : BigInt(x);
}

// Check a balance and nonce the page shows: against the state at the
// verified finalized header, or, when they differ (a change not final
// yet), at the newest verified header.  Resolves to {state: "verified" |
// "pending" | "unverified" | "checking" (the headers are not followed to
// the node's head yet), reason, height}.
export async function verifyBalance(chain, address, shown, fetchJSON = rpc) {
  try {
    await chain.sync();
    if (chain.behind) return { state: "checking", height: null, reason: chain.progress() };
    const fin = chain.finalized();
    const at = async (rec) => {
      const v = await provenEntry(fetchJSON, rec, "acct", address);
      if (v === null) return [0n, 0n];
      if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== "bigint" || typeof v[1] !== "bigint") {
        fail("the proven account entry is not [balance, nonce]");
      }
      return v;
    };
    const want = [big(shown.balance), big(shown.nonce)];
    const [bal, nonce] = await at(fin);
    if (bal === want[0] && nonce === want[1]) {
      return { state: "verified", height: fin.height, reason: `proven in the state of finalized block ${fin.height}` };
    }
    const tip = chain.tip();
    if (tip.height > fin.height) {
      const [tbal, tnonce] = await at(tip);
      if (tbal === want[0] && tnonce === want[1]) {
        return {
          state: "pending", height: tip.height,
          reason: `proven at block ${tip.height}, not final yet; finalized block ${fin.height} holds balance ${bal}`,
        };
      }
    }
    return {
      state: "unverified", height: fin.height,
      reason: `the node shows balance ${want[0]} nonce ${want[1]}; finalized block ${fin.height} proves balance ${bal} nonce ${nonce}`,
    };
  } catch (e) {
    return { state: "unverified", height: null, reason: e instanceof VerifyError ? e.message : `${e.code || e.name}: ${e.message}` };
  }
}

const MINER_SIGNED = ["receipt_id", "job_id", "client_addr", "miner_addr", "compute_units", "price", "output_hash",
  "client_payment_tx"];
const ATTESTATION_FIELDS = ["receipt_id", "job_id", "client", "miner", "price", "compute_units", "output_hash",
  "client_payment_tx", "exists", "paid", "not_double_spent", "coordinator", "sig"];

function sameValue(a, b) {
  try {
    return hex(canonical(a)) === hex(canonical(b));
  } catch (e) {
    return false;
  }
}

// Check a compute receipt the page shows ({receipt_id, miner, compute_units,
// minted, height}): its rcpt entry and its payment's pay entry in the
// finalized state, the claim's inclusion in a followed block, the miner's
// and the coordinator's signatures (the coordinator key proven in state).
// Resolves to {state, reason, checks: [{name, ok, detail}]}.
export async function verifyReceipt(chain, shown, fetchJSON = rpc) {
  const c = new Checks();
  try {
    let behind = false;
    await c.run("header chain followed from the pinned genesis", async () => {
      await chain.sync();
      if ((behind = chain.behind)) return "";
      const f = chain.finalized();
      const from = chain.resumedAt === null ? "" : `, from block ${chain.resumedAt} verified before in this browser`;
      return `finalized block ${f.height} ${f.hash.slice(0, 16)}\u2026 (${chain.checked.headers} headers, ${chain.checked.votes} votes checked${from})`;
    });
    if (behind) return { state: "checking", reason: chain.progress(), checks: [] };
    const fin = chain.finalized();
    if (shown.height !== undefined && shown.height > fin.height) {
      return { state: "pending", reason: `block ${shown.height} is not finalized yet (finalized: ${fin.height})`, checks: c.list };
    }
    const id = shown.receipt_id;
    const r = await c.run(`rcpt/${id} proven in the state of block ${fin.height}`, async () => {
      const v = await provenEntry(fetchJSON, fin, "rcpt", id);
      if (v === null) fail("the proof shows no such receipt");
      if (!isObject(v)) fail("the receipt entry is not a map");
      return v;
    }, (v) => `claim ${String(v.tx).slice(0, 16)}\u2026 in block ${v.height}`);
    await c.run("the receipt shown is the one proven", () => {
      const diff = [];
      if (shown.miner !== undefined && r.miner !== shown.miner) diff.push(`miner ${r.miner}`);
      if (shown.compute_units !== undefined && r.compute_units !== big(shown.compute_units)) diff.push(`compute_units ${r.compute_units}`);
      if (shown.minted !== undefined && shown.minted !== null && r.mint !== big(shown.minted)) diff.push(`mint ${r.mint}`);
      if (shown.height !== undefined && r.height !== big(shown.height)) diff.push(`height ${r.height}`);
      if (diff.length) fail(`the proven entry says ${diff.join(", ")}`);
      return `minted ${r.mint}, miner paid ${r.miner_paid}, height ${r.height}`;
    });
    if (typeof r.payment_tx !== "string" || typeof r.tx !== "string") fail("the receipt entry is malformed");
    await c.run(`pay/${r.payment_tx.slice(0, 16)}\u2026 proven, used by this receipt only`, async () => {
      const p = await provenEntry(fetchJSON, fin, "pay", r.payment_tx);
      if (p === null) fail("the proof shows no such payment");
      if (p.claimed !== id) fail(`the payment is claimed by ${JSON.stringify(p.claimed)}`);
      if (p.client !== r.client) fail(`the payment is by ${p.client}, not the receipt's client ${r.client}`);
      if (p.amount < r.price) fail("the payment is below the price");
      return `client ${p.client}, amount ${p.amount}`;
    });
    const coordinator = await c.run(`the coordinator's key proven (param/coordinator)`, async () => {
      const v = await provenEntry(fetchJSON, fin, "param", "coordinator");
      if (!isObject(v) || typeof v.address !== "string" || unhex(v.public_key, 32) === null) fail("no coordinator in state");
      if ((await addressOf(unhex(v.public_key, 32))) !== v.address) fail("the coordinator's key is not its address's");
      return v;
    }, (v) => `${v.address}, key ${v.public_key.slice(0, 16)}\u2026`);
    let claim, t;
    await c.run(`the claim ${r.tx.slice(0, 16)}\u2026 is in block ${r.height}`, async () => {
      t = await fetchJSON(`rpc/getTxProof/${r.tx}`);
      if (!isObject(t) || !isObject(t.tx) || !isObject(t.header)) fail("getTxProof's answer is malformed");
      const rec = await chain.recordAt(Number(r.height));
      if (!rec || t.height !== Number(r.height)) fail(`the proof is for block ${String(t.height)}, not ${r.height}`);
      if (hex(await sha256(canonical(t.header))) !== rec.hash || t.block_hash !== rec.hash) {
        fail("the proof's header is not the followed block's");
      }
      const { chain_id: cid = chain.chainId, ...rest } = t.tx;
      if (cid !== chain.chainId) fail("the claim is for another chain");
      const m = { ...rest, chain_id: chain.chainId };
      const txHash = hex(await sha256(canonical(m)));
      if (txHash !== r.tx || t.tx_hash !== r.tx) fail("the transaction does not hash to the receipt's tx");
      if (m.type !== "RECEIPT_CLAIM" || !isObject(m.payload)) fail("the transaction is not a claim");
      if (!isObject(t.attestation)) fail("the claim has no attestation");
      const leaf = await sha256(canonical([txHash, t.attestation]));
      if (t.leaf !== hex(leaf)) fail("the leaf is not H([txHash, attestation])");
      const root = await txBranchRoot(leaf, t.index, t.count, t.branch);
      if (hex(root) !== rec.txRoot) fail("the branch does not lead to the block's tx_root");
      claim = m;
      return `index ${t.index} of ${t.count}, branch of ${t.branch.length}`;
    });
    const p = claim.payload;
    await c.run("the claim's transaction signature", async () => {
      if ((await addressOf(unhex(claim.pubkey, 32) || new Uint8Array(0))) !== claim.sender) fail("pubkey is not the sender's");
      const body = { chain_id: chain.chainId, type: claim.type, sender: claim.sender, nonce: claim.nonce, fee: claim.fee, payload: p };
      if (!(await ed25519Verify(claim.pubkey, claim.sig, await sha256(canonical(body))))) fail("the signature does not verify");
      return `sent by ${claim.sender}`;
    });
    await c.run("the claim is this receipt", () => {
      const pairs = [["receipt_id", id], ["job_id", r.job_id], ["client_addr", r.client], ["miner_addr", r.miner],
        ["compute_units", r.compute_units], ["price", r.price], ["client_payment_tx", r.payment_tx]];
      for (const [k, v] of pairs) if (!sameValue(p[k], v)) fail(`the claim's ${k} differs from the receipt entry's`);
      if (!sameValue(claim.fee, r.fee)) fail("the claim's fee differs");
    });
    await c.run("the miner's signature", async () => {
      if ((await addressOf(unhex(p.miner_pubkey, 32) || new Uint8Array(0))) !== p.miner_addr) fail("miner_pubkey is not miner_addr's key");
      const body = { chain_id: chain.chainId };
      for (const k of MINER_SIGNED) body[k] = p[k];
      if (!(await ed25519Verify(p.miner_pubkey, p.miner_sig, await sha256(canonical(body))))) fail("miner_sig does not verify");
      return `miner ${p.miner_addr}`;
    });
    await c.run("the coordinator's attestation", async () => {
      const a = t.attestation;
      exactly(a, ATTESTATION_FIELDS, "the attestation");
      if (a.coordinator !== coordinator.address) fail(`attested by ${a.coordinator}, not the coordinator ${coordinator.address}`);
      const body = { chain_id: chain.chainId };
      for (const k of ATTESTATION_FIELDS) if (k !== "sig") body[k] = a[k];
      if (!(await ed25519Verify(coordinator.public_key, a.sig, await sha256(canonical(body))))) fail("its signature does not verify");
      const req = { receipt_id: p.receipt_id, job_id: p.job_id, client: p.client_addr, miner: p.miner_addr, price: p.price,
        compute_units: p.compute_units, output_hash: p.output_hash, client_payment_tx: p.client_payment_tx };
      for (const [k, v] of Object.entries(req)) if (!sameValue(a[k], v)) fail(`it attests another ${k}`);
      if (a.exists !== true || a.paid !== true || a.not_double_spent !== true) fail("it does not say exists, paid and not double spent");
      return `signed by ${a.coordinator}`;
    });
    return { state: "verified", reason: `checked against finalized block ${fin.height}`, checks: c.list };
  } catch (e) {
    const reason = e instanceof VerifyError ? e.message : `${e.code || e.name}: ${e.message}`;
    if (!(e instanceof VerifyError)) c.list.push({ name: "the node's answers", ok: false, detail: reason });
    return { state: "unverified", reason, checks: c.list };
  }
}
