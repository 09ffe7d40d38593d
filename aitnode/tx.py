"""Transactions: strict parsing of the wire form, hashing and signing.

Wire form (JSON): ``{"type", "sender", "nonce", "fee", "payload",
"pubkey", "sig"}`` plus an optional ``"chain_id"`` that must equal the
node's.  The signed body is ``{"chain_id", "type", "sender", "nonce",
"fee", "payload"}``; sign bytes are sha256(canonical(body)); the hash of
the transaction is sha256(canonical(body + pubkey + sig)), the last two
as lowercase hex strings.  See docs/protocol.md.
"""

import json
from itertools import accumulate

import cbor2

from aitnode import crypto
from aitnode.encoding import U64, canonical, canonical_unchecked, check_value, parse_hex, sha256
from aitnode.errors import AitError

WIRE_FIELDS = frozenset(("type", "sender", "nonce", "fee", "payload", "pubkey", "sig", "chain_id"))
MAX_TEXT = 256

_dumps = cbor2.dumps  # for text and integers, plain CBOR is canonical

# type name -> payload validator; filled by register_type().
_PAYLOADS = {}
AUTHORITY_TYPES = frozenset(("MINT", "PARAM_UPDATE"))


def register_type(name, validator):
    """Make a transaction type known; validator(payload) raises AitError."""
    _PAYLOADS[name] = validator


def known_types():
    return sorted(_PAYLOADS)


def require_int(value, field, minimum=0, maximum=U64 - 1):
    if type(value) is not int:
        if type(value) is float:
            raise AitError("float_not_allowed", f"{field} must be an integer, not a float")
        raise AitError("wrong_type", f"{field} must be an integer")
    if value < minimum or value > maximum:
        raise AitError("number_out_of_range", f"{field} must be between {minimum} and {maximum}")
    return value


def require_text(value, field, maximum=MAX_TEXT):
    if type(value) is not str:
        raise AitError("wrong_type", f"{field} must be a string")
    if not value or len(value) > maximum:
        raise AitError("bad_text", f"{field} must be 1 to {maximum} characters")
    return value


def require_fields(obj, fields, where):
    """obj must be a map with exactly these keys."""
    if type(obj) is not dict:
        raise AitError("wrong_type", f"{where} must be an object")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise AitError("missing_field", f"{where} lacks field {missing[0]!r}")
    extra = [k for k in obj if k not in fields]
    if extra:
        raise AitError("unknown_field", f"{where} has unknown field {extra[0]!r}")


def _amount_payload(payload):
    require_fields(payload, ("to", "amount"), "payload")
    crypto.check_address(payload["to"], "payload.to")
    require_int(payload["amount"], "payload.amount", minimum=1)


register_type("TRANSFER", _amount_payload)
register_type("MINT", _amount_payload)


def _param_payload(payload):
    from aitnode.params import check_update

    require_fields(payload, ("key", "value"), "payload")
    check_update(payload["key"], payload["value"])


register_type("PARAM_UPDATE", _param_payload)


class Transaction:
    """A parsed, well-formed transaction (its signature not yet checked)."""

    __slots__ = (
        "chain_id", "type", "sender", "nonce", "fee", "payload",
        "pubkey", "sig", "hash", "sign_hash", "payload_size",
    )

    def __init__(self, chain_id, type, sender, nonce, fee, payload, pubkey, sig):
        self.chain_id = chain_id
        self.type = type
        self.sender = sender
        self.nonce = nonce
        self.fee = fee
        self.payload = payload
        self.pubkey = pubkey
        self.sig = sig
        # Each field is encoded once; the two maps (the signed body, and
        # the body with pubkey and sig) are put together from those pieces
        # in canonical key order, which for these keys is:
        #   fee sig type nonce pubkey sender payload chain_id
        # (shorter keys first, then bytewise).  Equal to canonical(body),
        # and checked against it in tests/test_encoding.py.
        enc = _dumps
        p = canonical_unchecked(payload)
        fee = b"\x63fee" + enc(fee)
        mid = b"\x64type" + enc(type) + b"\x65nonce" + enc(nonce)
        tail = b"\x66sender" + enc(sender) + b"\x67payload" + p + b"\x68chain_id" + enc(chain_id)
        self.sign_hash = sha256(b"\xa6" + fee + mid + tail)
        signed = (b"\xa8" + fee + b"\x63sig" + enc(sig.hex()) + mid
                  + b"\x66pubkey" + enc(pubkey.hex()) + tail)
        self.hash = sha256(signed).hex()
        self.payload_size = len(p)

    def body(self):
        return {
            "chain_id": self.chain_id,
            "type": self.type,
            "sender": self.sender,
            "nonce": self.nonce,
            "fee": self.fee,
            "payload": self.payload,
        }

    def to_wire(self):
        """The JSON form, chain_id included (it is accepted back as is)."""
        body = self.body()
        body["pubkey"] = self.pubkey.hex()
        body["sig"] = self.sig.hex()
        return body

    def verify_signature(self):
        return crypto.verify(self.pubkey, self.sig, self.sign_hash)

    def __repr__(self):
        return f"<Transaction {self.type} {self.hash[:12]} {self.sender} #{self.nonce}>"


