"""Tests for aitnode.encoding (canonical CBOR, value space, hex, merkle)
and aitnode.tx (strict wire parsing, signing, JSON decoding)."""

import hashlib
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from aitnode import encoding, httpjson, tx
from aitnode.crypto import KeyPair
from aitnode.errors import AitError

from tests.common import edited

CHAIN = "ait-test"


def _h(data):
    return hashlib.sha256(data).digest()


class CanonicalTests(SynchronousTestCase):
    def assertCbor(self, value, hex_bytes):
        self.assertEqual(encoding.canonical(value).hex(), hex_bytes.replace(" ", ""))

    def test_integer_heads(self):
        self.assertCbor(0, "00")
        self.assertCbor(1, "01")
        self.assertCbor(23, "17")
        self.assertCbor(24, "18 18")
        self.assertCbor(255, "18 ff")
        self.assertCbor(256, "19 0100")
        self.assertCbor(65535, "19 ffff")
        self.assertCbor(65536, "1a 00010000")
        self.assertCbor(2**32 - 1, "1a ffffffff")
        self.assertCbor(2**32, "1b 0000000100000000")
        self.assertCbor(2**64 - 1, "1b ffffffffffffffff")

    def test_simple_values(self):
        self.assertCbor(False, "f4")
        self.assertCbor(True, "f5")

    def test_text(self):
        self.assertCbor("", "60")
        self.assertCbor("a", "61 61")
        self.assertCbor("IETF", "64 49455446")
        self.assertCbor("\u00fc", "62 c3bc")
        self.assertCbor("x" * 24, "78 18" + "78" * 24)

    def test_lists(self):
        self.assertCbor([], "80")
        self.assertCbor([1, 2, 3], "83 01 02 03")
        self.assertCbor([1, [2, 3], [4, 5]], "83 01 82 02 03 82 04 05")
        self.assertCbor([[[]]], "81 81 80")
        self.assertCbor(list(range(1, 26)), "98 19" + "".join(
            format(i, "02x") if i < 24 else "18" + format(i, "02x") for i in range(1, 26)
        ))

    def test_map_key_order(self):
        # RFC 8949 4.2.1: keys sorted by the bytewise order of their encodings,
        # so the shorter key comes first.
        self.assertCbor({"b": 1, "aa": 2}, "a2 6162 01 626161 02")
        self.assertCbor({"aa": 2, "b": 1}, "a2 6162 01 626161 02")
        self.assertCbor({}, "a0")
        self.assertCbor({"b": 0, "a": 1}, "a2 6161 01 6162 00")
        self.assertCbor({"B": 0, "a": 1}, "a2 6142 00 6161 01")

    def test_map_key_order_across_head_lengths(self):
        long_key = "a" * 24  # head 78 18, sorts after every shorter key
        value = {long_key: 1, "z" * 23: 2}
        expected = "a2" + "77" + "7a" * 23 + "02" + "7818" + "61" * 24 + "01"
        self.assertCbor(value, expected)

    def test_nested(self):
        value = {"list": [1, {"y": True, "x": "s"}], "a": {}}
        self.assertCbor(
            value,
            "a2 6161 a0 646c697374 82 01 a2 6178 6173 6179 f5",
        )

    def test_hash_value(self):
        value = {"b": 1, "aa": 2}
        self.assertEqual(
            encoding.hash_value(value),
            hashlib.sha256(bytes.fromhex("a2616201626161" + "02")).hexdigest(),
        )

    def test_canonical_checks_value(self):
        e = self.assertRaises(AitError, encoding.canonical, {"a": 1.5})
        self.assertEqual(e.code, "float_not_allowed")

    def test_canonical_unchecked_same_bytes(self):
        value = {"b": [1, 2**40], "aa": "x"}
        self.assertEqual(encoding.canonical_unchecked(value), encoding.canonical(value))


