"""An aitnode client written only from docs/protocol.md.

It deliberately imports nothing from the ``aitnode`` package: its
canonical CBOR, bech32, transaction signing and hashing, fee rule, Merkle
root, state root and genesis derivation are re-implemented here from the
document, so that a test can show that the document is enough to talk to
a node (tests/test_independent_client.py).  Dependencies: hashlib and
PyNaCl's ``nacl.signing`` for Ed25519.
"""

import hashlib

import nacl.signing

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


def _to_5bit(data):
    acc = bits = 0
    out = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def _from_5bit(groups):
    acc = bits = 0
    out = []
    for g in groups:
        acc = (acc << 5) | g
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise ValueError("bad padding")
    return bytes(out)


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

AUTHORITY_TYPES = ("MINT", "PARAM_UPDATE")


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
# State root (section 11) and genesis (section 9)

ACC_BYTES = 256
ACC_MOD = 2**2048

PARAM_DEFAULTS = {
    "base_fee": 10,
    "fee_per_byte": 1,
    "mint_per_unit": 1000,
    "coordinator_ratio_bps": 500,
    "treasury_ratio_bps": 0,
    "max_block_txs": 10000,
    "faucet": False,
    # escrow, treasury, coordinator: unset unless genesis sets them
}


def leaf(ns, key, value):
    return int.from_bytes(hashlib.shake_256(cbor([ns, key, value])).digest(ACC_BYTES), "big")


def accumulator(entries):
    return sum(leaf(*e) for e in entries) % ACC_MOD


def state_root(entries):
    """entries: iterable of (namespace, key, value)."""
    return hashlib.sha256(accumulator(entries).to_bytes(ACC_BYTES, "big")).hexdigest()


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
    entries.append(["chain", "authorities", [{"address": a["address"], "public_key": a["public_key"]} for a in doc["authorities"]]])
    entries.append(["chain", "supply", {"genesis": total, "faucet": 0, "receipts": 0, "coordinator": 0, "treasury": 0}])
    return entries


def genesis_header(doc):
    return {
        "chain_id": doc["chain_id"],
        "parent": ZERO_HASH,
        "height": 0,
        "timestamp": doc["timestamp"],
        "proposer": "",
        "tx_root": ZERO_HASH,
        "state_root": state_root(genesis_entries(doc)),
    }


def block_hash(header):
    return hash_hex(header)


# --------------------------------------------------------------------------
# A small state machine for TRANSFER and MINT (sections 6, 8, 10.2),
# enough to follow a block from its parent's state.


class State:
    def __init__(self, entries):
        self.entries = {(ns, key): value for ns, key, value in entries}

    def account(self, addr):
        return tuple(self.entries.get(("acct", addr), [0, 0]))

    def set_account(self, addr, balance, nonce):
        if balance == 0 and nonce == 0:
            self.entries.pop(("acct", addr), None)
        else:
            self.entries[("acct", addr)] = [balance, nonce]

    def params(self):
        return {key: value for (ns, key), value in self.entries.items() if ns == "param"}

    def authorities(self):
        return {a["address"] for a in self.entries[("chain", "authorities")]}

    def apply(self, wire):
        """Apply one transaction; return its fee (ValueError if it does not apply)."""
        sender = wire["sender"]
        balance, nonce = self.account(sender)
        if wire["nonce"] != nonce + 1:
            raise ValueError("wrong nonce")
        if wire["fee"] < min_fee(self.params(), wire["payload"], wire["type"]):
            raise ValueError("fee too low")
        to, amount = wire["payload"]["to"], wire["payload"]["amount"]
        if wire["type"] == "TRANSFER":
            if balance < amount + wire["fee"]:
                raise ValueError("insufficient balance")
            self.set_account(sender, balance - amount - wire["fee"], nonce + 1)
        elif wire["type"] == "MINT":
            if sender not in self.authorities() or not self.params().get("faucet"):
                raise ValueError("MINT not allowed")
            if balance < wire["fee"]:
                raise ValueError("insufficient balance")
            self.set_account(sender, balance - wire["fee"], nonce + 1)
            supply = dict(self.entries[("chain", "supply")])
            supply["faucet"] += amount
            self.entries[("chain", "supply")] = supply
        else:
            raise ValueError("this client follows TRANSFER and MINT only")
        to_balance, to_nonce = self.account(to)
        self.set_account(to, to_balance + amount, to_nonce)
        return wire["fee"]

    def apply_block(self, wires, proposer):
        fees = sum(self.apply(w) for w in wires)
        if fees:
            balance, nonce = self.account(proposer)
            self.set_account(proposer, balance + fees, nonce)

    def as_entries(self):
        return [[ns, key, value] for (ns, key), value in self.entries.items()]

    def root(self):
        return state_root(self.as_entries())