def parse_tx(obj, chain_id, require_sig=True):
    """Parse a wire transaction (a decoded JSON value) strictly.

    Raises AitError naming the first problem.  The signature itself is not
    checked here (see Transaction.verify_signature), only its form and that
    the public key belongs to the sender.
    """
    if type(obj) is not dict:
        raise AitError("wrong_type", "a transaction must be a JSON object")
    for k in obj:
        if k not in WIRE_FIELDS:
            raise AitError("unknown_field", f"unknown transaction field {k!r}")
    required = ("type", "sender", "nonce", "fee", "payload")
    if require_sig:
        required += ("pubkey", "sig")
    for k in required:
        if k not in obj:
            raise AitError("missing_field", f"transaction lacks field {k!r}")
    if "chain_id" in obj and obj["chain_id"] != chain_id:
        raise AitError(
            "wrong_chain",
            f"transaction is for chain {obj['chain_id']!r}, this node runs {chain_id!r}",
        )
    ttype = obj["type"]
    if type(ttype) is not str:
        raise AitError("wrong_type", "type must be a string")
    validator = _PAYLOADS.get(ttype)
    if validator is None:
        raise AitError("unknown_type", f"unknown transaction type {ttype!r}; known: {', '.join(known_types())}")
    sender = crypto.check_address(obj["sender"], "sender")
    nonce = require_int(obj["nonce"], "nonce", minimum=1)
    fee = require_int(obj["fee"], "fee")
    payload = obj["payload"]
    check_value(payload, "payload")
    validator(payload)
    if require_sig or "pubkey" in obj:
        pubkey = parse_hex(obj.get("pubkey"), 32, "pubkey")
        if not crypto.pubkey_matches(pubkey, sender):
            raise AitError("pubkey_mismatch", "pubkey does not belong to sender (sha256(pubkey)[0:20] differs)")
    else:
        pubkey = bytes(32)
    if require_sig or "sig" in obj:
        sig = parse_hex(obj.get("sig"), 64, "sig")
    else:
        sig = bytes(64)
    return Transaction(chain_id, ttype, sender, nonce, fee, payload, pubkey, sig)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise AitError("duplicate_field", f"field {k!r} appears twice")
        out[k] = v
    return out


def _no_constants(name):
    raise AitError("float_not_allowed", f"{name} is not a number this node accepts")


# Arrays and objects nested in one another at most (a transaction in a
# sendTxs list is 3 deep).  Deeper JSON would reach Python's recursion
# limit in whatever walks it next (check_value, repr in a message).
MAX_JSON_DEPTH = 64
_BRACKETS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _depth_bound(data):
    """At least the nesting depth of JSON bytes (brackets inside strings
    count too): +1 per opening and -1 per closing bracket, highest sum."""
    steps = data.translate(_BRACKETS, _NOT_BRACKETS)
    if steps.count(1) <= MAX_JSON_DEPTH:
        return 0
    return max(accumulate(memoryview(steps).cast("b")))


def _too_deep(value):
    """Whether a decoded value nests deeper than MAX_JSON_DEPTH (no recursion)."""
    level = [value]
    for _ in range(MAX_JSON_DEPTH):  # after k rounds: what lies inside k containers
        level = [c for v in level if type(v) in (list, dict) for c in (v.values() if type(v) is dict else v)]
        if not level:
            return False
    return any(type(v) in (list, dict) for v in level)


def loads_json(data):
    """Decode a request body: UTF-8 JSON, no duplicate keys, no NaN, nested
    at most MAX_JSON_DEPTH arrays and objects deep."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AitError("malformed_json", "request body is not UTF-8")
    too_deep = AitError("malformed_json", f"request body is nested too deeply (more than {MAX_JSON_DEPTH} arrays and objects)")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError as e:
        raise AitError("malformed_json", f"request body is not valid JSON: {e}")
    except RecursionError:
        raise too_deep
    if _depth_bound(data) > MAX_JSON_DEPTH and _too_deep(value):
        raise too_deep
    return value


def sign_tx(key, chain_id, ttype, nonce, fee, payload):
    """Build and sign a transaction with a crypto.KeyPair."""
    check_value(payload, "payload")
    body = {
        "chain_id": chain_id,
        "type": ttype,
        "sender": key.address,
        "nonce": nonce,
        "fee": fee,
        "payload": payload,
    }
    sig = key.sign(sha256(canonical(body)))
    return Transaction(chain_id, ttype, key.address, nonce, fee, payload, key.public_key, sig)
