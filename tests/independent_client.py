"""An aitnode client written only from docs/protocol.md.

It deliberately imports nothing from the ``aitnode`` package: its
canonical CBOR, bech32, transaction signing and hashing, fee rule, Merkle
root, state root and genesis derivation, compute receipts (the miner's
signature, attestations, the claim's tx_root leaf, settlement), the
peer handshake's auth bytes, finality votes and evidence, and a follower
that checks every block of a chain as section 10 says (header, turn,
authority set, votes, evidence, transactions, epoch end, state root), and a light
client (``LightFollower``: headers followed by getHeaders from the genesis
file, state and transaction proofs checked against the finalized header
it verified) are re-implemented here from the document, so that a test
can show that the document is enough to talk to a node
(tests/test_independent_client.py).  It also holds a coordinator of its
own (``Coordinator``), a twisted.web resource that answers POST
/attest/receipt as the document says.  Dependencies: hashlib, json,
PyNaCl's ``nacl.signing`` for Ed25519, and twisted.web for the
coordinator's HTTP.
"""

import hashlib
import json

import nacl.signing
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

HRP = "ait"
ZERO_HASH = "0" * 64
U64 = 2**64

# --------------------------------------------------------------------------
# Canonical CBOR (protocol.md section 2): unsigned integers, text, arrays,
# maps with text keys, booleans; shortest heads; map keys in byte order of
# their encodings.


def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("integer too large for CBOR")


def cbor(value):
    """The canonical CBOR bytes of a consensus value."""
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if type(value) is int:
        if not 0 <= value < U64:
            raise ValueError(f"integer out of range: {value}")
        return _head(0, value)
    if type(value) is str:
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if type(value) is list:
        return _head(4, len(value)) + b"".join(cbor(v) for v in value)
    if type(value) is dict:
        pairs = []
        for k, v in value.items():
            if type(k) is not str:
                raise ValueError("map keys must be text")
            pairs.append((cbor(k), cbor(v)))
        pairs.sort(key=lambda kv: kv[0])
        return _head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    raise ValueError(f"{type(value).__name__} is not a consensus value")


def sha256(data):
    return hashlib.sha256(data).digest()


def hash_hex(value):
    """sha256(canonical(value)) as lowercase hex."""
    return hashlib.sha256(cbor(value)).hexdigest()


# --------------------------------------------------------------------------
# bech32 (BIP-173 checksum, final constant 1), hrp "ait", 20 data bytes,
# no version byte (section 4.2).

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values):
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i, g in enumerate(_GENERATORS):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp):
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(values, frombits, tobits, pad):
    """Regroup a sequence of frombits-bit values into tobits-bit values
    (BIP-173's convertbits); without pad, leftover bits must be zero padding."""
    acc = bits = 0
    out = []
    for v in values:
        acc = (acc << frombits) | v
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & ((1 << tobits) - 1))
    if pad and bits:
        out.append((acc << (tobits - bits)) & ((1 << tobits) - 1))
    elif not pad and (bits >= frombits or acc & ((1 << bits) - 1)):
        raise ValueError("bad padding")
    return out


def _to_5bit(data):
    return _regroup(data, 8, 5, pad=True)


def _from_5bit(groups):
    return bytes(_regroup(groups, 5, 8, pad=False))


def bech32_encode(hrp, data5):
    pm = _polymod(_hrp_expand(hrp) + list(data5) + [0] * 6) ^ 1
    checksum = [(pm >> (5 * (5 - i))) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in list(data5) + checksum)


def address_from_bytes(raw20):
    if len(raw20) != 20:
        raise ValueError("an address holds 20 bytes")
    return bech32_encode(HRP, _to_5bit(raw20))


def address(public_key):
    """The address of a 32-byte Ed25519 public key."""
    return address_from_bytes(sha256(public_key)[:20])


def address_bytes(addr):
    """The 20 bytes of a lowercase ait1... address (ValueError if invalid)."""
    if addr != addr.lower() or not addr.startswith(HRP + "1"):
        raise ValueError("not a lowercase ait1 address")
    data = [_CHARSET.index(c) for c in addr[len(HRP) + 1 :]]
    if _polymod(_hrp_expand(HRP) + data) != 1:
        raise ValueError("bad checksum")
    raw = _from_5bit(data[:-6])
    if len(raw) != 20:
        raise ValueError("an address holds 20 bytes")
    return raw


# --------------------------------------------------------------------------
# Keys (section 4.1, 4.3)


def keypair(seed):
    """(seed, public key bytes, address) of a 32-byte seed."""
    sk = nacl.signing.SigningKey(bytes(seed))
    pk = bytes(sk.verify_key)
    return bytes(seed), pk, address(pk)


def key_file(seed):
    _, pk, addr = keypair(seed)
    return {"address": addr, "public_key": pk.hex(), "private_key": bytes(seed).hex()}


def sign(seed, message):
    return nacl.signing.SigningKey(bytes(seed)).sign(message).signature


# --------------------------------------------------------------------------
# Transactions (section 5)


def body(chain_id, ttype, sender, nonce, fee, payload):
    return {"chain_id": chain_id, "type": ttype, "sender": sender, "nonce": nonce, "fee": fee, "payload": payload}


def sign_bytes(tx_body):
    return sha256(cbor(tx_body))


def sign_tx(seed, chain_id, ttype, nonce, fee, payload, include_chain_id=False):
    """The wire form (a dict ready for JSON) of a signed transaction."""
    _, pk, sender = keypair(seed)
    b = body(chain_id, ttype, sender, nonce, fee, payload)
    sig = sign(seed, sign_bytes(b))
    wire = {k: v for k, v in b.items() if include_chain_id or k != "chain_id"}
    wire["pubkey"] = pk.hex()
    wire["sig"] = sig.hex()
    return wire


def sign_transfer(seed, chain_id, nonce, fee, to, amount, include_chain_id=False):
    return sign_tx(seed, chain_id, "TRANSFER", nonce, fee, {"to": to, "amount": amount}, include_chain_id)


def hashed_map(wire, chain_id=None):
    """The eight-member map whose hash is the txHash (section 5.3)."""
    m = {k: wire[k] for k in ("type", "sender", "nonce", "fee", "payload", "pubkey", "sig")}
    cid = wire.get("chain_id", chain_id)
    if cid is None:
        raise ValueError("the chain id is needed for the txHash")
    if chain_id is not None and cid != chain_id:
        raise ValueError("the wire form is for another chain")
    m["chain_id"] = cid
    return m


def tx_hash(wire, chain_id=None):
    """txHash of a wire transaction; chain_id is needed when wire lacks it."""
    return hash_hex(hashed_map(wire, chain_id))


def verify_tx(wire, chain_id):
    """True when wire's sig is pubkey's signature and pubkey is the sender's."""
    pk = bytes.fromhex(wire["pubkey"])
    if sha256(pk)[:20] != address_bytes(wire["sender"]):
        return False
    b = body(wire.get("chain_id", chain_id), wire["type"], wire["sender"], wire["nonce"], wire["fee"], wire["payload"])
    try:
        nacl.signing.VerifyKey(pk).verify(sign_bytes(b), bytes.fromhex(wire["sig"]))
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------
# Fees (section 8)

AUTHORITY_TYPES = ("MINT", "PARAM_UPDATE", "AUTHORITY_UPDATE")


def min_fee(params, payload, ttype="TRANSFER"):
    if ttype in AUTHORITY_TYPES:
        return 0
    return params["base_fee"] + params["fee_per_byte"] * len(cbor(payload))


# --------------------------------------------------------------------------
# Merkle root (section 10.3)


def merkle_root(hashes_hex):
    if not hashes_hex:
        return ZERO_HASH
    level = [sha256(b"\x00" + bytes.fromhex(h)) for h in hashes_hex]
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            nxt.append(sha256(b"\x01" + level[i] + level[i + 1]))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


# --------------------------------------------------------------------------
# Block limits (section 10.4)

