"""Keys, signatures and addresses.

Keys are ed25519 (PyNaCl).  An address is bech32 (BIP-173 checksum, not
bech32m) with hrp ``ait`` over the first 20 bytes of sha256(public key),
with no version byte.
"""

import json
import os

import nacl.bindings
import nacl.exceptions
import nacl.signing

from aitnode.encoding import parse_hex, sha256
from aitnode.errors import AitError, ConfigError, read_json_file

HRP = "ait"
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARMAP = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _gen_table():
    table = []
    for top in range(32):
        x = 0
        for i in range(5):
            if (top >> i) & 1:
                x ^= _GEN[i]
        table.append(x)
    return tuple(table)


_GEN_TABLE = _gen_table()  # the generator terms for each 5-bit top, precomputed


def _polymod(values):
    chk = 1
    table = _GEN_TABLE
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5 ^ v) ^ table[chk >> 25]
    return chk


def _hrp_expand(hrp):
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data, frombits, tobits, pad):
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value >> frombits:
            return None
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return out


def bech32_encode(hrp, data5):
    """Encode 5-bit groups with the BIP-173 checksum."""
    values = _hrp_expand(hrp) + list(data5)
    pm = _polymod(values + [0] * 6) ^ 1
    checksum = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in list(data5) + checksum)


def bech32_decode(text):
    """Decode a BIP-173 string into (hrp, 5-bit groups), or None if invalid."""
    if type(text) is not str or len(text) > 90:
        return None
    # Only characters 33 to 126: ASCII, printable, and no space.
    if not (text.isascii() and text.isprintable()) or " " in text:
        return None
    if text.lower() != text and text.upper() != text:
        return None
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        return None
    hrp = text[:pos]
    try:
        data = [_CHARMAP[c] for c in text[pos + 1 :]]
    except KeyError:
        return None
    if _polymod(_hrp_expand(hrp) + data) != 1:
        return None
    return hrp, data[:-6]


def address_from_bytes(raw20):
    return bech32_encode(HRP, _convertbits(raw20, 8, 5, True))


def address_of(pubkey):
    """The address of a 32-byte ed25519 public key."""
    return address_from_bytes(sha256(pubkey)[:20])


_address_cache = {}


def address_bytes(address, field="address"):
    """The 20 bytes behind an address; AitError bad_address if it is not one.

    Only the lowercase spelling is accepted, so an address has one form.
    """
    if type(address) is not str:
        raise AitError("wrong_type", f"{field} must be a string")
    raw = _address_cache.get(address)
    if raw is not None:
        return raw
    decoded = bech32_decode(address) if address.islower() else None
    if decoded is None or decoded[0] != HRP:
        raise AitError("bad_address", f"{field} is not a valid {HRP}1... bech32 address")
    raw = _convertbits(decoded[1], 5, 8, False)
    if raw is None or len(raw) != 20:
        raise AitError("bad_address", f"{field} must encode exactly 20 bytes")
    raw = bytes(raw)
    if len(_address_cache) > 100_000:
        _address_cache.clear()
    _address_cache[address] = raw
    return raw


def check_address(address, field="address"):
    address_bytes(address, field)
    return address


def pubkey_matches(pubkey, address):
    return sha256(pubkey)[:20] == address_bytes(address)


def verify(pubkey, sig, message):
    """True when sig is pubkey's ed25519 signature of message."""
    try:
        # sig + message is split by position, so a short sig would borrow
        # bytes from the message; and PyNaCl does not check the public key's
        # length (libsodium reads 32 bytes regardless): check both here.
        if len(sig) != 64 or len(pubkey) != 32:
            return False
        nacl.bindings.crypto_sign_open(sig + message, pubkey)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False


class KeyPair:
    """An ed25519 signing key with its public key and address."""

    def __init__(self, seed):
        self._signing = nacl.signing.SigningKey(seed)
        self.seed = bytes(seed)
        self.public_key = bytes(self._signing.verify_key)
        self.address = address_of(self.public_key)

    @classmethod
    def generate(cls):
        return cls(os.urandom(32))

    def sign(self, message):
        return self._signing.sign(message).signature

    def to_json(self):
        return {
            "address": self.address,
            "public_key": self.public_key.hex(),
            "private_key": self.seed.hex(),
        }

    def save(self, path):
        """Write the key file with mode 0600 (never readable by others)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path):
        """Read a key file; ConfigError if it is unreadable or inconsistent."""
        data = read_json_file(path, "key file")
        try:
            seed = parse_hex(data.get("private_key"), 32, "private_key")
            key = cls(seed)
        except (AitError, AttributeError):
            raise ConfigError(f"key file {path}: private_key must be 64 lowercase hex characters")
        if data.get("public_key") != key.public_key.hex():
            raise ConfigError(f"key file {path}: public_key does not match private_key")
        if data.get("address") != key.address:
            raise ConfigError(
                f"key file {path}: address {data.get('address')!r} does not match its key"
                f" (expected {key.address})"
            )
        return key
