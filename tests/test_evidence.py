"""Evidence (aitnode.evidence): two signed headers by one proposer at one
height, or two votes that break a voting rule; parsed strictly, checked
against the authority set of their heights, one id per pair."""

import copy
import hashlib
import json
import re

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aitnode import evidence as E, finality as F
from aitnode.blocks import HEADER_FIELDS, block_hash
from aitnode.crypto import KeyPair
from aitnode.encoding import canonical, merkle_root, sha256_hex
from aitnode.errors import AitError

from tests.common import CHAIN_ID, key
from tests.test_finality import h, make_vote, reference_violation, small_vote, vote
from tests.test_protocol_vectors import doc_text, load_vectors

OFFENDER = key(61)
HONEST = key(62)
KEYS = {k.address: k.public_key for k in (OFFENDER, HONEST)}


def all_heights(address, height):
    """pubkey_of for an authority set that never changes."""
    return KEYS.get(address)


def header(height=7, k=OFFENDER, timestamp=1_700_000_070, chain_id=CHAIN_ID, **kw):
    hd = {"chain_id": chain_id, "parent": h(height - 1), "height": height, "timestamp": timestamp,
          "proposer": k.address, "tx_root": "0" * 64, "state_root": h("state"),
          "votes_root": "0" * 64, "evidence_root": "0" * 64, "authorities_hash": h("authorities")}
    hd.update(kw)
    assert set(hd) == HEADER_FIELDS
    return hd


def signed(hd, k=OFFENDER):
    return hd, k.sign(bytes.fromhex(block_hash(hd))).hex()


def double_proposal(k=OFFENDER, height=7):
    return E.proposal_evidence(*signed(header(height, k), k), *signed(header(height, k, timestamp=1_700_000_071), k))


def nested(depth):
    """A list nested depth deep (deeper than Python's recursion limit)."""
    out = []
    for _ in range(depth):
        out = [out]
    return out


def assert_bad(test, code, f, *args):
    e = test.assertRaises(AitError, f, *args)
    test.assertEqual(e.code, code, e.message)
    return e


class SignedHeaderTests(SynchronousTestCase):
    def test_check(self):
        hd, sig = signed(header())
        self.assertEqual(E.check_signed_header(hd, sig, OFFENDER.public_key), block_hash(hd))
        assert_bad(self, "bad_block", E.check_signed_header, hd, sig, HONEST.public_key)
        assert_bad(self, "bad_block", E.check_signed_header, dict(hd, timestamp=1), sig, OFFENDER.public_key)
        assert_bad(self, "bad_block", E.check_signed_header, dict(hd, extra=1), sig, OFFENDER.public_key)
        assert_bad(self, "bad_block", E.check_signed_header, dict(hd, timestamp=1.5), sig, OFFENDER.public_key)
        assert_bad(self, "bad_block", E.check_signed_header, hd, sig.upper(), OFFENDER.public_key)
        assert_bad(self, "bad_block", E.check_signed_header, hd, sig[:-2], OFFENDER.public_key)
        assert_bad(self, "bad_block", E.check_signed_header, [hd], sig, OFFENDER.public_key)