class CheckValueTests(SynchronousTestCase):
    def assertRefused(self, value, code):
        e = self.assertRaises(AitError, encoding.check_value, value)
        self.assertEqual(e.code, code, repr(value))

    def test_accepts(self):
        for value in ("", "text", True, False, 0, 2**64 - 1, [], {}, [1, ["a", {"k": [True]}]]):
            self.assertIs(encoding.check_value(value), None)

    def test_floats(self):
        self.assertRefused(1.0, "float_not_allowed")
        self.assertRefused(0.0, "float_not_allowed")
        self.assertRefused(float("nan"), "float_not_allowed")
        self.assertRefused([1, 2.5], "float_not_allowed")
        self.assertRefused({"a": {"b": 1e10}}, "float_not_allowed")

    def test_null(self):
        self.assertRefused(None, "null_not_allowed")
        self.assertRefused({"a": None}, "null_not_allowed")
        self.assertRefused([None], "null_not_allowed")

    def test_wrong_types(self):
        self.assertRefused(b"bytes", "wrong_type")
        self.assertRefused(bytearray(b"x"), "wrong_type")
        self.assertRefused((1, 2), "wrong_type")
        self.assertRefused({1, 2}, "wrong_type")
        self.assertRefused(["ok", b"x"], "wrong_type")

    def test_integer_range(self):
        self.assertRefused(-1, "number_out_of_range")
        self.assertRefused(-(2**64), "number_out_of_range")
        self.assertRefused(2**64, "number_out_of_range")
        self.assertRefused(2**100, "number_out_of_range")
        self.assertRefused({"a": [-5]}, "number_out_of_range")

    def test_map_keys_must_be_text(self):
        self.assertRefused({1: "a"}, "wrong_type")
        self.assertRefused({b"k": "a"}, "wrong_type")
        self.assertRefused({True: "a"}, "wrong_type")
        self.assertRefused({"ok": {None: 1}}, "wrong_type")

    def test_error_names_location(self):
        e = self.assertRaises(AitError, encoding.check_value, {"a": [0, 1.5]}, "payload")
        self.assertIn("payload.a[1]", e.message)

    def test_text_must_be_utf8_encodable(self):
        # Valid JSON ("\ud800") decodes to a lone surrogate, which has no
        # UTF-8 form: outside the value space, refused before any encoder.
        for value in ("\ud800", "ok\udfff", ["a", "\udc00"], {"k": "\ud83d"}, {"\ud800": 1}, {"a": {"\udbff": []}}):
            self.assertRefused(value, "bad_text")
            self.assertRaises(AitError, encoding.canonical, value)
        # A surrogate pair is one code point; it decodes to a proper one.
        self.assertIs(encoding.check_value(json.loads('"\\ud83d\\ude00"')), None)
        self.assertIs(encoding.check_value({"\u00e9t\u00e9": "\U0001f600"}), None)

    def test_bad_text_message_is_printable(self):
        e = self.assertRaises(AitError, encoding.check_value, {"a": {"\ud800": 1}}, "payload")
        self.assertIn("payload.a", e.message)
        e.message.encode("utf-8")  # the message itself can be logged and sent


class RequireTextTests(SynchronousTestCase):
    def refused(self, value, max_bytes):
        e = self.assertRaises(AitError, encoding.require_text, value, "payload.x", max_bytes)
        self.assertEqual(e.code, "bad_text")
        self.assertIn("payload.x", e.message)
        return e

    def test_bound_is_in_utf8_bytes(self):
        for value, size in (("a" * 8, 8), ("\u00e9" * 4, 8), ("\u20ac\u20ac" + "ab", 8), ("\U0001F600" * 2, 8)):
            self.assertEqual(len(value.encode()), size)
            self.assertEqual(encoding.require_text(value, "payload.x", 8), value)
            e = self.refused(value + "a", 8)
            self.assertIn(f"1 to 8 bytes of UTF-8, got {size + 1}", e.message)
        # Two code points, nine bytes: the bytes decide.
        self.refused("\U0001F600\U0001F600a", 8)
        self.refused("\U0001F600" * 3, 8)

    def test_empty_wrong_type_and_surrogates(self):
        self.refused("", 8)
        self.refused("\ud800", 8)
        e = self.assertRaises(AitError, encoding.require_text, b"abc", "payload.x", 8)
        self.assertEqual(e.code, "wrong_type")
        self.assertEqual(encoding.require_text("x" * encoding.MAX_TEXT, "f"), "x" * encoding.MAX_TEXT)
        self.refused("x" * (encoding.MAX_TEXT + 1), encoding.MAX_TEXT)