DEFAULT_MAX_BLOCK_BYTES = 8388608  # while the param max_block_bytes is unset


def block_size(wires, chain_id, attestations=None):
    """The size of a block: per transaction its map m of 5.3 and its txHash
    as text (66 bytes), per claim another 66 and its attestation's bytes."""
    attestations = attestations or {}
    size = 0
    for w in wires:
        size += len(cbor(hashed_map(w, chain_id))) + 66
        att = attestations.get(tx_hash(w, chain_id))
        if att is not None:
            size += 66 + len(cbor(att))
    return size


def block_within_limits(params, wires, chain_id, attestations=None):
    """Whether a block keeps max_block_txs and max_block_bytes (params at its parent)."""
    max_bytes = params.get("max_block_bytes", DEFAULT_MAX_BLOCK_BYTES)
    return len(wires) <= params["max_block_txs"] and block_size(wires, chain_id, attestations) <= max_bytes


# --------------------------------------------------------------------------
# State root (section 11) and genesis (section 9)

PARAM_DEFAULTS = {
    "base_fee": 10,
    "fee_per_byte": 1,
    "mint_per_unit": 1000,
    "coordinator_ratio_bps": 500,
    "treasury_ratio_bps": 0,
    "max_block_txs": 10000,
    "block_interval_ms": 2000,
    "epoch_length": 100,
    "faucet": False,
    # escrow, treasury, coordinator, max_block_bytes: unset unless genesis sets them
}


EMPTY = bytes(32)


def key_hash(ns, key):
    return hashlib.sha256(cbor([ns, key])).digest()


def value_hash(value):
    return hashlib.sha256(cbor(value)).digest()


def leaf(kh, vh):
    return hashlib.sha256(b"\x00" + kh + vh).digest()