class ProposalEvidenceTests(SynchronousTestCase):
    def test_accepted_names_the_offender(self):
        ev = double_proposal()
        self.assertEqual((ev.kind, ev.offence, ev.offender, ev.heights, ev.height), ("proposal", "double_proposal", OFFENDER.address, (7, 7), 7))
        self.assertEqual(E.check_evidence(ev, CHAIN_ID, all_heights), OFFENDER.address)
        w = ev.to_wire()
        self.assertEqual(sorted(w), ["a", "b", "kind"])
        self.assertLess(block_hash(w["a"]["header"]), block_hash(w["b"]["header"]))
        self.assertEqual(ev.id, sha256_hex(canonical(w)))
        again = E.parse_evidence(json.loads(json.dumps(w)))
        self.assertEqual(again.id, ev.id)
        self.assertEqual(E.check_evidence(again, CHAIN_ID, all_heights), OFFENDER.address)

    def test_one_id_whatever_the_order(self):
        a, b = signed(header()), signed(header(timestamp=1))
        self.assertEqual(E.proposal_evidence(*a, *b).id, E.proposal_evidence(*b, *a).id)
        w = E.proposal_evidence(*a, *b).to_wire()
        assert_bad(self, "bad_evidence", E.parse_evidence, dict(w, a=w["b"], b=w["a"]))

    def test_different_parents_count(self):
        # One proposer, one height, two branches: still two headers at one height.
        ev = E.proposal_evidence(*signed(header()), *signed(header(parent=h("other"))))
        self.assertEqual(E.check_evidence(ev, CHAIN_ID, all_heights), OFFENDER.address)

    def test_not_evidence(self):
        a = signed(header())
        for b, why in ((a, "same"), (signed(header(8)), "different heights"),
                       (signed(header(proposer=HONEST.address), HONEST), "different proposers")):
            e = assert_bad(self, "bad_evidence", E.proposal_evidence, *a, *b)
            self.assertIn(why, e.message)

    def test_format_refusals(self):
        w = double_proposal().to_wire()
        big = dict(w["a"]["header"], tx_root="ab" * E.MAX_HEADER_BYTES)
        bad = [None, [], dict(w, kind="header"), dict(w, kind=None), dict(w, extra=1),
               {k: v for k, v in w.items() if k != "b"}]
        for field, value in (("height", 0), ("height", "7"), ("height", -1), ("proposer", OFFENDER.address.upper()),
                             ("proposer", ""), ("timestamp", 1.5), ("chain_id", None), ("extra", 1),
                             ("timestamp", True), ("tx_root", ["0" * 64]), ("state_root", {"a": 1}),
                             ("parent", nested(100_000)), ("timestamp", 2**64), ("parent", "\ud800")):
            bad.append(dict(w, a=dict(w["a"], header=dict(w["a"]["header"], **{field: value}))))
        bad.append(dict(w, a=dict(w["a"], header={k: v for k, v in w["a"]["header"].items() if k != "tx_root"})))
        bad.append(dict(w, a=dict(w["a"], header=big)))
        bad.append(dict(w, a=dict(w["a"], sig=w["a"]["sig"][:-2])))
        bad.append(dict(w, a=dict(w["a"], sig=w["a"]["sig"].upper())))
        bad.append(dict(w, a=dict(w["a"], extra=1)))
        bad.append(dict(w, a=w["a"]["header"]))
        for obj in bad:
            assert_bad(self, "bad_evidence", E.parse_evidence, obj)

    def test_check_refusals(self):
        ev = double_proposal()
        e = assert_bad(self, "bad_evidence", E.check_evidence, ev, "another-chain", all_heights)
        self.assertIn("another chain", e.message)
        assert_bad(self, "bad_evidence", E.check_evidence, ev, CHAIN_ID, lambda a, height: None)
        assert_bad(self, "bad_evidence", E.check_evidence, ev, CHAIN_ID, lambda a, height: HONEST.public_key)
        # The set of height 7 does not hold the offender (it may hold it at other heights).
        seen = []
        assert_bad(self, "bad_evidence", E.check_evidence, ev, CHAIN_ID,
                   lambda a, height: seen.append(height) or (None if height == 7 else OFFENDER.public_key))
        self.assertEqual(seen, [7])
        # Headers signed by someone else under the offender's name.
        forged = E.proposal_evidence(*signed(header(), HONEST), *signed(header(timestamp=1), HONEST))
        assert_bad(self, "bad_evidence", E.check_evidence, forged, CHAIN_ID, all_heights)
        # Even if the lookup answers with the key that did sign: it is not the offender's.
        assert_bad(self, "bad_evidence", E.check_evidence, forged, CHAIN_ID, lambda a, height: HONEST.public_key)

    @given(st.sampled_from("ab"), st.integers(0, 63), st.integers(1, 255))
    def test_any_flipped_signature_byte_fails(self, half, i, x):
        w = double_proposal().to_wire()
        sig = bytearray.fromhex(w[half]["sig"])
        sig[i] ^= x
        w[half] = dict(w[half], sig=sig.hex())
        ev = E.parse_evidence(w)
        assert_bad(self, "bad_evidence", E.check_evidence, ev, CHAIN_ID, all_heights)

    @given(st.sampled_from("ab"), st.sampled_from(sorted(HEADER_FIELDS - {"height", "proposer"})), st.data())
    def test_any_changed_header_fails(self, half, field, data):
        w = double_proposal().to_wire()
        hd = dict(w[half]["header"])
        value = hd[field]
        if type(value) is int:
            hd[field] = value ^ data.draw(st.integers(1, 2**32))
        else:
            i = data.draw(st.integers(0, len(value) - 1))
            hd[field] = value[:i] + data.draw(st.sampled_from([c for c in "0123456789abcdef-" if c != value[i]])) + value[i + 1:]
        w[half] = dict(w[half], header=hd)
        # Either the changed pair is out of order (parse) or a signature fails (check).
        with self.assertRaises(AitError) as cm:
            E.check_evidence(E.parse_evidence(w), CHAIN_ID, all_heights)
        self.assertEqual(cm.exception.code, "bad_evidence")