class HexTests(SynchronousTestCase):
    def test_is_hex(self):
        self.assertIs(encoding.is_hex(""), True)
        self.assertIs(encoding.is_hex("00ff"), True)
        self.assertIs(encoding.is_hex("0123456789abcdef"), True)
        self.assertIs(encoding.is_hex("00ff", 2), True)
        self.assertIs(encoding.is_hex("00FF"), False)
        self.assertIs(encoding.is_hex("00fF"), False)
        self.assertIs(encoding.is_hex("abc"), False)
        self.assertIs(encoding.is_hex("00ff", 3), False)
        self.assertIs(encoding.is_hex("00ff", 1), False)
        self.assertIs(encoding.is_hex("zz"), False)
        self.assertIs(encoding.is_hex("0x00"), False)
        self.assertIs(encoding.is_hex(" 00"), False)
        self.assertIs(encoding.is_hex(b"00"), False)
        self.assertIs(encoding.is_hex(None), False)

    def test_parse_hex(self):
        self.assertEqual(encoding.parse_hex("00ff10", 3, "f"), b"\x00\xff\x10")
        self.assertEqual(encoding.parse_hex("ab" * 32, 32, "f"), b"\xab" * 32)

    def test_parse_hex_refusals(self):
        for text, n in (("AB", 1), ("aB", 1), ("abc", 2), ("abcd", 1), ("abcd", 3), ("", 1), ("gg", 1)):
            e = self.assertRaises(AitError, encoding.parse_hex, text, n, "field_x")
            self.assertEqual(e.code, "bad_hex", text)
            self.assertIn("field_x", e.message)

    def test_parse_hex_not_string(self):
        e = self.assertRaises(AitError, encoding.parse_hex, b"ab", 1, "f")
        self.assertEqual(e.code, "wrong_type")
        e = self.assertRaises(AitError, encoding.parse_hex, None, 1, "f")
        self.assertEqual(e.code, "wrong_type")


class MerkleTests(SynchronousTestCase):
    def setUp(self):
        self.hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]

    def leaf(self, h):
        return _h(b"\x00" + bytes.fromhex(h))

    def node(self, left, right):
        return _h(b"\x01" + left + right)

    def test_empty(self):
        self.assertEqual(encoding.merkle_root([]), "0" * 64)
        self.assertEqual(encoding.ZERO_HASH, "0" * 64)

    def test_one(self):
        h = self.hashes[0]
        self.assertEqual(encoding.merkle_root([h]), self.leaf(h).hex())
        self.assertNotEqual(encoding.merkle_root([h]), h)

    def test_two(self):
        a, b = self.hashes[:2]
        self.assertEqual(encoding.merkle_root([a, b]), self.node(self.leaf(a), self.leaf(b)).hex())

    def test_three_odd_carry(self):
        a, b, c = self.hashes[:3]
        expected = self.node(self.node(self.leaf(a), self.leaf(b)), self.leaf(c)).hex()
        self.assertEqual(encoding.merkle_root([a, b, c]), expected)
        # not Bitcoin-style duplication of the odd node
        duplicated = self.node(
            self.node(self.leaf(a), self.leaf(b)), self.node(self.leaf(c), self.leaf(c))
        ).hex()
        self.assertNotEqual(encoding.merkle_root([a, b, c]), duplicated)

    def test_five(self):
        a, b, c, d, e = [self.leaf(h) for h in self.hashes]
        expected = self.node(self.node(self.node(a, b), self.node(c, d)), e).hex()
        self.assertEqual(encoding.merkle_root(self.hashes), expected)

    def test_order_matters(self):
        a, b = self.hashes[:2]
        self.assertNotEqual(encoding.merkle_root([a, b]), encoding.merkle_root([b, a]))


