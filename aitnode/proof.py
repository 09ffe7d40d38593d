"""State proofs (docs/protocol.md 11.3): their binary form and how to
verify one against a state root.  Needs nothing but hashlib, so a light
client can use it alone; jmt.prove makes the proofs.
"""

import hashlib

EMPTY = bytes(32)
MAX_DEPTH = 256  # bits of a key hash

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof that does not verify, or is not a proof at all."""


def leaf_hash(kh, vh):
    return _sha256(b"\x00" + kh + vh).digest()


def inner_hash(left, right):
    return _sha256(b"\x01" + left + right).digest()


def bit(kh, i):
    return (kh[i >> 3] >> (7 - (i & 7))) & 1


def encode_proof(leaf, siblings):
    """The proof's binary form (docs/protocol.md 11.3)."""
    n = len(siblings)
    if n > MAX_DEPTH:
        raise ValueError("a proof has at most 256 siblings")
    bitmap = bytearray((n + 7) // 8)
    body = []
    for i, s in enumerate(siblings):
        if s != EMPTY:
            bitmap[i >> 3] |= 0x80 >> (i & 7)
            body.append(s)
    head = b"\x00" if leaf is None else b"\x01" + leaf[0] + leaf[1]
    return head + n.to_bytes(2, "big") + bytes(bitmap) + b"".join(body)


def decode_proof(data):
    """(leaf or None, siblings) from a proof's binary form; ProofError if
    it is not exactly one well-formed proof."""
    if type(data) is not bytes or not data or data[0] not in (0, 1):
        raise ProofError("the proof is malformed (first byte)")
    pos = 1
    leaf = None
    if data[0] == 1:
        if len(data) < 65:
            raise ProofError("the proof is malformed (leaf)")
        leaf = (data[1:33], data[33:65])
        pos = 65
    if len(data) < pos + 2:
        raise ProofError("the proof is malformed (length)")
    n = int.from_bytes(data[pos:pos + 2], "big")
    pos += 2
    if n > MAX_DEPTH:
        raise ProofError("the proof has more than 256 siblings")
    nb = (n + 7) // 8
    bitmap = data[pos:pos + nb]
    if len(bitmap) != nb:
        raise ProofError("the proof is malformed (bitmap)")
    if n % 8 and bitmap[-1] & (0xff >> (n % 8)):
        raise ProofError("the proof is malformed (bitmap padding)")
    pos += nb
    siblings = []
    for i in range(n):
        if bitmap[i >> 3] & (0x80 >> (i & 7)):
            s = data[pos:pos + 32]
            if len(s) != 32:
                raise ProofError("the proof is malformed (truncated)")
            siblings.append(s)
            pos += 32
        else:
            siblings.append(EMPTY)
    if pos != len(data):
        raise ProofError("the proof is malformed (trailing bytes)")
    return leaf, siblings


def common_prefix_bits(a, b):
    for i in range(len(a)):
        x = a[i] ^ b[i]
        if x:
            return i * 8 + 8 - x.bit_length()
    return len(a) * 8


def verify_proof(root, kh, vh, proof):
    """Check that the tree with root (32 bytes) maps key hash kh to value
    hash vh, or holds no kh when vh is None.  Raises ProofError."""
    leaf, siblings = decode_proof(proof)
    n = len(siblings)
    if vh is not None:
        if leaf is None:
            raise ProofError("the proof shows the key absent")
        if leaf[0] != kh:
            raise ProofError("the proof is for another key")
        if leaf[1] != vh:
            raise ProofError("the value does not match the proof")
    elif leaf is not None:
        if leaf[0] == kh:
            raise ProofError("the proof shows the key present")
        if common_prefix_bits(leaf[0], kh) < n:
            raise ProofError("the proof's leaf does not cover the key")
    h = EMPTY if leaf is None else leaf_hash(*leaf)
    for i in range(n - 1, -1, -1):
        s = siblings[i]
        h = _sha256(b"\x01" + s + h).digest() if bit(kh, i) else _sha256(b"\x01" + h + s).digest()
    if h != root:
        raise ProofError("the proof does not lead to the state root")