class VoteEvidenceTests(SynchronousTestCase):
    def test_double_and_surround(self):
        for other, offence in ((vote(OFFENDER, 5, h("5b"), 4), "double_vote"), (vote(OFFENDER, 6, None, 3), "surround_vote")):
            ev = E.vote_evidence(vote(OFFENDER, 5, None, 4), other)
            self.assertEqual((ev.kind, ev.offence, ev.offender), ("vote", offence, OFFENDER.address))
            self.assertEqual(sorted(ev.heights), sorted((5, other.height)))
            self.assertEqual(E.check_evidence(ev, CHAIN_ID, all_heights), OFFENDER.address)
            self.assertEqual(ev.id, E.vote_evidence(other, vote(OFFENDER, 5, None, 4)).id)
            w = ev.to_wire()
            self.assertLess(sha256_hex(canonical(w["a"])), sha256_hex(canonical(w["b"])))
            self.assertEqual(ev.id, sha256_hex(canonical(w)))
            self.assertEqual(E.parse_evidence(json.loads(json.dumps(w))), ev)
            assert_bad(self, "bad_evidence", E.parse_evidence, dict(w, a=w["b"], b=w["a"]))

    def test_each_vote_against_the_set_of_its_height(self):
        ev = E.vote_evidence(vote(OFFENDER, 5, None, 4), vote(OFFENDER, 9, None, 3))
        asked = []

        def only_until_8(address, height):
            asked.append(height)
            return KEYS[address] if height <= 8 else None
        e = assert_bad(self, "bad_evidence", E.check_evidence, ev, CHAIN_ID, only_until_8)
        self.assertIn("height 9", e.message)
        self.assertEqual(sorted(set(asked)), [5, 9])
        self.assertEqual(ev.height, 9)

    def test_refusals(self):
        v = vote(OFFENDER, 5, None, 4)
        w = E.vote_evidence(v, vote(OFFENDER, 5, h("5b"), 4)).to_wire()
        for obj in (dict(w, a=w["b"]),  # the same vote twice
                    dict(w, a=dict(w["a"], height="5")),
                    dict(w, b=dict(w["b"], extra=1)),
                    dict(w, kind="votes")):
            assert_bad(self, "bad_evidence", E.parse_evidence, obj)
        assert_bad(self, "bad_evidence", E.vote_evidence, v, vote(HONEST, 5, h("5b"), 4))
        assert_bad(self, "bad_evidence", E.vote_evidence, v, v._replace(sig="00" * 64))  # one vote, two signatures
        ev = E.parse_evidence(w)
        assert_bad(self, "bad_evidence", E.check_evidence, ev, "another-chain", all_heights)
        forged = E.vote_evidence(vote(HONEST, 5, None, 4)._replace(voter=OFFENDER.address),
                                 vote(HONEST, 5, h("5b"), 4)._replace(voter=OFFENDER.address))
        assert_bad(self, "bad_evidence", E.check_evidence, forged, CHAIN_ID, all_heights)

    @given(small_vote, small_vote)
    def test_random_pairs(self, x, y):
        """Accepted (naming the offender) exactly when the reference sees a violation."""
        a, b = make_vote(x, OFFENDER), make_vote(y, OFFENDER)
        want = reference_violation(a, b)
        if want is None:
            assert_bad(self, "bad_evidence", E.vote_evidence, a, b)
        else:
            ev = E.vote_evidence(a, b)
            self.assertEqual((ev.offence, E.check_evidence(ev, CHAIN_ID, all_heights)), (want, OFFENDER.address))

    @given(st.lists(small_vote, max_size=20))
    def test_an_honest_voter_gives_no_evidence(self, specs):
        g = F.SafeVoter()
        allowed = []
        for spec in specs:
            v = make_vote(spec, HONEST)
            if g.may_vote(v):
                g.advance(F.Record.of(v))
                allowed.append(v)
        for i, a in enumerate(allowed):
            for b in allowed[i + 1:]:
                assert_bad(self, "bad_evidence", E.vote_evidence, a, b)

    @given(st.sampled_from("ab"), st.integers(0, 63), st.integers(1, 255))
    def test_any_flipped_signature_byte_fails(self, half, i, x):
        w = E.vote_evidence(vote(OFFENDER, 5, None, 4), vote(OFFENDER, 6, None, 3)).to_wire()
        sig = bytearray.fromhex(w[half]["sig"])
        sig[i] ^= x
        w[half] = dict(w[half], sig=sig.hex())
        try:
            ev = E.parse_evidence(w)
        except AitError as e:  # the new signature changed the pair's order
            self.assertIn("sort below", e.message)
            return
        assert_bad(self, "bad_evidence", E.check_evidence, ev, CHAIN_ID, all_heights)