class TransactionTests(SynchronousTestCase):
    def setUp(self):
        self.key = KeyPair(bytes([1]) * 32)
        self.other = KeyPair(bytes([2]) * 32)
        self.tx = tx.sign_tx(
            self.key, CHAIN, "TRANSFER", 1, 10, {"to": self.other.address, "amount": 500}
        )

    def wire(self, **changes):
        return edited(self.tx.to_wire(), changes, drop=_DROP)

    def assertRefused(self, obj, code, chain_id=CHAIN):
        e = self.assertRaises(AitError, tx.parse_tx, obj, chain_id)
        self.assertEqual(e.code, code, e.message)
        return e

    def body(self):
        """The signed body of self.tx, spelled out."""
        return {
            "chain_id": CHAIN,
            "type": "TRANSFER",
            "sender": self.key.address,
            "nonce": 1,
            "fee": 10,
            "payload": {"to": self.other.address, "amount": 500},
        }

    def test_to_wire(self):
        self.assertEqual(
            self.tx.to_wire(),
            dict(self.body(), pubkey=self.key.public_key.hex(), sig=self.tx.sig.hex()),
        )

    def test_hashes(self):
        body = self.body()
        sign_hash = _h(encoding.canonical(body))
        self.assertEqual(self.tx.sign_hash, sign_hash)
        self.assertEqual(self.tx.sig, self.key.sign(sign_hash))
        body["pubkey"] = self.key.public_key.hex()
        body["sig"] = self.tx.sig.hex()
        self.assertEqual(self.tx.hash, _h(encoding.canonical(body)).hex())

    def test_round_trip(self):
        text = json.dumps(self.tx.to_wire()).encode()
        parsed = tx.parse_tx(httpjson.loads_json(text), CHAIN)
        self.assertEqual(parsed.to_wire(), self.tx.to_wire())
        self.assertEqual(parsed.hash, self.tx.hash)
        self.assertEqual(parsed.sign_hash, self.tx.sign_hash)
        self.assertIs(parsed.verify_signature(), True)

    def test_round_trip_without_chain_id(self):
        parsed = tx.parse_tx(self.wire(chain_id=_DROP), CHAIN)
        self.assertEqual(parsed.chain_id, CHAIN)
        self.assertEqual(parsed.hash, self.tx.hash)
        self.assertIs(parsed.verify_signature(), True)

    def test_verify_signature(self):
        self.assertIs(self.tx.verify_signature(), True)
        altered = tx.parse_tx(self.wire(fee=11), CHAIN)
        self.assertIs(altered.verify_signature(), False)
        self.assertNotEqual(altered.hash, self.tx.hash)

    def test_signature_binds_chain(self):
        other_chain = tx.parse_tx(self.wire(chain_id=_DROP), "ait-other")
        self.assertIs(other_chain.verify_signature(), False)

    def test_signature_binds_payload(self):
        altered = tx.parse_tx(
            self.wire(payload={"to": self.other.address, "amount": 501}), CHAIN
        )
        self.assertIs(altered.verify_signature(), False)

    def test_unknown_field(self):
        self.assertRefused(self.wire(memo="hi"), "unknown_field")

    def test_missing_fields(self):
        for field in ("type", "sender", "nonce", "fee", "payload", "pubkey", "sig"):
            e = self.assertRefused(self.wire(**{field: _DROP}), "missing_field")
            self.assertIn(field, e.message)

    def test_payload_fields(self):
        self.assertRefused(self.wire(payload={"to": self.other.address}), "missing_field")
        self.assertRefused(
            self.wire(payload={"to": self.other.address, "amount": 1, "memo": "x"}),
            "unknown_field",
        )
        self.assertRefused(self.wire(payload=[1]), "wrong_type")

    def test_nonce(self):
        self.assertRefused(self.wire(nonce=1.0), "float_not_allowed")
        self.assertRefused(self.wire(nonce=True), "wrong_type")
        self.assertRefused(self.wire(nonce="1"), "wrong_type")
        self.assertRefused(self.wire(nonce=0), "number_out_of_range")
        self.assertRefused(self.wire(nonce=-1), "number_out_of_range")
        self.assertRefused(self.wire(nonce=2**64), "number_out_of_range")

    def test_fee(self):
        self.assertEqual(tx.parse_tx(self.wire(fee=0), CHAIN).fee, 0)
        self.assertRefused(self.wire(fee=-1), "number_out_of_range")
        self.assertRefused(self.wire(fee=0.5), "float_not_allowed")

    def test_sig_hex(self):
        self.assertRefused(self.wire(sig=self.tx.sig.hex().upper()), "bad_hex")
        self.assertRefused(self.wire(sig=self.tx.sig.hex()[:-2]), "bad_hex")
        self.assertRefused(self.wire(pubkey=self.key.public_key.hex().upper()), "bad_hex")

    def test_pubkey_mismatch(self):
        self.assertRefused(self.wire(pubkey=self.other.public_key.hex()), "pubkey_mismatch")

    def test_wrong_chain(self):
        self.assertRefused(self.wire(chain_id="ait-main"), "wrong_chain")
        self.assertRefused(self.wire(), "wrong_chain", chain_id="ait-main")

    def test_unknown_type(self):
        self.assertRefused(self.wire(type="BURN"), "unknown_type")
        self.assertRefused(self.wire(type="transfer"), "unknown_type")
        self.assertRefused(self.wire(type=1), "wrong_type")

    def test_amount(self):
        to = self.other.address
        self.assertRefused(self.wire(payload={"to": to, "amount": -1}), "number_out_of_range")
        self.assertRefused(self.wire(payload={"to": to, "amount": 0}), "number_out_of_range")
        self.assertRefused(self.wire(payload={"to": to, "amount": 1.0}), "float_not_allowed")
        self.assertRefused(self.wire(payload={"to": to, "amount": "5"}), "wrong_type")

    def test_bad_to(self):
        for bad in (self.other.address.upper(), self.other.address[:-1] + "x", "ait1qqqq"):
            self.assertRefused(self.wire(payload={"to": bad, "amount": 1}), "bad_address")
        self.assertRefused(self.wire(payload={"to": 5, "amount": 1}), "wrong_type")
        self.assertRefused(self.wire(payload={"to": [], "amount": 1}), "wrong_type")

    def test_bad_sender(self):
        self.assertRefused(self.wire(sender=self.key.address.upper()), "bad_address")
        self.assertRefused(self.wire(sender=["x"]), "wrong_type")

    def test_not_object(self):
        self.assertRefused([self.tx.to_wire()], "wrong_type")


