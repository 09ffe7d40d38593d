"""Transactions: strict parsing of the wire form, hashing and signing.

Wire form (JSON): ``{"type", "sender", "nonce", "fee", "payload",
"pubkey", "sig"}`` plus an optional ``"chain_id"`` that must equal the
node's.  The signed body is ``{"chain_id", "type", "sender", "nonce",
"fee", "payload"}``; sign bytes are sha256(canonical(body)); the hash of
the transaction is sha256(canonical(body + pubkey + sig)), the last two
as lowercase hex strings.  See docs/protocol.md.
"""

import cbor2

from aitnode import consensus, crypto, receipts
from aitnode.encoding import (
    canonical, canonical_unchecked, check_value, parse_hex, require_fields, require_int, sha256,
)
from aitnode.errors import AitError
from aitnode.params import check_update

WIRE_FIELDS = frozenset(("type", "sender", "nonce", "fee", "payload", "pubkey", "sig", "chain_id"))

_dumps = cbor2.dumps  # for text and integers, plain CBOR is canonical


def _amount_payload(payload):
    require_fields(payload, ("to", "amount"), "payload")
    crypto.check_address(payload["to"], "payload.to")
    require_int(payload["amount"], "payload.amount", minimum=1)


def _param_payload(payload):
    require_fields(payload, ("key", "value"), "payload")
    check_update(payload["key"], payload["value"])


# Every transaction type and its payload check: the one table of types.
_PAYLOADS = {
    "TRANSFER": _amount_payload,
    "MINT": _amount_payload,
    "PARAM_UPDATE": _param_payload,
    receipts.CLAIM: receipts.validate_claim_payload,
    "AUTHORITY_UPDATE": consensus.validate_update_payload,
}
# Types only an authority may send.
AUTHORITY_TYPES = frozenset(("MINT", "PARAM_UPDATE", "AUTHORITY_UPDATE"))


def known_types():
    return sorted(_PAYLOADS)


class Transaction:
    """A parsed, well-formed transaction (its signature not yet checked)."""

    __slots__ = (
        "chain_id", "type", "sender", "nonce", "fee", "payload",
        "pubkey", "sig", "hash", "sign_hash", "payload_size", "size",
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
        self.size = len(signed)  # = len(canonical(self.to_wire())), what it takes in a block

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