class BlockEvidenceTests(SynchronousTestCase):
    def setUp(self):
        self.evs = [double_proposal(), E.vote_evidence(vote(OFFENDER, 5, None, 4), vote(OFFENDER, 6, None, 3)),
                    double_proposal(HONEST, 9)]
        self.items = E.block_evidence(self.evs)

    def check(self, items, recorded=()):
        return E.check_block_evidence(items, CHAIN_ID, all_heights, lambda i: i in recorded)

    def test_accepted(self):
        self.assertEqual([ev.id for ev in self.check(self.items)], sorted(ev.id for ev in self.evs))
        self.assertEqual(self.check([]), [])
        self.assertEqual(E.evidence_root(self.items), merkle_root(sorted(ev.id for ev in self.evs)))
        self.assertEqual(E.evidence_root([]), "0" * 64)

    def test_refusals(self):
        items = self.items
        bad_item = copy.deepcopy(items[0])
        bad_item["a"]["sig"] = "00" * 64
        cases = [
            ({"x": 1}, ()), (list(reversed(items)), ()), ([items[0], items[0]], ()), ([bad_item] + items[1:], ()),
            (items, (self.evs[1].id,)), (items * 6, ()),
        ]
        for its, recorded in cases:
            assert_bad(self, "bad_block", self.check, its, recorded)