_DROP = object()


class LoadsJsonTests(SynchronousTestCase):
    def assertRefused(self, data, code):
        e = self.assertRaises(AitError, httpjson.loads_json, data)
        self.assertEqual(e.code, code, data)

    def test_good(self):
        self.assertEqual(httpjson.loads_json(b'{"a": [1, "x", true]}'), {"a": [1, "x", True]})
        self.assertEqual(httpjson.loads_json('{"k": "\u00fc"}'.encode()), {"k": "\u00fc"})

    def test_duplicate_keys(self):
        self.assertRefused(b'{"a": 1, "a": 2}', "duplicate_field")
        self.assertRefused(b'{"x": {"a": 1, "a": 1}}', "duplicate_field")

    def test_nan(self):
        self.assertRefused(b'{"a": NaN}', "float_not_allowed")
        self.assertRefused(b"[Infinity]", "float_not_allowed")
        self.assertRefused(b"-Infinity", "float_not_allowed")

    def test_invalid_utf8(self):
        self.assertRefused(b'{"a": "\xff"}', "malformed_json")
        self.assertRefused(b'"\xc3\x28"', "malformed_json")

    def test_bad_json(self):
        for data in (b"", b"{", b'{"a": 1,}', b"{'a': 1}", b"[1] [2]", b"nul"):
            self.assertRefused(data, "malformed_json")

    def test_nesting_depth(self):
        limit = httpjson.MAX_JSON_DEPTH
        self.assertEqual(limit, 64)
        ok = b"[" * limit + b"1" + b"]" * limit
        self.assertEqual(httpjson.loads_json(ok), json.loads(ok))
        for depth in (limit + 1, 500, 900, 950, 990, 5000):
            e = self.assertRaises(AitError, httpjson.loads_json, b"[" * depth + b"]" * depth)
            self.assertEqual((e.code, "nested" in e.message), ("malformed_json", True), depth)
        self.assertRefused(b'{"a": ' * (limit + 1) + b"1" + b"}" * (limit + 1), "malformed_json")
        self.assertRefused(b'[{"a": ' * 40 + b"1" + b"}]" * 40, "malformed_json")
        doc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")
        with open(doc, encoding="utf-8") as f:
            self.assertIn(f"| arrays and objects nested in a JSON body | fixed | {limit} |", f.read())

    def test_brackets_in_text_are_not_nesting(self):
        value = {"t": "[" * 1000 + "{" * 1000, "u": ["]]]" * 300]}
        self.assertEqual(httpjson.loads_json(json.dumps(value).encode()), value)


class TransactionAssemblyTests(SynchronousTestCase):
    """Transaction builds its two maps from pre-encoded pieces; they must
    equal the canonical encoding of the same maps, for any field values."""

    def test_pieces_equal_canonical_maps(self):
        from hypothesis import given, strategies as st

        from aitnode.encoding import canonical, sha256
        from aitnode.tx import Transaction

        texts = st.text(min_size=0, max_size=300)
        ints = st.integers(min_value=0, max_value=2**64 - 1)
        payloads = st.dictionaries(texts, st.one_of(ints, texts, st.booleans()), max_size=5)

        @given(texts, texts, texts, ints, ints, payloads, st.binary(min_size=32, max_size=32),
               st.binary(min_size=64, max_size=64))
        def check(chain_id, ttype, sender, nonce, fee, payload, pubkey, sig):
            tx = Transaction(chain_id, ttype, sender, nonce, fee, payload, pubkey, sig)
            body = {"chain_id": chain_id, "type": ttype, "sender": sender, "nonce": nonce, "fee": fee,
                    "payload": payload}
            self.assertEqual(tx.sign_hash, sha256(canonical(body)))
            body.update(pubkey=pubkey.hex(), sig=sig.hex())
            self.assertEqual(tx.hash, sha256(canonical(body)).hex())
            self.assertEqual(tx.payload_size, len(canonical(payload)))

        check()
