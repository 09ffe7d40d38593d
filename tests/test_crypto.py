"""Tests for aitnode.crypto: ed25519 (RFC 8032), bech32 (BIP-173),
addresses and key files."""

import hashlib
import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from aitnode import crypto
from aitnode.crypto import KeyPair
from aitnode.errors import AitError, ConfigError

# RFC 8032 section 7.1 (Ed25519): (secret key, public key, message, signature)
RFC8032_VECTORS = {
    "TEST 1": (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    "TEST 2": (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    "TEST 3": (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    "TEST SHA(abc)": (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
}


def _flip(data, index, bit=0):
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


class Ed25519Tests(SynchronousTestCase):
    def test_sha_abc_message_is_sha512_of_abc(self):
        message = RFC8032_VECTORS["TEST SHA(abc)"][2]
        self.assertEqual(message, hashlib.sha512(b"abc").hexdigest())

    def test_public_keys(self):
        for name, (sk, pk, _msg, _sig) in RFC8032_VECTORS.items():
            key = KeyPair(bytes.fromhex(sk))
            self.assertEqual(key.public_key.hex(), pk, name)
            self.assertEqual(key.seed, bytes.fromhex(sk), name)

    def test_signatures(self):
        for name, (sk, _pk, msg, sig) in RFC8032_VECTORS.items():
            key = KeyPair(bytes.fromhex(sk))
            self.assertEqual(key.sign(bytes.fromhex(msg)).hex(), sig, name)

    def test_verify_vectors(self):
        for name, (_sk, pk, msg, sig) in RFC8032_VECTORS.items():
            self.assertIs(
                crypto.verify(bytes.fromhex(pk), bytes.fromhex(sig), bytes.fromhex(msg)),
                True,
                name,
            )

    def test_verify_flipped_signature_bit(self):
        _sk, pk, msg, sig = RFC8032_VECTORS["TEST 3"]
        pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        for index in (0, 31, 32, 63):
            self.assertIs(crypto.verify(pk, _flip(sig, index), msg), False, index)

    def test_verify_flipped_message_bit(self):
        _sk, pk, msg, sig = RFC8032_VECTORS["TEST 3"]
        pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        self.assertIs(crypto.verify(pk, sig, _flip(msg, 0)), False)
        self.assertIs(crypto.verify(pk, sig, _flip(msg, 1, 7)), False)
        self.assertIs(crypto.verify(pk, sig, msg + b"\x00"), False)

    def test_verify_wrong_key(self):
        _sk, _pk, msg, sig = RFC8032_VECTORS["TEST 2"]
        other_pk = bytes.fromhex(RFC8032_VECTORS["TEST 1"][1])
        self.assertIs(crypto.verify(other_pk, bytes.fromhex(sig), bytes.fromhex(msg)), False)

    def test_verify_wrong_lengths(self):
        _sk, pk, msg, sig = RFC8032_VECTORS["TEST 2"]
        pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        self.assertIs(crypto.verify(pk, sig[:63], msg), False)
        self.assertIs(crypto.verify(pk, sig + b"\x00", msg), False)
        self.assertIs(crypto.verify(pk, b"", msg), False)
        self.assertIs(crypto.verify(pk[:31], sig, msg), False)
        self.assertIs(crypto.verify(pk + b"\x00", sig, msg), False)

    def test_verify_short_sig_cannot_borrow_from_message(self):
        # sig[:63] with the last signature byte moved into the message gives
        # the same concatenation; it must still be refused.
        _sk, pk, msg, sig = RFC8032_VECTORS["TEST 2"]
        pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        self.assertIs(crypto.verify(pk, sig[:63], sig[63:] + msg), False)

    def test_verify_wrong_types(self):
        _sk, pk, msg, sig = RFC8032_VECTORS["TEST 1"]
        self.assertIs(crypto.verify(bytes.fromhex(pk), None, b""), False)
        self.assertIs(crypto.verify(None, bytes.fromhex(sig), b""), False)

    def test_sign_then_verify(self):
        key = KeyPair(bytes([7]) * 32)
        sig = key.sign(b"a message")
        self.assertEqual(len(sig), 64)
        self.assertIs(crypto.verify(key.public_key, sig, b"a message"), True)
        self.assertIs(crypto.verify(key.public_key, sig, b"a messagf"), False)

    def test_generate_is_random(self):
        a, b = KeyPair.generate(), KeyPair.generate()
        self.assertEqual(len(a.seed), 32)
        self.assertNotEqual(a.seed, b.seed)
        self.assertEqual(a.public_key, KeyPair(a.seed).public_key)


# BIP-173 test vectors.
BECH32_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",  # 90 characters, the maximum
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]

BECH32_INVALID = [
    "\x201nwldj5",  # HRP character out of range
    "\x7f1axkwrx",  # HRP character out of range
    "\x801eym55h",  # HRP character out of range
    # overall max length exceeded
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",  # no separator character
    "1pzry9x0s0muk",  # empty HRP
    "x1b4n0q5v",  # invalid data character
    "li1dgmt3",  # too short checksum
    "de1lg7wt\xff",  # invalid character in checksum
    "A1G7SGD8",  # checksum calculated with uppercase form of HRP
    "10a06t8",  # empty HRP
    "1qzzfhee",  # empty HRP
]


class Bech32Tests(SynchronousTestCase):
    def test_valid_decode_and_reencode(self):
        for text in BECH32_VALID:
            decoded = crypto.bech32_decode(text)
            self.assertIsNot(decoded, None, text)
            hrp, data = decoded
            self.assertEqual(hrp, text.lower()[: text.lower().rfind("1")], text)
            self.assertEqual(crypto.bech32_encode(hrp, data), text.lower(), text)

    def test_valid_decoded_values(self):
        self.assertEqual(crypto.bech32_decode("A12UEL5L"), ("a", []))
        self.assertEqual(crypto.bech32_decode("a12uel5l"), ("a", []))
        self.assertEqual(crypto.bech32_decode("?1ezyfcl"), ("?", []))
        hrp, data = crypto.bech32_decode("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw")
        self.assertEqual(hrp, "abcdef")
        self.assertEqual(data, list(range(32)))
        self.assertEqual(len(BECH32_VALID[4]), 90)
        hrp, data = crypto.bech32_decode(BECH32_VALID[4])
        self.assertEqual(hrp, "1")
        self.assertEqual(data, [0] * 82)

    def test_invalid(self):
        # The over-long vector has a valid checksum: only the length rule refuses it.
        too_long = BECH32_INVALID[3]
        self.assertEqual(len(too_long), 91)
        hrp, rest = too_long.rsplit("1", 1)
        values = crypto._hrp_expand(hrp) + [crypto._CHARMAP[c] for c in rest]
        self.assertEqual(crypto._polymod(values), 1)
        for text in BECH32_INVALID:
            self.assertIs(crypto.bech32_decode(text), None, ascii(text))

    def test_mixed_case_invalid(self):
        self.assertIs(crypto.bech32_decode("A12uel5l"), None)

    def test_non_string_invalid(self):
        self.assertIs(crypto.bech32_decode(b"a12uel5l"), None)
        self.assertIs(crypto.bech32_decode(None), None)


class AddressTests(SynchronousTestCase):
    def setUp(self):
        self.key = KeyPair(bytes([1]) * 32)
        self.raw = hashlib.sha256(self.key.public_key).digest()[:20]

    def assertBadAddress(self, address):
        e = self.assertRaises(AitError, crypto.address_bytes, address)
        self.assertEqual(e.code, "bad_address", ascii(address))
        e = self.assertRaises(AitError, crypto.check_address, address)
        self.assertEqual(e.code, "bad_address", ascii(address))

    def test_round_trip(self):
        for i in range(1, 6):
            key = KeyPair(bytes([i]) * 32)
            address = crypto.address_of(key.public_key)
            self.assertEqual(key.address, address)
            self.assertTrue(address.startswith("ait1"))
            self.assertEqual(len(address), 3 + 1 + 32 + 6)
            self.assertEqual(address, address.lower())
            self.assertEqual(
                crypto.address_bytes(address),
                hashlib.sha256(key.public_key).digest()[:20],
            )
            self.assertEqual(crypto.check_address(address), address)

    def test_no_version_byte(self):
        # The data part is exactly the 20 hash bytes, regrouped into 5 bits.
        hrp, data = crypto.bech32_decode(self.key.address)
        self.assertEqual(hrp, "ait")
        bits = "".join(format(d, "05b") for d in data)
        self.assertEqual(int(bits, 2).to_bytes(20, "big"), self.raw)

    def test_address_from_bytes(self):
        self.assertEqual(crypto.address_from_bytes(self.raw), self.key.address)

    def test_pubkey_matches(self):
        other = KeyPair(bytes([2]) * 32)
        self.assertIs(crypto.pubkey_matches(self.key.public_key, self.key.address), True)
        self.assertIs(crypto.pubkey_matches(other.public_key, self.key.address), False)

    def test_uppercase_refused(self):
        self.assertIsNot(crypto.bech32_decode(self.key.address.upper()), None)
        self.assertBadAddress(self.key.address.upper())

    def test_mixed_case_refused(self):
        address = self.key.address
        self.assertBadAddress(address[:10] + address[10:].upper())
        self.assertBadAddress("AIT" + address[3:])

    def test_wrong_hrp_refused(self):
        data = crypto.bech32_decode(self.key.address)[1]
        self.assertBadAddress(crypto.bech32_encode("bc", data))
        self.assertBadAddress(crypto.bech32_encode("aiu", data))

    def test_wrong_length_refused(self):
        for raw in (self.raw[:19], self.raw + b"\x00", b"", bytes(32)):
            data = crypto._convertbits(raw, 8, 5, True)
            address = crypto.bech32_encode("ait", data)
            self.assertIsNot(crypto.bech32_decode(address), None)
            self.assertBadAddress(address)

    def test_bad_checksum_refused(self):
        address = self.key.address
        last = "q" if address[-1] != "q" else "p"
        self.assertBadAddress(address[:-1] + last)
        self.assertBadAddress(address[:5] + ("q" if address[5] != "q" else "p") + address[6:])

    def test_garbage_refused(self):
        for text in ("", "ait1", "ait", "not an address", self.key.public_key.hex()):
            self.assertBadAddress(text)

    def test_non_string(self):
        for value in (None, 1, b"ait1", ["ait1"], {"a": 1}):
            e = self.assertRaises(AitError, crypto.address_bytes, value, "sender")
            self.assertEqual(e.code, "wrong_type")
            self.assertIn("sender", e.message)


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.key = KeyPair(bytes([3]) * 32)
        self.path = self.mktemp()

    def test_save_mode_and_contents(self):
        self.key.save(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            data = json.load(f)
        self.assertEqual(
            data,
            {
                "address": self.key.address,
                "public_key": self.key.public_key.hex(),
                "private_key": (bytes([3]) * 32).hex(),
            },
        )

    def test_save_existing_file_becomes_0600(self):
        with open(self.path, "w") as f:
            f.write("old")
        os.chmod(self.path, 0o644)
        self.key.save(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(KeyPair.load(self.path).seed, self.key.seed)

    def test_load_round_trip(self):
        self.key.save(self.path)
        loaded = KeyPair.load(self.path)
        self.assertEqual(loaded.seed, self.key.seed)
        self.assertEqual(loaded.public_key, self.key.public_key)
        self.assertEqual(loaded.address, self.key.address)
        self.assertEqual(loaded.sign(b"x"), self.key.sign(b"x"))

    def _write(self, data):
        with open(self.path, "w") as f:
            f.write(data if isinstance(data, str) else json.dumps(data))

    def test_load_address_mismatch(self):
        data = self.key.to_json()
        data["address"] = KeyPair(bytes([4]) * 32).address
        self._write(data)
        e = self.assertRaises(ConfigError, KeyPair.load, self.path)
        self.assertIn("address", str(e))

    def test_load_public_key_mismatch(self):
        data = self.key.to_json()
        data["public_key"] = KeyPair(bytes([4]) * 32).public_key.hex()
        self._write(data)
        e = self.assertRaises(ConfigError, KeyPair.load, self.path)
        self.assertIn("public_key", str(e))

    def test_load_bad_private_key(self):
        for bad in ("AB" * 32, "ab" * 31, 5, None):
            data = self.key.to_json()
            data["private_key"] = bad
            self._write(data)
            self.assertRaises(ConfigError, KeyPair.load, self.path)

    def test_load_not_json(self):
        self._write("{not json")
        self.assertRaises(ConfigError, KeyPair.load, self.path)

    def test_load_not_object(self):
        self._write([1, 2])
        self.assertRaises(ConfigError, KeyPair.load, self.path)

    def test_load_missing_file(self):
        self.assertRaises(ConfigError, KeyPair.load, self.path)