def inner(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def key_bit(kh, i):
    return (kh[i // 8] >> (7 - i % 8)) & 1


def tree_root(leaves, depth=0):
    """leaves: {key_hash: value_hash}; section 11.2's root(S, d)."""
    if not leaves:
        return EMPTY
    if len(leaves) == 1:
        return leaf(*next(iter(leaves.items())))
    zero = {k: v for k, v in leaves.items() if key_bit(k, depth) == 0}
    one = {k: v for k, v in leaves.items() if key_bit(k, depth) == 1}
    return inner(tree_root(zero, depth + 1), tree_root(one, depth + 1))


def state_root(entries):
    """entries: iterable of (namespace, key, value)."""
    return tree_root({key_hash(ns, k): value_hash(v) for ns, k, v in entries}).hex()


def check_state_proof(root_hex, ns, key, value_cbor_hex, proof_hex):
    """Section 11.3: True when the proof shows (ns, key) holding the value
    whose canonical bytes are value_cbor_hex (None: the key is absent)."""
    k = key_hash(ns, key)
    p = bytes.fromhex(proof_hex)
    if not p or p[0] not in (0, 1):
        return False
    pos, lf = 1, None
    if p[0] == 1:
        lf = (p[1:33], p[33:65])
        pos = 65
    if len(p) < pos + 2:
        return False
    n = int.from_bytes(p[pos:pos + 2], "big")
    pos += 2
    nbytes = (n + 7) // 8
    bitmap = p[pos:pos + nbytes]
    if n > 256 or len(bitmap) != nbytes or (n % 8 and bitmap[-1] & (0xff >> (n % 8))):
        return False
    pos += nbytes
    sibs = []
    for i in range(n):
        if bitmap[i // 8] >> (7 - i % 8) & 1:
            sibs.append(p[pos:pos + 32])
            pos += 32
        else:
            sibs.append(EMPTY)
    if pos != len(p) or any(len(s) != 32 for s in sibs) or (lf is not None and len(lf[1]) != 32):
        return False
    if value_cbor_hex is not None:
        if lf is None or lf != (k, hashlib.sha256(bytes.fromhex(value_cbor_hex)).digest()):
            return False
    elif lf is not None:
        if lf[0] == k or any(key_bit(lf[0], i) != key_bit(k, i) for i in range(n)):
            return False
    h = EMPTY if lf is None else leaf(*lf)
    for i in reversed(range(n)):
        h = inner(sibs[i], h) if key_bit(k, i) else inner(h, sibs[i])
    return h.hex() == root_hex


def genesis_params(doc):
    params = dict(PARAM_DEFAULTS)
    params.update(doc.get("params", {}))
    return params


def genesis_entries(doc):
    entries = []
    total = 0
    for acct in doc.get("accounts", []):
        total += acct["balance"]
        if acct["balance"]:
            entries.append(["acct", acct["address"], [acct["balance"], 0]])
    for name, value in genesis_params(doc).items():
        entries.append(["param", name, value])
    entries.append(["chain", "authorities", genesis_set(doc)])
    for a in doc["authorities"]:
        entries.append(["authkey", a["address"], a["public_key"]])
    entries.append(["chain", "supply", {"genesis": total, "faucet": 0, "receipts": 0, "coordinator": 0, "treasury": 0}])
    return entries


def genesis_set(doc):
    """chain/authorities at genesis: the file's authorities, none jailed."""
    return [{"address": a["address"], "public_key": a["public_key"], "jailed": False} for a in doc["authorities"]]


def genesis_header(doc):
    return {
        "chain_id": doc["chain_id"],
        "parent": ZERO_HASH,
        "height": 0,
        "timestamp": doc["timestamp"],
        "proposer": "",
        "tx_root": ZERO_HASH,
        "state_root": state_root(genesis_entries(doc)),
        "votes_root": ZERO_HASH,
        "evidence_root": ZERO_HASH,
        "authorities_hash": hash_hex(genesis_set(doc)),
    }


HEADER_FIELDS = ("chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root", "votes_root",
                 "evidence_root", "authorities_hash")


def block_hash(header):
    return hash_hex(header)


# --------------------------------------------------------------------------
# Compute receipts ("Compute receipts")

CLAIM = "RECEIPT_CLAIM"
MINER_SIGNED = ("receipt_id", "job_id", "client_addr", "miner_addr", "compute_units", "price", "output_hash",
                "client_payment_tx")
CLAIM_FIELDS = MINER_SIGNED + ("miner_pubkey", "miner_sig")
REQUEST_FIELDS = ("receipt_id", "job_id", "client", "miner", "price", "compute_units", "output_hash",
                  "client_payment_tx")
ANSWER_FIELDS = REQUEST_FIELDS + ("exists", "paid", "not_double_spent", "coordinator", "sig")
BPS = 10000


def miner_signed_map(fields, chain_id):
    m = {k: fields[k] for k in MINER_SIGNED}
    m["chain_id"] = chain_id
    return m


def miner_sign_bytes(fields, chain_id):
    return sha256(cbor(miner_signed_map(fields, chain_id)))


def sign_receipt(miner_seed, chain_id, **fields):
    """A RECEIPT_CLAIM payload: the eight signed members, miner_pubkey, miner_sig."""
    _, pk, _ = keypair(miner_seed)
    payload = {k: fields[k] for k in MINER_SIGNED}
    payload["miner_pubkey"] = pk.hex()
    payload["miner_sig"] = sign(miner_seed, miner_sign_bytes(payload, chain_id)).hex()
    return payload


def _verify(pk_hex, sig_hex, message):
    try:
        nacl.signing.VerifyKey(bytes.fromhex(pk_hex)).verify(message, bytes.fromhex(sig_hex))
        return True
    except Exception:
        return False


def miner_sig_ok(payload, chain_id):
    pk = bytes.fromhex(payload["miner_pubkey"])
    if sha256(pk)[:20] != address_bytes(payload["miner_addr"]):
        return False
    return _verify(payload["miner_pubkey"], payload["miner_sig"], miner_sign_bytes(payload, chain_id))


def attestation_request(payload):
    return {
        "receipt_id": payload["receipt_id"], "job_id": payload["job_id"], "client": payload["client_addr"],
        "miner": payload["miner_addr"], "price": payload["price"], "compute_units": payload["compute_units"],
        "output_hash": payload["output_hash"], "client_payment_tx": payload["client_payment_tx"],
    }


def attestation_signed_map(answer, chain_id):
    m = {k: v for k, v in answer.items() if k != "sig"}
    m["chain_id"] = chain_id
    return m


def attestation_sign_bytes(answer, chain_id):
    return sha256(cbor(attestation_signed_map(answer, chain_id)))


def sign_attestation(seed, chain_id, request, exists=True, paid=True, not_double_spent=True, coordinator=None):
    """The coordinator's answer to request, signed with seed."""
    answer = dict(request)
    answer.update(exists=exists, paid=paid, not_double_spent=not_double_spent,
                  coordinator=coordinator or keypair(seed)[2])
    answer["sig"] = sign(seed, attestation_sign_bytes(answer, chain_id)).hex()
    return answer


def attestation_ok(answer, public_key_hex, chain_id):
    return _verify(public_key_hex, answer["sig"], attestation_sign_bytes(answer, chain_id))


def attestation_problem(answer, payload, coordinator, chain_id):
    """The error code a node gives this attestation for this claim, or None.

    coordinator: genesis params.coordinator ({"address", "public_key"}).
    """
    if type(answer) is not dict:
        return "attestation_missing"
    if set(answer) != set(ANSWER_FIELDS):
        if set(answer) | {"client_payment_tx"} == set(ANSWER_FIELDS):
            return "attestation_wrong_payment"  # it names no payment
        return "attestation_malformed"
    try:
        cbor(answer)
    except ValueError:
        return "attestation_malformed"
    if answer["coordinator"] != coordinator["address"]:
        return "attestation_wrong_coordinator"
    sig = answer["sig"]
    if type(sig) is not str or len(sig) != 128 or sig != sig.lower() or not all(c in "0123456789abcdef" for c in sig):
        return "attestation_malformed"
    if not attestation_ok(answer, coordinator["public_key"], chain_id):
        return "attestation_bad_signature"
    if answer["client_payment_tx"] != payload["client_payment_tx"]:
        return "attestation_wrong_payment"
    if cbor({k: answer[k] for k in REQUEST_FIELDS}) != cbor(attestation_request(payload)):
        return "attestation_mismatch"
    for flag, code in (("exists", "job_not_found"), ("paid", "job_not_paid"), ("not_double_spent", "job_double_spent")):
        if answer[flag] is not True:
            return code
    return None


def leaf_input(tx_hash_hex, attestation=None):
    """What a transaction puts into the tx_root: its txHash, or for a claim
    H(canonical([txHash, attestation]))."""
    if attestation is None:
        return tx_hash_hex
    return hash_hex([tx_hash_hex, attestation])


def block_tx_root(tx_hashes, attestations=None):
    attestations = attestations or {}
    return merkle_root([leaf_input(h, attestations.get(h)) for h in tx_hashes])


def settlement(params, payload):
    """(mint, coordinator cut, treasury cut) of a claim under params."""
    mint = payload["compute_units"] * params["mint_per_unit"]
    coordinator_cut = mint * params["coordinator_ratio_bps"] // BPS
    treasury_cut = mint * params["treasury_ratio_bps"] // BPS if params.get("treasury") else 0
    return mint, coordinator_cut, treasury_cut


def claim_deltas(params, payload, sender, fee):
    """{address: net balance change} of a claim, in the document's order
    (escrow, miner, coordinator, treasury when its cut is not 0, sender)."""
    mint, coordinator_cut, treasury_cut = settlement(params, payload)
    parts = [
        (params["escrow"], -payload["price"]),
        (payload["miner_addr"], payload["price"] + mint),
        (params["coordinator"]["address"], coordinator_cut),
    ]
    if treasury_cut:
        parts.append((params["treasury"], treasury_cut))
    parts.append((sender, -fee))
    out = {}
    for addr, delta in parts:
        out[addr] = out.get(addr, 0) + delta
    return out


def claim_changes(params, payload, sender, fee):
    """The claim receipt's "changes" list."""
    return [{"address": a, "delta": d} for a, d in claim_deltas(params, payload, sender, fee).items() if d]


# --------------------------------------------------------------------------
# Peer handshake ("Peer protocol")


def auth_bytes(chain_id, challenge_hex, node_id_hex):
    return sha256(cbor({"chain_id": chain_id, "challenge": challenge_hex, "node_id": node_id_hex}))


def frame(mtype, data):
    return cbor({"type": mtype, "data": data})


def locator_heights(head_height):
    out, h, gap = [], head_height, 1
    while h > 0 and len(out) < 63:
        out.append(h)
        if len(out) >= 9:
            gap *= 2
        h -= gap
    return out + [0]


# --------------------------------------------------------------------------
# Finality votes and evidence ("Finality votes and evidence")


def quorum(n):
    return n - (n - 1) // 3


def vote_sign_bytes(chain_id, height, block, source_height, source_block):
    return sha256(cbor({"chain_id": chain_id, "height": height, "hash": block,
                        "source_height": source_height, "source_hash": source_block}))


def sign_vote(seed, chain_id, height, block, source_height, source_block):
    """The wire form of a vote."""
    sig = sign(seed, vote_sign_bytes(chain_id, height, block, source_height, source_block))
    return {"voter": keypair(seed)[2], "height": height, "hash": block, "source_height": source_height,
            "source_hash": source_block, "sig": sig.hex()}


def vote_ok(wire, public_key_hex, chain_id):
    return address(bytes.fromhex(public_key_hex)) == wire["voter"] and _verify(
        public_key_hex, wire["sig"],
        vote_sign_bytes(chain_id, wire["height"], wire["hash"], wire["source_height"], wire["source_hash"]))


def vote_rule_broken(a, b):
    """None, "double_vote" or "surround_vote" for two wire votes of one voter."""
    fields = ("height", "hash", "source_height", "source_hash")
    if [a[f] for f in fields] == [b[f] for f in fields]:
        return None
    if a["height"] == b["height"]:
        return "double_vote"
    for x, y in ((a, b), (b, a)):
        if x["source_height"] < y["source_height"] and y["height"] < x["height"]:
            return "surround_vote"
    return None


def vote_evidence(a, b):
    """The wire form of vote evidence: the pair ordered by leaf."""
    a, b = sorted((a, b), key=hash_hex)
    return {"kind": "vote", "a": a, "b": b}


def proposal_evidence(a, b):
    """The wire form of proposal evidence from two {"header", "sig"}."""
    a, b = sorted((a, b), key=lambda p: block_hash(p["header"]))
    return {"kind": "proposal", "a": a, "b": b}


VOTE_FIELDS = ("voter", "height", "hash", "source_height", "source_hash", "sig")
MAX_BLOCK_EVIDENCE = 16


def votes_root(wire_votes):
    """The Merkle root over the votes' leaves H(canonical(wire vote))."""
    return merkle_root([hash_hex(v) for v in wire_votes])


def evidence_root(wire_items):
    """The Merkle root over the evidence ids H(canonical(wire form))."""
    return merkle_root([hash_hex(e) for e in wire_items])


def evidence_offence(wire, chain_id, key_of):
    """(offender, offence) of one piece of evidence, or ValueError.

    key_of(address): the public key hex authkey/<address> holds, or None."""
    if type(wire) is not dict or set(wire) != {"kind", "a", "b"}:
        raise ValueError("evidence has exactly kind, a and b")
    a, b = wire["a"], wire["b"]
    if wire["kind"] == "vote":
        for v in (a, b):
            if type(v) is not dict or set(v) != set(VOTE_FIELDS) or not 0 <= v["source_height"] < v["height"]:
                raise ValueError("evidence: not a vote")
        if a["voter"] != b["voter"]:
            raise ValueError("evidence: two voters")
        if not hash_hex(a) < hash_hex(b):
            raise ValueError("evidence: a's leaf must be below b's")
        offence = vote_rule_broken(a, b)
        if offence is None:
            raise ValueError("evidence: the votes break no rule")
        key = key_of(a["voter"])
        if key is None or not (vote_ok(a, key, chain_id) and vote_ok(b, key, chain_id)):
            raise ValueError("evidence: a vote is not signed by the voter's key on this chain")
        return a["voter"], offence
    if wire["kind"] == "proposal":
        for half in (a, b):
            if type(half) is not dict or set(half) != {"header", "sig"} or set(half["header"]) != set(HEADER_FIELDS):
                raise ValueError("evidence: not a signed header")
            if len(cbor(half["header"])) > 16384 or half["header"]["height"] < 1:
                raise ValueError("evidence: header too large or at height 0")
        ha, hb = a["header"], b["header"]
        if (ha["height"], ha["proposer"]) != (hb["height"], hb["proposer"]):
            raise ValueError("evidence: headers of two heights or two proposers")
        if not block_hash(ha) < block_hash(hb):
            raise ValueError("evidence: a's block hash must be below b's")
        key = key_of(ha["proposer"])
        for half in (a, b):
            if key is None or half["header"]["chain_id"] != chain_id or not _verify(
                    key, half["sig"], bytes.fromhex(block_hash(half["header"]))):
                raise ValueError("evidence: a header is not signed by the proposer's key on this chain")
        return ha["proposer"], "double_proposal"
    raise ValueError("evidence kind is proposal or vote")


# --------------------------------------------------------------------------
# The authority set and AUTHORITY_UPDATE (6.4, 10.1, 10.5, 11.1)

ACTIONS = ("add", "remove", "unjail")


def change_id(payload):
    return hash_hex(payload)


def change_problem(members, p):
    """The error code of a change that cannot apply to members, or None."""
    m = next((m for m in members if m["address"] == p["address"]), None)
    if p["action"] == "add":
        return "authority_exists" if m is not None else None
    if m is None or m["public_key"] != p["public_key"]:
        return "authority_unknown"
    if p["action"] == "unjail" and not m["jailed"]:
        return "authority_not_jailed"
    if p["action"] == "remove" and not any(not a["jailed"] and a is not m for a in members):
        return "last_authority"
    return None


def rank(members, address, height):
    """The rank of address for block height under the set members (None:
    no turn, jailed or not an authority)."""
    active = [m["address"] for m in members if not m["jailed"]]
    if address not in active:
        return None
    return (active.index(address) - height) % len(active)


def earliest(members, address, height, parent_timestamp, interval_ms):
    r = rank(members, address, height)
    return None if r is None else parent_timestamp + interval_ms * (1 + 2 * r)


# --------------------------------------------------------------------------
# A small state machine for every transaction type, the votes, evidence and
# epoch end of a block (sections 6, 8, 10.2, 11, Compute receipts, Finality
# votes and evidence), enough to follow a block from its parent's state.
# Rules broken raise ValueError(<the node's error code or a reason>).

UPDATABLE = ("base_fee", "fee_per_byte", "mint_per_unit", "coordinator_ratio_bps", "treasury_ratio_bps",
             "max_block_txs", "max_block_bytes", "block_interval_ms")


class State:
    def __init__(self, entries, chain_id=None):
        self.entries = {(ns, key): value for ns, key, value in entries}
        self.chain_id = chain_id
        self.results = {}  # txHash -> receipt, for AUTHORITY_UPDATE

    def account(self, addr):
        return tuple(self.entries.get(("acct", addr), [0, 0]))

    def set_account(self, addr, balance, nonce):
        if balance < 0 or balance >= U64:
            raise ValueError("balance out of range")
        if balance == 0 and nonce == 0:
            self.entries.pop(("acct", addr), None)
        else:
            self.entries[("acct", addr)] = [balance, nonce]

    def params(self):
        return {key: value for (ns, key), value in self.entries.items() if ns == "param"}

    def members(self):
        """chain/authorities: the set in effect for the next block."""
        return self.entries[("chain", "authorities")]

    def authorities(self):
        """The addresses of the set, jailed or not."""
        return {a["address"] for a in self.members()}

    def supply(self):
        return dict(self.entries[("chain", "supply")])

    def apply(self, wire, height=None, attestation=None):
        """Apply one transaction; return its fee (ValueError if it does not apply)."""
        sender = wire["sender"]
        balance, nonce = self.account(sender)
        if wire["nonce"] != nonce + 1:
            raise ValueError("nonce_too_low" if wire["nonce"] <= nonce else "nonce_too_far_ahead")
        params = self.params()
        if wire["fee"] < min_fee(params, wire["payload"], wire["type"]):
            raise ValueError("fee_too_low")
        if wire["type"] in AUTHORITY_TYPES and sender not in self.authorities():
            raise ValueError("not_authority")
        if wire["type"] == CLAIM:
            self._claim(wire, height, attestation, params)
            return wire["fee"]
        if wire["type"] == "AUTHORITY_UPDATE":
            return self._authority_update(wire, balance, nonce)
        if wire["type"] == "PARAM_UPDATE":
            if wire["payload"]["key"] not in UPDATABLE:
                raise ValueError("bad_param")
            if balance < wire["fee"]:
                raise ValueError("insufficient_balance")
            self.set_account(sender, balance - wire["fee"], nonce + 1)
            self.entries[("param", wire["payload"]["key"])] = wire["payload"]["value"]
            return wire["fee"]
        to, amount = wire["payload"]["to"], wire["payload"]["amount"]
        if wire["type"] == "TRANSFER":
            if balance < amount + wire["fee"]:
                raise ValueError("insufficient_balance")
            self.set_account(sender, balance - amount - wire["fee"], nonce + 1)
            escrow = params.get("escrow")
            if to == escrow and sender != escrow:
                self.entries[("pay", tx_hash(wire, self.chain_id))] = {"client": sender, "amount": amount, "claimed": ""}
        elif wire["type"] == "MINT":
            if not params.get("faucet"):
                raise ValueError("faucet_disabled")
            if balance < wire["fee"]:
                raise ValueError("insufficient_balance")
            self.set_account(sender, balance - wire["fee"], nonce + 1)
            supply = self.supply()
            supply["faucet"] += amount
            self.entries[("chain", "supply")] = supply
        else:
            raise ValueError("unknown_type")
        to_balance, to_nonce = self.account(to)
        self.set_account(to, to_balance + amount, to_nonce)
        return wire["fee"]

    def _claim(self, wire, height, attestation, params):
        p, sender = wire["payload"], wire["sender"]
        if params.get("coordinator") is None or params.get("escrow") is None:
            raise ValueError("receipts_disabled")
        if sender not in (p["miner_addr"], params["coordinator"]["address"]):
            raise ValueError("claim_sender_not_allowed")
        if sha256(bytes.fromhex(p["miner_pubkey"]))[:20] != address_bytes(p["miner_addr"]):
            raise ValueError("miner_pubkey_mismatch")
        if not miner_sig_ok(p, self.chain_id):
            raise ValueError("bad_miner_signature")
        if ("rcpt", p["receipt_id"]) in self.entries:
            raise ValueError("receipt_already_claimed")
        pay = self.entries.get(("pay", p["client_payment_tx"]))
        if pay is None:
            raise ValueError("payment_not_found")
        if pay["claimed"]:
            raise ValueError("payment_already_used")
        if pay["client"] != p["client_addr"]:
            raise ValueError("payment_wrong_client")
        if pay["amount"] < p["price"]:
            raise ValueError("payment_too_small")
        if self.account(params["escrow"])[0] < p["price"]:
            raise ValueError("escrow_insufficient")
        problem = attestation_problem(attestation, p, params["coordinator"], self.chain_id)
        if problem:
            raise ValueError(problem)
        mint, coordinator_cut, treasury_cut = settlement(params, p)
        supply = self.supply()
        supply["receipts"] += mint
        supply["coordinator"] += coordinator_cut
        supply["treasury"] += treasury_cut
        if sum(supply.values()) >= U64:
            raise ValueError("balance_overflow")
        deltas = claim_deltas(params, p, sender, wire["fee"])
        for addr, delta in deltas.items():
            if self.account(addr)[0] + delta < 0:
                raise ValueError("insufficient_balance" if addr == sender else "escrow_insufficient")
        for addr, delta in deltas.items():
            balance, nonce = self.account(addr)
            self.set_account(addr, balance + delta, nonce)
        balance, nonce = self.account(sender)
        self.set_account(sender, balance, nonce + 1)
        self.entries[("pay", p["client_payment_tx"])] = dict(pay, claimed=p["receipt_id"])
        self.entries[("rcpt", p["receipt_id"])] = {
            "tx": tx_hash(wire, self.chain_id), "height": height, "job_id": p["job_id"], "client": p["client_addr"],
            "miner": p["miner_addr"], "compute_units": p["compute_units"], "price": p["price"],
            "payment_tx": p["client_payment_tx"], "mint": mint, "miner_paid": p["price"] + mint,
            "coordinator_cut": coordinator_cut, "treasury_cut": treasury_cut, "fee": wire["fee"],
        }
        self.entries[("chain", "supply")] = supply

    def _authority_update(self, wire, balance, nonce):
        sender, p, fee = wire["sender"], wire["payload"], wire["fee"]
        if set(p) != {"action", "address", "public_key"}:
            raise ValueError("missing_field")
        if p["action"] not in ACTIONS:
            raise ValueError("bad_authority_update")
        if sha256(bytes.fromhex(p["public_key"]))[:20] != address_bytes(p["address"]):
            raise ValueError("pubkey_mismatch")
        members = self.members()
        if sender not in {m["address"] for m in members if not m["jailed"]}:
            raise ValueError("not_authority")
        problem = change_problem(members, p)
        if problem:
            raise ValueError(problem)
        if balance < fee:
            raise ValueError("insufficient_balance")
        cid = change_id(p)
        rec = self.entries.get(("authupd", cid)) or {"change": p, "approvers": []}
        if sender in rec["approvers"]:
            raise ValueError("already_approved")
        self.set_account(sender, balance - fee, nonce + 1)
        approvers = sorted(rec["approvers"] + [sender])
        self.entries[("authupd", cid)] = {"change": rec["change"], "approvers": approvers}
        pending = self.entries.get(("chain", "pending_updates"), [])
        if cid not in pending:
            self.entries[("chain", "pending_updates")] = sorted(pending + [cid])
        self.results[tx_hash(wire, self.chain_id)] = {
            "change": cid, "approvals": len(approvers),
            "changes": [{"address": sender, "delta": -fee}] if fee else [], "fee": fee}
        return fee

    def apply_block(self, wires, proposer, height=None, attestations=None):
        """The block's transactions, then the fee credit (10.2 steps 3, 4)."""
        attestations = attestations or {}
        fees = 0
        for w in wires:
            att = attestations.get(tx_hash(w, self.chain_id)) if w["type"] == CLAIM else None
            fees += self.apply(w, height, att)
        if fees:
            balance, nonce = self.account(proposer)
            self.set_account(proposer, balance + fees, nonce)

    # -- the set, votes, evidence, epoch end -----------------------------------
    def replace_set(self, height, members):
        """Block height changed the set: members are in effect from height + 1 (11.1)."""
        if self.entries.get(("chain", "set_since")) != height + 1:
            self.entries[("chain", "prev_authorities")] = self.members()
            self.entries[("chain", "set_since")] = height + 1
        self.entries[("chain", "authorities")] = members

    def vote_set(self, height):
        """The set the votes carried by block height count against: the
        one in effect for its parent (11.1)."""
        if self.entries.get(("chain", "set_since")) == height:
            return self.entries[("chain", "prev_authorities")]
        return self.members()

    def carries_set(self, height):
        return (height - 1) % self.params()["epoch_length"] == 0 or self.entries.get(("chain", "set_since")) == height

    def finality(self, genesis_hash):
        got = self.entries.get(("chain", "finality"))
        if got is None:
            g = {"height": 0, "hash": genesis_hash}
            return {"justified": g, "finalized": g}
        return got

    def apply_votes(self, height, parent_hash, votes, genesis_hash):
        """10.2 step 1: the votes block height carries for its parent."""
        if type(votes) is not list:
            raise ValueError("votes must be a list")
        if height == 1:
            if votes:
                raise ValueError("block 1 carries no votes")
            return
        before = self.finality(genesis_hash)
        keys = {m["address"]: m["public_key"] for m in self.vote_set(height) if not m["jailed"]}
        if len(votes) > len(keys):
            raise ValueError("more votes than authorities")
        previous = ""
        for v in votes:
            if type(v) is not dict or set(v) != set(VOTE_FIELDS) or not 0 <= v["source_height"] < v["height"]:
                raise ValueError("not a vote")
            if v["voter"] <= previous:
                raise ValueError("votes must be sorted by voter, each voter once")
            previous = v["voter"]
            if v["voter"] not in keys:
                raise ValueError("a vote by no non-jailed authority")
            if (v["height"], v["hash"]) != (height - 1, parent_hash):
                raise ValueError("a vote whose target is not the parent")
            if {"height": v["source_height"], "hash": v["source_hash"]} != before["justified"]:
                raise ValueError("a vote whose source is not the latest justified block")
            if not vote_ok(v, keys[v["voter"]], self.chain_id):
                raise ValueError("a vote not signed by its voter")
        if votes and len(votes) >= quorum(len(keys)):
            j = before["justified"]
            finalized = j if j["height"] == height - 2 else before["finalized"]
            self.entries[("chain", "finality")] = {"justified": {"height": height - 1, "hash": parent_hash},
                                                   "finalized": finalized}

    def apply_evidence(self, height, evidence):
        """10.2 step 2: record each piece, jail its offender from height + 1."""
        if type(evidence) is not list or len(evidence) > MAX_BLOCK_EVIDENCE:
            raise ValueError("evidence must be a list of at most 16")
        members = [dict(m) for m in self.members()]
        jailed, previous = False, ""
        for w in evidence:
            offender, offence = evidence_offence(w, self.chain_id, lambda a: self.entries.get(("authkey", a)))
            eid = hash_hex(w)
            if eid <= previous:
                raise ValueError("evidence must be sorted by id, each once")
            previous = eid
            if ("evid", eid) in self.entries:
                raise ValueError("evidence recorded already")
            self.entries[("evid", eid)] = {"height": height, "offender": offender, "offence": offence}
            active = [m for m in members if not m["jailed"]]
            for m in members:
                if m["address"] == offender and not m["jailed"] and len(active) > 1:
                    m["jailed"] = jailed = True
        if jailed:
            self.replace_set(height, members)

    def end_block(self, height):
        """10.2 step 5: at an epoch's last block, the pending changes (6.4)."""
        if height % self.params()["epoch_length"]:
            return
        pending = self.entries.get(("chain", "pending_updates"), [])
        if not pending:
            return
        members = [dict(m) for m in self.members()]
        q = quorum(len([m for m in members if not m["jailed"]]))
        keep = []
        for cid in sorted(pending):
            p = self.entries[("authupd", cid)]["change"]
            if change_problem(members, p):
                del self.entries[("authupd", cid)]
                continue
            active = {m["address"] for m in members if not m["jailed"]}
            if len([a for a in self.entries[("authupd", cid)]["approvers"] if a in active]) < q:
                keep.append(cid)
                continue
            if p["action"] == "add":
                members.append({"address": p["address"], "public_key": p["public_key"], "jailed": False})
                self.entries[("authkey", p["address"])] = p["public_key"]
            elif p["action"] == "remove":
                members = [m for m in members if m["address"] != p["address"]]
            else:
                for m in members:
                    if m["address"] == p["address"]:
                        m["jailed"] = False
            del self.entries[("authupd", cid)]
        self.replace_set(height, members)
        if keep:
            self.entries[("chain", "pending_updates")] = keep
        else:
            del self.entries[("chain", "pending_updates")]

    def as_entries(self):
        return [[ns, key, value] for (ns, key), value in self.entries.items()]

    def root(self):
        return state_root(self.as_entries())


class Follower:
    """Follows one chain from its genesis file, checking every block as
    sections 10 and 11 say (its header, signature, turn, authority set,
    votes, evidence, transactions, fees, epoch end and state root).
    ``state`` is the state after the last block followed; ``finality()``
    its justified and finalized blocks."""

    def __init__(self, doc):
        self.chain_id = doc["chain_id"]
        self.state = State(genesis_entries(doc), self.chain_id)
        self.header = genesis_header(doc)
        self.hash = self.genesis_hash = block_hash(self.header)

    def finality(self):
        return self.state.finality(self.genesis_hash)

    def follow(self, record, wires):
        """Check and apply one block record (10.1) whose transactions are
        wires (wire forms, in block order); ValueError(reason) for the first
        rule it breaks (the state is then not to be used)."""
        st, cid = self.state, self.chain_id
        header = record["header"]
        if type(header) is not dict or set(header) != set(HEADER_FIELDS):
            raise ValueError("the header has the wrong members")
        height = self.header["height"] + 1
        if (header["chain_id"], header["parent"], header["height"]) != (cid, self.hash, height):
            raise ValueError("the block does not extend the chain")
        h = block_hash(header)
        if record.get("hash", h) != h:
            raise ValueError("the hash is not the header's")
        members, params = st.members(), st.params()  # the set in effect, the parameters at the parent
        key = {m["address"]: m["public_key"] for m in members}.get(header["proposer"])
        if key is None or not _verify(key, record["sig"], bytes.fromhex(h)):
            raise ValueError("the block is not signed by an authority")
        first = earliest(members, header["proposer"], height, self.header["timestamp"], params["block_interval_ms"])
        if first is None:
            raise ValueError("the proposer has no turn (jailed)")
        if header["timestamp"] < first:
            raise ValueError(f"the block is stamped before its proposer's turn ({header['timestamp']} < {first})")
        if header["authorities_hash"] != hash_hex(members):
            raise ValueError("authorities_hash is not the set in effect's")
        if st.carries_set(height):
            if record.get("authorities") != members:
                raise ValueError("the block does not carry the authority set")
        elif "authorities" in record:
            raise ValueError("the block carries an authority set it need not")
        votes, evidence = record.get("votes", []), record.get("evidence", [])
        if (votes_root(votes), evidence_root(evidence)) != (header["votes_root"], header["evidence_root"]):
            raise ValueError("votes_root or evidence_root does not match")
        hashes = [tx_hash(w, cid) for w in wires]
        if record.get("txs", hashes) != hashes or not all(verify_tx(w, cid) for w in wires):
            raise ValueError("the transactions are not the block's")
        atts = record.get("attestations") or {}
        if set(atts) != {x for x, w in zip(hashes, wires) if w["type"] == CLAIM}:
            raise ValueError("attestations do not belong to the claims")
        if block_tx_root(hashes, atts) != header["tx_root"]:
            raise ValueError("tx_root does not match")
        if not block_within_limits(params, wires, cid, atts):
            raise ValueError("the block is over a limit")
        st.apply_votes(height, self.hash, votes, self.genesis_hash)
        st.apply_evidence(height, evidence)
        st.apply_block(wires, header["proposer"], height, atts)
        st.end_block(height)
        if st.root() != header["state_root"]:
            raise ValueError("state_root does not match")
        self.header, self.hash = header, h


def rpc_block(answer):
    """(record, wires) of a GET /rpc/getBlock/{ref}?full=true answer (section 12)."""
    wires = answer["txs"]
    record = {"header": {k: answer[k] for k in HEADER_FIELDS}, "hash": answer["hash"], "sig": answer["sig"],
              "txs": [tx_hash(w) for w in wires], "attestations": answer.get("attestations", {}),
              "votes": answer["votes"], "evidence": answer["evidence"]}
    if "authorities" in answer:
        record["authorities"] = answer["authorities"]
    return record, wires


# --------------------------------------------------------------------------
# A light client ("Light clients"): it follows the chain by its headers
# (GET /rpc/getHeaders, section 12) from the genesis file, and checks state
# proofs (GET /rpc/getProof, 11.3) and transaction proofs (GET
# /rpc/getTxProof, section 12) against the finalized header it verified
# itself.  It holds no state and trusts no node.


class LightError(Exception):
    """An answer that does not verify; the message says what failed."""


HEADERS_PAGE = 256  # getHeaders' largest limit
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def percent_encode(text):
    """text as one URL path segment: its UTF-8 bytes, %XX but for the
    unreserved characters (getProof's {key}, section 12)."""
    return "".join(chr(b) if b in _UNRESERVED else "%%%02X" % b for b in text.encode("utf-8"))


def tx_branch_ok(leaf_hex, index, count, branch, root_hex):
    """getTxProof's walk (section 12) from a leaf input up to tx_root."""
    if type(index) is not int or type(count) is not int or not 0 <= index < count or type(branch) is not list:
        return False
    try:
        h = sha256(b"\x00" + bytes.fromhex(leaf_hex))
        idx, size, k = index, count, 0
        while size > 1:
            if not (idx == size - 1 and size % 2):  # else the last node of an odd level, carried up
                if k == len(branch):
                    return False
                s = bytes.fromhex(branch[k])
                k += 1
                if len(s) != 32:
                    return False
                h = sha256(b"\x01" + h + s) if idx % 2 == 0 else sha256(b"\x01" + s + h)
            idx, size = idx // 2, (size + 1) // 2
        return k == len(branch) and h.hex() == root_hex
    except (TypeError, ValueError):
        return False


def _active_keys(members):
    """{address: public key} of the non-jailed members of a set."""
    return {m["address"]: m["public_key"] for m in members if not m["jailed"]}


def _malformed(what, fn):
    """fn(), with an answer of the wrong shape reported as what's."""
    try:
        return fn()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise LightError(f"{what}: malformed answer ({type(e).__name__}: {e})")


class LightFollower:
    """Follows one chain by its headers from its genesis file, as the
    section Light clients says, and proves entries and transactions against
    the finalized block it verified.

    fetch(path) returns the JSON of a node's 200 answer to GET path (and
    raises otherwise).  ``final`` is the last finalized block verified: its
    header and hash, the set in effect for it, the finality it leaves and
    the turn interval last proven; it is a JSON value, so it can be kept as
    a cache and given back (``cache``) to start the next follower there.
    ``verified`` holds the blocks the last sync checked, by height."""

    def __init__(self, doc, fetch, cache=None):
        self.chain_id = doc["chain_id"]
        self.fetch = fetch
        header = genesis_header(doc)
        self.checkpoint = block_hash(header)
        genesis = {"height": 0, "hash": self.checkpoint}
        self.final = {"checkpoint": self.checkpoint, "header": header, "hash": self.checkpoint,
                      "set": genesis_set(doc), "finality": {"justified": genesis, "finalized": genesis},
                      "interval": genesis_params(doc)["block_interval_ms"]}
        if cache is not None and cache.get("checkpoint") == self.checkpoint:  # another checkpoint's is not used
            self.final = cache
        self.verified = {}

    @property
    def height(self):
        return self.final["header"]["height"]

    # -- following headers ------------------------------------------------------
    def _headers(self, start, limit):
        page = self.fetch(f"/rpc/getHeaders?from={start}&limit={limit}")

        def shape():
            entries = page["headers"]
            f = page["finalized"]
            if type(entries) is not list or type(f["height"]) is not int or type(f["hash"]) is not str:
                raise TypeError("headers is a list, finalized a {height, hash}")
            for e in entries:
                if type(e["header"]) is not dict or set(e["header"]) != set(HEADER_FIELDS):
                    raise ValueError("a header has exactly the members of 10.1")
            return entries, f
        return _malformed("getHeaders", shape)

    def sync(self):
        """Follow the node's headers from the verified finalized block F to
        two blocks above the block f the node reports finalized, checking
        each; f, with what the next sync needs, becomes ``final``."""
        F = self.final
        top = self.height
        entries, f = self._headers(top, HEADERS_PAGE)
        if f["height"] < top:
            raise LightError(f"node reports finalized {f['height']} below verified {top}")
        if not entries or _malformed("getHeaders", lambda: block_hash(entries[0]["header"])) != F["hash"]:
            raise LightError(f"header {top}: not the verified finalized block {F['hash']}")
        tip = dict(F, votes=entries[0].get("votes", []), short=None)
        self.verified = {top: tip}
        if f["height"] == top:
            if f["hash"] != F["hash"]:
                raise LightError(f"node reports finalized {top} as {f['hash']}, verified {F['hash']}")
            return self.final
        target = f["height"] + 2
        entries = entries[1:]
        while tip["header"]["height"] < target:
            h = tip["header"]["height"] + 1
            if not entries:
                entries, _ = self._headers(h, min(HEADERS_PAGE, target - h + 1))
                if not entries:
                    raise LightError(f"getHeaders: no header {h}, though the node reports {f['height']} finalized")
            tip = _malformed("getHeaders", lambda: self._next(tip, entries[0]))
            entries = entries[1:]
            self.verified[h] = tip
        fin = self.verified[f["height"]]
        if fin["hash"] != f["hash"]:
            raise LightError(f"node reports finalized {f['height']} as {f['hash']}, its header hashes to {fin['hash']}")
        if tip["finality"]["finalized"] != {"height": f["height"], "hash": f["hash"]}:
            for h in (f["height"], f["height"] + 1):  # the blocks voted for; block h + 1 carries their votes
                if self.verified[h + 1]["short"]:
                    raise LightError(f"block {h}: votes below quorum ({self.verified[h + 1]['short']})")
            raise LightError(f"node reports finalized {f['height']}, the votes do not finalize it")
        self.final = {"checkpoint": self.checkpoint, "header": fin["header"], "hash": fin["hash"], "set": fin["set"],
                      "finality": fin["finality"], "interval": tip["interval"]}
        return self.final

    def _next(self, prev, entry):
        """Check header entry against the block verified before it (steps 1
        to 5 of Following headers); the new verified block."""
        header, h = entry["header"], prev["header"]["height"] + 1
        # 1. this chain, the next height, the previous block as parent
        if (header["chain_id"], header["height"], header["parent"]) != (self.chain_id, h, prev["hash"]):
            raise LightError(f"header {h}: does not extend the verified chain (chain_id, height or parent)")
        bh = block_hash(header)
        if entry["hash"] != bh:
            raise LightError(f"header {h}: hash is not the header's")
        # 2. authorities_hash: the set so far, or a changed set proven in block h - 1's state
        members = prev["set"]
        changed = header["authorities_hash"] != hash_hex(members)
        if "authorities" in entry and hash_hex(entry["authorities"]) != header["authorities_hash"]:
            raise LightError(f"header {h}: the set it carries does not hash to authorities_hash")
        if changed:
            if "authorities" not in entry:
                raise LightError(f"header {h}: the set changed and the header does not carry it")
            proven = self._prove(prev, "chain", "authorities", "authority set", f"block {h - 1}")
            if proven is None or cbor(proven) != cbor(entry["authorities"]):
                raise LightError(f"header {h}: the set it carries is not chain/authorities of block {h - 1}")
            members = entry["authorities"]
        # 3. the proposer: a non-jailed member of the set in effect, its signature
        key = _active_keys(members).get(header["proposer"])
        if key is None:
            raise LightError(f"header {h}: signature by a non-authority")
        if not _verify(key, entry["sig"], bytes.fromhex(bh)):
            raise LightError(f"header {h}: bad proposer signature")
        # 4. its turn (10.5), I proven again in the parent's state when it fails
        interval = prev["interval"]
        first = earliest(members, header["proposer"], h, prev["header"]["timestamp"], interval)
        if header["timestamp"] < first:
            interval = self._prove(prev, "param", "block_interval_ms", "block_interval_ms", f"block {h - 1}")
            if type(interval) is not int:
                raise LightError(f"header {h}: block {h - 1} has no block_interval_ms")
            first = earliest(members, header["proposer"], h, prev["header"]["timestamp"], interval)
            if header["timestamp"] < first:
                raise LightError(f"header {h}: stamped before its proposer's turn ({header['timestamp']} < {first})")
        # 5. the votes for block h - 1, carried by h
        votes = prev["votes"]
        if type(votes) is not list or votes_root(votes) != header["votes_root"]:
            raise LightError(f"block {h}: votes_root does not match the votes served for block {h - 1}")
        finality, short = self._count(prev, votes, h)
        if changed and short:
            raise LightError(f"block {h}: the set changes, but its votes do not justify block {h - 1} ({short})")
        return {"header": header, "hash": bh, "set": members, "finality": finality, "interval": interval,
                "votes": entry.get("votes", []), "short": short}

    def _count(self, prev, votes, h):
        """(J(h) and F(h), None) when block h's votes justify block h - 1,
        else (those of h - 1, "k of q"); LightError when a vote is one a
        node refuses (Finality votes and evidence, Justified and finalized)."""
        before = prev["finality"]
        keys = _active_keys(prev["set"])  # the set in effect for h - 1
        if h == 1 and votes:
            raise LightError("block 1: carries votes (genesis needs none)")
        if len(votes) > len(keys):
            raise LightError(f"block {h}: more votes than authorities")
        previous = ""
        for v in votes:
            if type(v) is not dict or set(v) != set(VOTE_FIELDS) or type(v["voter"]) is not str:
                raise LightError(f"block {h}: a malformed vote")
            if v["voter"] <= previous:
                raise LightError(f"block {h}: votes not sorted by voter, each voter once")
            previous = v["voter"]
            if v["voter"] not in keys:
                raise LightError(f"block {h}: a vote by {v['voter']}, no non-jailed authority of block {h - 1}")
            if (v["height"], v["hash"]) != (h - 1, prev["hash"]):
                raise LightError(f"block {h}: a vote whose target is not block {h - 1}")
            if {"height": v["source_height"], "hash": v["source_hash"]} != before["justified"]:
                raise LightError(f"block {h}: a vote whose source is not the latest justified block")
            if not vote_ok(v, keys[v["voter"]], self.chain_id):
                raise LightError(f"block {h}: a vote not signed by its voter")
        q = quorum(len(keys))
        if not votes or len(votes) < q:
            return before, f"{len(votes)} of {q}"
        j = before["justified"]
        finalized = j if j["height"] == h - 2 else before["finalized"]
        return {"justified": {"height": h - 1, "hash": prev["hash"]}, "finalized": finalized}, None

    # -- state proofs -----------------------------------------------------------
    def _prove(self, point, ns, key, what, where):
        """The value of (ns, key) in the state block point left (None:
        absent), proven against point's verified state_root."""
        height = point["header"]["height"]
        a = self.fetch(f"/rpc/getProof/{ns}/{percent_encode(key)}?height={height}")

        def check():
            if (a["height"], a["block_hash"]) != (height, point["hash"]):
                raise LightError(f"{what} proof is for block {a['height']}, not {where}")
            if (a["namespace"], a["key"]) != (ns, key):
                raise LightError(f"{what} proof is for {a['namespace']}/{a['key']}, not {ns}/{key}")
            value, raw = a["value"], a["value_cbor"]
            if (raw is None) != (value is None) or (raw is not None and cbor(value).hex() != raw):
                raise LightError(f"{what} proof: value_cbor is not the canonical bytes of value")
            try:
                ok = check_state_proof(point["header"]["state_root"], ns, key, raw, a["proof"])
            except (TypeError, ValueError, IndexError):
                ok = False
            if not ok:
                raise LightError(f"{what} proof does not match state_root of {where}")
            return value
        return _malformed("getProof", check)

    def prove(self, ns, key, what=None):
        """The value of (ns, key) in the verified finalized state (None: proven absent)."""
        return self._prove(self.final, ns, key, what or f"{ns}/{key}", f"finalized block {self.height}")

    def balance(self, addr):
        """(balance, nonce) of addr in the verified finalized state."""
        value = self.prove("acct", addr, "balance")
        if value is None:
            return 0, 0
        if type(value) is not list or len(value) != 2 or not all(type(x) is int for x in value):
            raise LightError("balance proof: the value is not [balance, nonce]")
        return value[0], value[1]

    # -- transaction proofs -----------------------------------------------------
    def tx(self, txh):
        """A transaction proven in a block at or below the verified finalized
        one: {"tx", "attestation", "height", "block_hash", "index"}."""
        a = self.fetch(f"/rpc/getTxProof/{txh}")
        return _malformed("getTxProof", lambda: self._check_tx(txh, a))

    def _check_tx(self, txh, a):
        tx, att = a["tx"], a.get("attestation")
        if a["tx_hash"] != txh or tx_hash(tx, self.chain_id) != txh:
            raise LightError(f"tx proof: the transaction does not hash to {txh}")
        if (tx["type"] == CLAIM) != (att is not None):
            raise LightError("tx proof: an attestation goes with a claim, and only with one")
        leaf_hex = leaf_input(txh, att)
        if a["leaf"] != leaf_hex:
            raise LightError("tx proof: leaf is not the transaction's leaf input")
        header, height = a["header"], a["height"]
        if type(header) is not dict or set(header) != set(HEADER_FIELDS) or header["height"] != height \
                or block_hash(header) != a["block_hash"]:
            raise LightError(f"tx proof: the header does not hash to block_hash {a['block_hash']}")
        if height > self.height:
            raise LightError(f"tx proof: block {height} is above finalized block {self.height}")
        if not tx_branch_ok(leaf_hex, a["index"], a["count"], a["branch"], header["tx_root"]):
            raise LightError(f"tx proof does not match tx_root of block {height}")
        self._link(height, a["block_hash"])
        return {"tx": tx, "attestation": att, "height": height, "block_hash": a["block_hash"], "index": a["index"]}

    def _link(self, height, bh):
        """Block height (hash bh) is linked by parent hashes to the verified
        finalized block (headers from its height up)."""
        top, h, prev = self.height, height, None
        while h <= top:
            entries, _ = self._headers(h, min(HEADERS_PAGE, top - h + 1))
            if not entries:
                raise LightError(f"getHeaders: no header {h} below finalized block {top}")
            for e in entries[:top - h + 1]:
                header = e["header"]
                if header["height"] != h or (prev is not None and header["parent"] != prev):
                    raise LightError(f"header {h}: not linked to block {h - 1} by its parent hash")
                prev = block_hash(header)
                if h == height and prev != bh:
                    raise LightError(f"block {height}: not the block the node links to finalized block {top}")
                h += 1
        if prev != self.final["hash"]:
            raise LightError(f"block {height}: not linked to finalized block {top}")

    # -- a compute receipt ----------------------------------------------------------
    def receipt(self, rid):
        """The receipt rid verified as the section Light clients says; its
        rcpt record."""
        rec = self.prove("rcpt", rid, "receipt")
        if rec is None:
            raise LightError(f"receipt {rid}: absent from finalized block {self.height}")
        claim = self.tx(rec["tx"])
        w = claim["tx"]
        p = w["payload"]
        if w["type"] != CLAIM or claim["height"] != rec["height"]:
            raise LightError(f"receipt {rid}: {rec['tx']} is no claim included at height {rec['height']}")
        expected = {"receipt_id": rid, "job_id": rec["job_id"], "client_addr": rec["client"],
                    "miner_addr": rec["miner"], "compute_units": rec["compute_units"], "price": rec["price"],
                    "client_payment_tx": rec["payment_tx"]}
        if any(p.get(k) != v for k, v in expected.items()):
            raise LightError(f"receipt {rid}: the claim's fields do not match the record")
        coordinator = self.prove("param", "coordinator", "coordinator")
        if coordinator is None:
            raise LightError("param/coordinator: absent from the finalized state")
        problem = attestation_problem(claim["attestation"], p, coordinator, self.chain_id)
        if problem:
            raise LightError(f"receipt {rid}: attestation: {problem}")
        if not miner_sig_ok(p, self.chain_id):
            raise LightError(f"receipt {rid}: bad miner_sig")
        pay = self.prove("pay", p["client_payment_tx"], "payment")
        if pay is None or pay.get("claimed") != rid:
            raise LightError(f"receipt {rid}: payment {p['client_payment_tx']} is not claimed by it")
        return rec


# --------------------------------------------------------------------------
# A coordinator of our own ("The attestation"): POST /attest/receipt.


class Coordinator(Resource):
    """Signs attestations with its own key, as the document says.

    ``jobs`` are the jobs it knows; those in ``unpaid`` are known but not
    paid; a job attested for one receipt and asked about for another is
    double spent.  ``paid_by`` maps a job to the payment that paid it: the
    answer for that job names that payment, whatever the request named.
    ``mode`` makes it misbehave: "wrong_key" (signs with another key but
    names the right address), "wrong_address" (signs with another key and
    names that key's address), "no_payment" (answers without
    client_payment_tx), "http_error" (answers 503), "garbage" (answers 200
    with a body that is not JSON), "hang" (never answers).
    """

    isLeaf = True

    def __init__(self, seed, chain_id, jobs=(), unpaid=()):
        super().__init__()
        self.seed = seed
        self.chain_id = chain_id
        self.address = keypair(seed)[2]
        self.public_key = keypair(seed)[1].hex()
        self.jobs = set(jobs)
        self.unpaid = set(unpaid)
        self.attested = {}  # job_id -> receipt_id
        self.paid_by = {}  # job_id -> client_payment_tx
        self.requests = []
        self.mode = "ok"
        self.wrong_seed = hashlib.sha256(b"not the coordinator").digest()
        self.transports = set()
        self.hanging = []

    def params_entry(self):
        """What genesis params.coordinator holds for this coordinator."""
        return {"address": self.address, "public_key": self.public_key}

    def answer(self, request):
        job = request["job_id"]
        exists = job in self.jobs
        first = self.attested.setdefault(job, request["receipt_id"]) if exists else None
        flags = {"exists": exists, "paid": exists and job not in self.unpaid,
                 "not_double_spent": exists and first == request["receipt_id"]}
        request = dict(request, client_payment_tx=self.paid_by.get(job, request["client_payment_tx"]))
        if self.mode == "no_payment":
            del request["client_payment_tx"]
        if self.mode == "wrong_key":
            return sign_attestation(self.wrong_seed, self.chain_id, request, coordinator=self.address, **flags)
        if self.mode == "wrong_address":
            return sign_attestation(self.wrong_seed, self.chain_id, request, **flags)
        return sign_attestation(self.seed, self.chain_id, request, **flags)

    def _reply(self, request, status, obj):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(obj).encode()

    def render_POST(self, request):
        self.transports.add(request.channel.transport)
        if request.path != b"/attest/receipt":
            return self._reply(request, 404, {"error": "no such route"})
        try:
            body = json.loads(request.content.read())
        except ValueError:
            return self._reply(request, 400, {"error": "not JSON"})
        if type(body) is not dict or set(body) != set(REQUEST_FIELDS):
            return self._reply(request, 400, {"error": "an attestation request has exactly " + ", ".join(REQUEST_FIELDS)})
        self.requests.append(body)
        if self.mode == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if self.mode == "http_error":
            return self._reply(request, 503, {"error": "unavailable"})
        if self.mode == "garbage":
            request.setHeader(b"content-type", b"text/plain")
            return b"this is not JSON"
        return self._reply(request, 200, self.answer(body))

    def drop_connections(self):
        for t in list(self.transports):
            t.abortConnection()
        self.transports.clear()
