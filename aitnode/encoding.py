"""Canonical bytes and hashes.

Consensus values are text, integers in [0, 2**64), booleans, lists and
maps with text keys.  Their canonical bytes are CBOR core deterministic
encoding (RFC 8949 section 4.2.1), which for this value space is exactly
``cbor2.dumps(value, canonical=True)``.
"""

import hashlib

import cbor2

from aitnode.errors import AitError

U64 = 2**64
ZERO_HASH = "0" * 64
_HEX = frozenset("0123456789abcdef")


def canonical(value):
    """The canonical CBOR bytes of a consensus value (checked first)."""
    check_value(value)
    return cbor2.dumps(value, canonical=True)


def canonical_unchecked(value):
    """Canonical bytes of a value already known to be well formed."""
    return cbor2.dumps(value, canonical=True)


def sha256(data):
    return hashlib.sha256(data).digest()


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def hash_value(value):
    """sha256 of the canonical bytes, as 64 lowercase hex characters."""
    return sha256_hex(canonical(value))


def check_text(value, where):
    """Text must have a UTF-8 form: JSON's "\\ud800" decodes to a lone
    surrogate, which has none (and would fail in every encoder)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise AitError("bad_text", f"{where}: text holds a lone UTF-16 surrogate (not a Unicode character)")


def check_value(value, where="value"):
    """Refuse anything outside the consensus value space."""
    t = type(value)
    if t is str:
        check_text(value, where)
        return
    if t is bool:
        return
    if t is int:
        if not 0 <= value < U64:
            raise AitError(
                "number_out_of_range",
                f"{where}: integers must lie in [0, 2**64), got {value}",
            )
        return
    if t is list:
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]")
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise AitError("wrong_type", f"{where}: map keys must be text")
            check_text(k, f"{where}: a map key")
            check_value(v, f"{where}.{k}")
        return
    if t is float:
        raise AitError("float_not_allowed", f"{where}: floats are not allowed, use an integer")
    if value is None:
        raise AitError("null_not_allowed", f"{where}: null is not allowed")
    raise AitError("wrong_type", f"{where}: {t.__name__} is not a consensus value")


def is_hex(text, nbytes=None):
    """True when text is lowercase hex (of exactly nbytes bytes, if given)."""
    if type(text) is not str or len(text) % 2:
        return False
    if nbytes is not None and len(text) != 2 * nbytes:
        return False
    return _HEX.issuperset(text)


def parse_hex(text, nbytes, field):
    if type(text) is not str:
        raise AitError("wrong_type", f"{field} must be a hex string")
    if not is_hex(text, nbytes):
        raise AitError(
            "bad_hex",
            f"{field} must be {2 * nbytes} lowercase hex characters",
        )
    return bytes.fromhex(text)


def merkle_root(hashes_hex):
    """Merkle root over 32-byte hashes given in hex, in order.

    Leaves are sha256(0x00 || h) and inner nodes sha256(0x01 || l || r);
    an odd node at the end of a level is carried up unchanged.  The root of
    no leaves is 64 zeros.
    """
    if not hashes_hex:
        return ZERO_HASH
    level = [sha256(b"\x00" + bytes.fromhex(h)) for h in hashes_hex]
    while len(level) > 1:
        nxt = [sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def merkle_levels(hashes_hex):
    """Every level of merkle_root's tree, leaves first, root last (raw
    bytes); [] for no leaves.  merkle_branch reads a branch off them."""
    if not hashes_hex:
        return []
    level = [sha256(b"\x00" + bytes.fromhex(h)) for h in hashes_hex]
    levels = [level]
    while len(level) > 1:
        nxt = [sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        levels.append(level)
    return levels


def merkle_branch(levels, index):
    """The siblings (hex) on the way from leaf index to the root of
    merkle_levels' tree: one per level where the node is not the odd last
    one carried up unchanged (docs/protocol.md 12, getTxProof)."""
    if not 0 <= index < len(levels[0]):
        raise IndexError(f"leaf {index} of {len(levels[0])}")
    out = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            out.append(level[sibling].hex())
        index //= 2
    return out


def verify_merkle_branch(leaf_hex, index, count, branch, root_hex):
    """True when branch (hex siblings, as merkle_branch gives them) leads
    from leaf input leaf_hex at index of count leaves to root_hex."""
    if type(index) is not int or type(count) is not int or not 0 <= index < count or type(branch) is not list:
        return False
    if not is_hex(leaf_hex, 32) or not is_hex(root_hex, 32) or not all(is_hex(s, 32) for s in branch):
        return False
    h = sha256(b"\x00" + bytes.fromhex(leaf_hex))
    used = 0
    while count > 1:
        if not (index == count - 1 and count % 2):  # the odd last node is carried up unchanged
            if used == len(branch):
                return False
            s = bytes.fromhex(branch[used])
            used += 1
            h = sha256(b"\x01" + h + s) if index % 2 == 0 else sha256(b"\x01" + s + h)
        index //= 2
        count = (count + 1) // 2
    return used == len(branch) and h.hex() == root_hex


# -- validators of decoded JSON values ------------------------------------

MAX_TEXT = 256  # bytes of UTF-8


def require_int(value, field, minimum=0, maximum=U64 - 1):
    if type(value) is not int:
        if type(value) is float:
            raise AitError("float_not_allowed", f"{field} must be an integer, not a float")
        raise AitError("wrong_type", f"{field} must be an integer")
    if value < minimum or value > maximum:
        raise AitError("number_out_of_range", f"{field} must be between {minimum} and {maximum}")
    return value


def require_text(value, field, max_bytes=MAX_TEXT):
    """Non-empty text of at most max_bytes bytes in UTF-8 (the bytes, not
    the characters, bound what a value costs to hash, store and send)."""
    if type(value) is not str:
        raise AitError("wrong_type", f"{field} must be a string")
    check_text(value, field)
    size = len(value) if value.isascii() else len(value.encode("utf-8"))
    if not 0 < size <= max_bytes:
        raise AitError("bad_text", f"{field} must be 1 to {max_bytes} bytes of UTF-8, got {size}")
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