class DocumentVectorTests(SynchronousTestCase):
    """Vectors finality_vote and evidence of docs/protocol.md, rebuilt from
    the descriptions beside them with the node's code."""

    def setUp(self):
        self.text = doc_text()
        v = load_vectors(self.text)
        self.fv, self.ev = v["finality_vote"], v["evidence"]
        self.cid = self.fv["chain_id"]
        label = re.fullmatch(r'sha256\("(.*)"\)', self.fv["voter"]["seed_of"]).group(1)
        self.key = KeyPair(hashlib.sha256(label.encode()).digest())
        self.assertEqual(self.key.public_key.hex(), v["keys"]["authority"]["public_key"])

    def block(self, label):
        return hashlib.sha256(f"aitnode vector block {label}".encode()).hexdigest()

    def test_finality_vote(self):
        fv, k, cid = self.fv, self.key, self.cid
        self.assertEqual((fv["voter"]["public_key"], fv["voter"]["address"]), (k.public_key.hex(), k.address))
        signed = {"chain_id": cid, "height": 7, "hash": self.block(7), "source_height": 6, "source_hash": self.block(6)}
        self.assertEqual(fv["signed"], signed)
        self.assertEqual(canonical(signed).hex(), fv["signed_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(fv["signed_cbor"])).hexdigest(), fv["sign_bytes"])
        self.assertEqual(F.sign_bytes(cid, 7, self.block(7), 6, self.block(6)).hex(), fv["sign_bytes"])
        self.assertEqual(k.sign(bytes.fromhex(fv["sign_bytes"])).hex(), fv["sig"])
        vote_ = F.sign_vote(k, cid, 7, self.block(7), 6, self.block(6))
        self.assertEqual(vote_.to_wire(), fv["wire"])
        self.assertEqual(fv["wire"]["sig"], fv["sig"])
        parsed = F.parse_vote(fv["wire"])
        self.assertTrue(F.verify_vote(parsed, cid, k.public_key))
        self.assertFalse(F.verify_vote(parsed, "ait-test", k.public_key))
        self.assertEqual(sha256_hex(canonical(fv["wire"])), fv["leaf"])
        self.assertEqual(parsed.leaf(), fv["leaf"])
        self.assertEqual(F.votes_root([fv["wire"]]), fv["votes_root"])
        self.assertEqual(hashlib.sha256(b"\x00" + bytes.fromhex(fv["leaf"])).hexdigest(), fv["votes_root"])
        self.assertEqual({n: F.quorum(int(n)) for n in fv["quorum"]}, fv["quorum"])
        # The quorum table of the section says the same.
        rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
                for line in self.text.splitlines() if line.startswith(("| n |", "| q |"))}
        self.assertEqual([str(F.quorum(int(n))) for n in rows["n"]], rows["q"])
        self.assertEqual(dict(zip(rows["n"], map(int, rows["q"]))), fv["quorum"])

    def test_evidence(self):
        ev, k, cid = self.ev, self.key, self.cid
        self.assertEqual((ev["chain_id"], ev["offender"]), (cid, k.address))
        first = F.sign_vote(k, cid, 7, self.block(7), 6, self.block(6))
        self.assertEqual(first.to_wire(), self.fv["wire"])
        state_root = hashlib.sha256(b"aitnode vector state").hexdigest()
        headers = [{"chain_id": cid, "parent": self.block(6), "height": 7, "timestamp": ts, "proposer": k.address,
                    "tx_root": "0" * 64, "state_root": state_root, "votes_root": "0" * 64, "evidence_root": "0" * 64,
                    "authorities_hash": hashlib.sha256(b"aitnode vector authorities").hexdigest()}
                   for ts in (1_700_000_070_000, 1_700_000_071_000)]
        built = {
            "double_vote": E.vote_evidence(first, F.sign_vote(k, cid, 7, self.block("7b"), 6, self.block(6))),
            "surround_vote": E.vote_evidence(F.sign_vote(k, cid, 9, self.block(9), 5, self.block(5)), first),
            "double_proposal": E.proposal_evidence(*(x for hd in headers for x in (hd, k.sign(bytes.fromhex(block_hash(hd))).hex()))),
        }
        for name, e in built.items():
            item = ev[name]
            self.assertEqual(e.to_wire(), item["wire"], name)
            self.assertEqual(canonical(item["wire"]).hex(), item["cbor"], name)
            self.assertEqual(hashlib.sha256(bytes.fromhex(item["cbor"])).hexdigest(), item["id"], name)
            self.assertEqual(e.id, item["id"])
            self.assertEqual(e.offence, name)
            parsed = E.parse_evidence(json.loads(json.dumps(item["wire"])))
            self.assertEqual(parsed.id, item["id"])
            self.assertEqual(E.check_evidence(parsed, cid, lambda a, height: k.public_key), k.address)
            self.assertRaises(AitError, E.check_evidence, parsed, "ait-test", lambda a, height: k.public_key)
            w = item["wire"]
            if name == "double_proposal":
                self.assertEqual([block_hash(w["a"]["header"]), block_hash(w["b"]["header"])], item["block_hashes"])
                self.assertLess(*item["block_hashes"])
            else:
                self.assertEqual([sha256_hex(canonical(w["a"])), sha256_hex(canonical(w["b"]))], item["leaves"])
                self.assertLess(*item["leaves"])
        block = E.block_evidence(built.values())
        self.assertEqual([sha256_hex(canonical(w)) for w in block], ev["block_ids"])
        self.assertEqual(ev["block_ids"], sorted(item["id"] for item in (ev[n] for n in built)))
        self.assertEqual(E.evidence_root(block), ev["evidence_root"])
        self.assertEqual(merkle_root(ev["block_ids"]), ev["evidence_root"])
        found = E.check_block_evidence([ev[n]["wire"] for n in sorted(built, key=lambda n: ev[n]["id"])], cid,
                                       lambda a, height: k.public_key, lambda i: False)
        self.assertEqual([e.id for e in found], ev["block_ids"])
