"""Finality votes (aitnode.finality): quorum, the vote format, the two
voting rules, an authority's own guard, and justification and finality
as blocks carry votes, each against a reference written here."""

import json

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aitnode import finality as F
from aitnode.encoding import U64, canonical, merkle_root, sha256_hex
from aitnode.errors import AitError

from tests.common import CHAIN_ID, key

VOTER = key(41)
OTHER = key(42)


def h(label):
    """A fixed block hash per label."""
    return sha256_hex(f"block {label}".encode())


def vote(k=VOTER, height=5, target=None, source_height=4, source=None, chain_id=CHAIN_ID):
    return F.sign_vote(k, chain_id, height, target or h(height), source_height, source or h(source_height))


class QuorumTests(SynchronousTestCase):
    def test_table(self):
        table = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 5, 7: 5, 8: 6, 10: 7, 13: 9, 100: 67}
        self.assertEqual({n: F.quorum(n) for n in table}, table)

    def test_smallest_quorum_of_more_than_two_thirds(self):
        # Reference: the least q with 3q > 2n, so that any two quorums
        # share more than n/3 authorities (at least f + 1 for the f =
        # floor((n-1)/3) faulty ones the set tolerates).
        for n in range(1, 301):
            q = min(q for q in range(1, n + 1) if 3 * q > 2 * n)
            self.assertEqual(F.quorum(n), q, n)
            f = (n - 1) // 3
            self.assertGreaterEqual(2 * q - n, f + 1)

    def test_no_quorum_of_nobody(self):
        for n in (0, -1, True, 1.0, "4"):
            self.assertRaises(ValueError, F.quorum, n)


class VoteFormatTests(SynchronousTestCase):
    def test_round_trip(self):
        v = vote()
        w = v.to_wire()
        self.assertEqual(list(w), ["voter", "height", "hash", "source_height", "source_hash", "sig"])
        self.assertEqual(w["voter"], VOTER.address)
        self.assertEqual(F.parse_vote(json.loads(json.dumps(w))), v)
        self.assertTrue(F.verify_vote(v, CHAIN_ID, VOTER.public_key))
        self.assertEqual((v.target, v.source), ((5, h(5)), (4, h(4))))
        self.assertEqual(v.leaf(), sha256_hex(canonical(w)))

    def test_signed_bytes(self):
        v = vote()
        signed = {"chain_id": CHAIN_ID, "height": 5, "hash": h(5), "source_height": 4, "source_hash": h(4)}
        self.assertEqual(v.sign_bytes(CHAIN_ID).hex(), sha256_hex(canonical(signed)))
        self.assertEqual(VOTER.sign(v.sign_bytes(CHAIN_ID)).hex(), v.sig)

    def test_signature_binds_chain_key_and_content(self):
        v = vote()
        self.assertFalse(F.verify_vote(v, "another-chain", VOTER.public_key))
        self.assertFalse(F.verify_vote(v, CHAIN_ID, OTHER.public_key))
        self.assertFalse(F.verify_vote(v, CHAIN_ID, VOTER.public_key.hex()))
        self.assertFalse(F.verify_vote(v, CHAIN_ID, VOTER.public_key[:31]))
        # A vote signed by OTHER but claiming VOTER's address.
        forged = vote(OTHER)._replace(voter=VOTER.address)
        self.assertFalse(F.verify_vote(forged, CHAIN_ID, VOTER.public_key))
        self.assertFalse(F.verify_vote(forged, CHAIN_ID, OTHER.public_key))
        for field, value in (("height", 6), ("hash", h("x")), ("source_height", 3), ("source_hash", h("y"))):
            self.assertFalse(F.verify_vote(v._replace(**{field: value}), CHAIN_ID, VOTER.public_key), field)

    @given(st.integers(0, 63), st.integers(1, 255))
    def test_any_flipped_signature_byte_fails(self, i, x):
        v = vote()
        sig = bytearray.fromhex(v.sig)
        sig[i] ^= x
        self.assertFalse(F.verify_vote(v._replace(sig=sig.hex()), CHAIN_ID, VOTER.public_key))

    def test_extremes(self):
        v = vote(height=U64 - 1, source_height=U64 - 2)
        self.assertEqual(F.parse_vote(v.to_wire()), v)
        v = vote(height=1, source_height=0)
        self.assertTrue(F.verify_vote(F.parse_vote(v.to_wire()), CHAIN_ID, VOTER.public_key))

    def test_refusals(self):
        w = vote().to_wire()
        bad = [None, [], "vote", dict(w, extra=1), {k: x for k, x in w.items() if k != "sig"}]
        for field, values in {
            "voter": [VOTER.address.upper(), VOTER.address[:-1] + "q", "", 7, VOTER.public_key.hex()],
            "height": [0, -1, U64, "5", 5.0, True, None, 4, 3],  # 4 and 3: not above source_height
            "source_height": [-1, U64, "4", 4.0, False, 5, 6],
            "hash": [h(5).upper(), h(5)[:-2], h(5) + "00", 5, None, "g" * 64],
            "source_hash": [h(4).upper(), "", b"\x00" * 32],
            "sig": [w["sig"][:-2], w["sig"] + "00", w["sig"].upper(), 0],
        }.items():
            bad += [dict(w, **{field: value}) for value in values]
        for obj in bad:
            e = self.assertRaises(AitError, F.parse_vote, obj)
            self.assertEqual(e.code, "bad_vote", obj)
            self.assertTrue(e.message.startswith("vote: "), e.message)


# -- the voting rules --------------------------------------------------------


def reference_violation(a, b):
    """Written apart from finality.violation: a double vote is two distinct
    votes (however they differ) with one target height; a surround vote is
    one vote whose span of heights strictly between its source and target
    holds the other's whole span, source and target included."""
    if (a.height, a.hash, a.source_height, a.source_hash) == (b.height, b.hash, b.source_height, b.source_hash):
        return None
    if a.height == b.height:
        return "double_vote"
    for x, y in ((a, b), (b, a)):
        inside = set(range(x.source_height + 1, x.height))
        if set(range(y.source_height, y.height + 1)) <= inside:
            return "surround_vote"
    return None


small_vote = st.integers(1, 9).flatmap(lambda t: st.tuples(
    st.just(t), st.sampled_from("ab"), st.integers(0, t - 1), st.sampled_from("ab")))


def make_vote(spec, k=VOTER):
    t, th, s, sh = spec
    return vote(k, t, h(f"{t}{th}"), s, h(f"{s}{sh}"))


class ViolationTests(SynchronousTestCase):
    def test_examples(self):
        base = vote(height=5, source_height=4)
        cases = [
            (vote(height=5, source_height=4), None),  # the same vote
            (vote(height=5, target=h("5b"), source_height=4), "double_vote"),
            (vote(height=5, source_height=3), "double_vote"),  # another source counts too
            (vote(height=5, source_height=4, source=h("4b")), "double_vote"),
            (vote(height=6, source_height=3), "surround_vote"),  # 3 < 4 and 5 < 6
            (vote(height=4, source_height=3), None),
            (vote(height=6, source_height=4), None),  # one source, consecutive targets
            (vote(height=6, source_height=5), None),
            (vote(height=9, source_height=4), None),  # equal sources never surround
            (vote(height=9, source_height=5), None),  # 4 < 5 but 5 < 9: it follows
        ]
        for other, want in cases:
            self.assertEqual(F.violation(base, other), want, other)
            self.assertEqual(F.violation(other, base), want, other)
        # Another signature of the same vote breaks nothing.
        self.assertIsNone(F.violation(base, base._replace(sig="00" * 64)))

    def test_surrounded_by_an_earlier_vote(self):
        self.assertEqual(F.violation(vote(height=10, source_height=2), vote(height=7, source_height=5)), "surround_vote")

    def test_two_voters_are_not_compared(self):
        self.assertRaises(ValueError, F.violation, vote(VOTER), vote(OTHER))

    @given(small_vote, small_vote)
    def test_matches_reference_and_is_symmetric(self, x, y):
        a, b = make_vote(x), make_vote(y)
        self.assertEqual(F.violation(a, b), reference_violation(a, b))
        self.assertEqual(F.violation(a, b), F.violation(b, a))


# -- an authority's own guard ------------------------------------------------


class SafeVoterTests(SynchronousTestCase):
    def test_rules(self):
        g = F.SafeVoter()
        self.assertTrue(g.may_vote(vote(height=5, source_height=4)))
        g.advance(F.Record.of(vote(height=5, source_height=4)))
        for v, ok in (
            (vote(height=5, source_height=4), False),  # at the last height, even the same vote
            (vote(height=4, source_height=3), False),
            (vote(height=6, source_height=3), False),  # lower source: surrounds the last vote
            (vote(height=6, source_height=4), True),
            (vote(height=9, source_height=7), True),
        ):
            self.assertEqual(g.may_vote(v), ok, v)
        self.assertRaises(ValueError, g.advance, F.Record.of(vote(height=4, source_height=3)))
        self.assertEqual(g.last, (5, h(5), 4, h(4)))

    def test_record_round_trip(self):
        rec = F.Record.of(vote(height=5, source_height=4))
        obj = rec.to_json()
        self.assertEqual(obj, {"height": 5, "hash": h(5), "source_height": 4, "source_hash": h(4)})
        self.assertEqual(F.Record.from_json(json.loads(json.dumps(obj))), rec)
        for bad in (None, [], dict(obj, x=1), dict(obj, height="5"), dict(obj, source_height=5),
                    dict(obj, hash=h(5)[:10]), dict(obj, hash=h(5).upper()), dict(obj, source_hash=None), {k: v for k, v in obj.items() if k != "hash"}):
            self.assertRaises(ValueError, F.Record.from_json, bad)

    def test_not_mine(self):
        g = F.SafeVoter(F.Record.of(vote(height=5, source_height=4)))
        self.assertFalse(g.not_mine(vote(height=5, source_height=4)))
        self.assertTrue(g.not_mine(vote(height=5, source_height=3)))
        self.assertTrue(g.not_mine(vote(height=6, source_height=4)))
        self.assertFalse(g.not_mine(vote(height=4, source_height=3)))  # could be an old one of ours
        self.assertTrue(F.SafeVoter().not_mine(vote()))

    @given(st.lists(st.tuples(small_vote, st.booleans()), max_size=40))
    def test_never_allows_a_violating_pair(self, proposals):
        """Driven by random votes to sign (and restarts from the persisted
        record), the guard allows exactly the votes that go above the last
        one and break no rule with any vote allowed before."""
        g = F.SafeVoter()
        allowed = []
        for spec, restart in proposals:
            v = make_vote(spec)
            if restart:  # the node restarts from what it persisted
                g = F.SafeVoter(F.Record.from_json(g.last.to_json()) if g.last else None)
            safe = (not allowed or v.height > allowed[-1].height) and all(F.violation(e, v) is None for e in allowed)
            self.assertEqual(g.may_vote(v), safe, (v, allowed))
            if g.may_vote(v):
                g.advance(F.Record.of(v))
                allowed.append(v)
        for i, a in enumerate(allowed):
            for b in allowed[i + 1:]:
                self.assertIsNone(F.violation(a, b))


# -- votes in blocks -----------------------------------------------------------

AUTH_KEYS = [key(50 + i) for i in range(7)]
OUTSIDER = key(49)


def authorities(n):
    return {k.address: k.public_key for k in AUTH_KEYS[:n]}


class BlockVotesTests(SynchronousTestCase):
    def setUp(self):
        self.g = F.Finality.genesis(h(0))
        self.auth = authorities(4)

    def votes(self, keys, height, source_height, target=None, source=None, chain_id=CHAIN_ID):
        return F.block_votes([vote(k, height, target, source_height, source, chain_id) for k in keys])

    def check(self, parent, votes, before, jailed=frozenset(), auth=None):
        return F.check_block_votes(CHAIN_ID, h(parent), parent, votes, auth or self.auth, jailed, before)

    def test_justify_then_finalize(self):
        # Block 1 carries nothing (genesis needs no votes).
        self.assertEqual(self.check(0, [], self.g), self.g)
        after1 = self.check(0, [], self.g)
        # Block 2 carries 3 of 4 votes for block 1, source genesis: 1 is justified.
        after2 = self.check(1, self.votes(AUTH_KEYS[:3], 1, 0), after1)
        self.assertEqual(after2, F.Finality((1, h(1)), (0, h(0))))
        # Block 3: 3 votes for 2 with source 1: 2 justified, 1 finalized.
        after3 = self.check(2, self.votes(AUTH_KEYS[1:4], 2, 1), after2)
        self.assertEqual(after3, ((2, h(2)), (1, h(1))))
        self.assertEqual(after3.to_json(), {"justified": {"height": 2, "hash": h(2)},
                                            "finalized": {"height": 1, "hash": h(1)}})
        self.assertEqual(F.Finality.from_json(json.loads(json.dumps(after3.to_json()))), after3)
        # Block 4: only 2 votes for 3: nothing changes.
        after4 = self.check(3, self.votes(AUTH_KEYS[:2], 3, 2), after3)
        self.assertEqual(after4, after3)
        # Block 5: votes for 4 with source 2 justify 4, finalize nothing (3 is not justified).
        after5 = self.check(4, self.votes(AUTH_KEYS[:4], 4, 2), after4)
        self.assertEqual(after5, ((4, h(4)), (1, h(1))))
        # Block 6: votes for 5 with source 4: 4 finalized.
        self.assertEqual(self.check(5, self.votes(AUTH_KEYS[:3], 5, 4), after5), ((5, h(5)), (4, h(4))))

    def test_jailed_authorities_shrink_the_quorum_and_do_not_vote(self):
        jailed = {AUTH_KEYS[3].address}
        after = self.check(1, self.votes(AUTH_KEYS[:3], 1, 0), self.g, jailed)  # 3 of 3
        self.assertEqual(after.justified, (1, h(1)))
        after = self.check(1, self.votes(AUTH_KEYS[:2], 1, 0), self.g, jailed)  # 2 of 3
        self.assertEqual(after, self.g)
        e = self.assertRaises(AitError, self.check, 1, self.votes(AUTH_KEYS[1:4], 1, 0), self.g, jailed)
        self.assertIn("not a non-jailed authority", e.message)
        # Every authority jailed: nothing can be justified, and no vote is welcome.
        everyone = set(self.auth)
        self.assertEqual(self.check(1, [], self.g, everyone), self.g)
        self.assertRaises(AitError, self.check, 1, self.votes(AUTH_KEYS[:1], 1, 0), self.g, everyone)

    def test_one_authority(self):
        auth = authorities(1)
        after = self.check(1, self.votes(AUTH_KEYS[:1], 1, 0), self.g, auth=auth)
        after = self.check(2, self.votes(AUTH_KEYS[:1], 2, 1), after, auth=auth)
        self.assertEqual(after, ((2, h(2)), (1, h(1))))

    def test_refusals(self):
        good = self.votes(AUTH_KEYS[:3], 1, 0)
        cases = {
            "not a list": {"v": good[0]},
            "unsorted": list(reversed(good)),
            "twice": [good[0], good[0], good[1]],
            "outsider": self.votes([OUTSIDER] + AUTH_KEYS[:2], 1, 0),
            "wrong target hash": self.votes(AUTH_KEYS[:3], 1, 0, target=h("1b")),
            "wrong target height": self.votes(AUTH_KEYS[:3], 2, 0, target=h(1)),
            "wrong source": self.votes(AUTH_KEYS[:3], 1, 0, source=h("0b")),
            "other chain": self.votes(AUTH_KEYS[:3], 1, 0, chain_id="another-chain"),
            "bad format": [dict(good[0], height="1")] + good[1:],
            "too many": good + good[:2],
        }
        for name, votes in cases.items():
            e = self.assertRaises(AitError, self.check, 1, votes, self.g)
            self.assertEqual(e.code, "bad_block", name)
        # A forged signature: votes signed by OUTSIDER under an authority's name.
        forged = [dict(w, sig=vote(OUTSIDER, 1, None, 0).sig) for w in good]
        self.assertEqual(self.assertRaises(AitError, self.check, 1, forged, self.g).code, "bad_block")
        # Nothing is justified at genesis's child from votes for genesis (there are none).
        self.assertRaises(AitError, self.check, 0, good, self.g)

    def test_the_caller_gives_a_source_below_the_parent(self):
        self.assertRaises(ValueError, self.check, 1, [], F.Finality(F.Checkpoint(1, h(1)), F.Checkpoint(0, h(0))))

    def test_votes_root(self):
        votes = self.votes(AUTH_KEYS[:3], 1, 0)
        self.assertEqual([w["voter"] for w in votes], sorted(k.address for k in AUTH_KEYS[:3]))
        self.assertEqual(F.votes_root(votes), merkle_root([sha256_hex(canonical(w)) for w in votes]))
        self.assertEqual(F.votes_root([]), "0" * 64)
        self.assertNotEqual(F.votes_root(votes), F.votes_root(votes[:2]))


def reference_finality(n_blocks, candidates, auth, jailed, q):
    """Justified and finalized heights by their definitions over all the
    votes carried, recursively: h >= 1 is justified iff at least q distinct
    non-jailed authorities signed a vote for (h, hash h) whose source is
    the greatest justified height below h; h is finalized iff h and h + 1
    are justified (0 is both).  Returns (justified set, finalized set)."""
    memo = {0: True}

    def justified(x):
        if x not in memo:
            src = max(j for j in range(x) if justified(j))
            voters = {v.voter for v in candidates.get(x, []) if v.voter in auth and v.voter not in jailed
                      and v.target == (x, h(x)) and v.source == (src, h(src))
                      and F.verify_vote(v, CHAIN_ID, auth[v.voter])}
            memo[x] = len(voters) >= q
        return memo[x]

    J = {x for x in range(n_blocks) if justified(x)}
    return J, {0} | {x for x in J if x + 1 in J}


FAULTS = ["ok"] * 6 + ["wrong_source", "wrong_target", "other_chain", "jailed", "outsider", "twice"]


class JustificationPropertyTests(SynchronousTestCase):
    @given(st.integers(1, 7), st.data())
    def test_matches_reference(self, n, data):
        keys = AUTH_KEYS[:n]
        auth = authorities(n)
        jailed = set(data.draw(st.sets(st.sampled_from([k.address for k in keys]), max_size=n // 3)))
        active = [k for k in keys if k.address not in jailed]
        q = F.quorum(n - len(jailed))
        n_blocks = data.draw(st.integers(2, 10))
        status = F.Finality.genesis(h(0))
        carried = {}
        for parent in range(1, n_blocks):
            src = status.justified
            votes = []
            for k in data.draw(st.lists(st.sampled_from(active), unique=True, max_size=len(active))):
                fault = data.draw(st.sampled_from(FAULTS))
                if fault == "jailed":
                    k = data.draw(st.sampled_from(keys)) if jailed else k
                elif fault == "outsider":
                    k = OUTSIDER
                target = h(f"{parent}x") if fault == "wrong_target" else h(parent)
                s = (src.height, h(f"{src.height}x")) if fault == "wrong_source" else src
                cid = "another-chain" if fault == "other_chain" else CHAIN_ID
                v = F.sign_vote(k, cid, parent, target, *s)
                votes.append(v)
                if fault == "twice":
                    votes.append(v)
            wire = F.block_votes(votes)
            good = [v for v in votes if v.voter in auth and v.voter not in jailed and v.target == (parent, h(parent))
                    and v.source == src and F.verify_vote(v, CHAIN_ID, auth[v.voter])]
            good = list({v.voter: v for v in good}.values())
            if len(good) < len(votes):
                e = self.assertRaises(AitError, F.check_block_votes, CHAIN_ID, h(parent), parent, wire, auth, jailed, status)
                self.assertEqual(e.code, "bad_block")
            else:
                self.assertEqual(F.check_block_votes(CHAIN_ID, h(parent), parent, wire, auth, jailed, status),
                                 F.check_block_votes(CHAIN_ID, h(parent), parent, F.block_votes(good), auth, jailed, status))
            # The block as an honest proposer builds it, from the good votes.
            status = F.check_block_votes(CHAIN_ID, h(parent), parent, F.block_votes(good), auth, jailed, status)
            carried[parent] = votes  # the reference sees every vote, good or not
            J, Fin = reference_finality(parent + 1, carried, auth, jailed, q)
            self.assertEqual(status.justified, (max(J), h(max(J))))
            self.assertEqual(status.finalized, (max(Fin), h(max(Fin))))


# -- the vote pool -------------------------------------------------------------


class VotePoolTests(SynchronousTestCase):
    def test_add_conflict_and_block(self):
        pool = F.VotePool()
        auth = authorities(4)
        a, b, c = (vote(k, 5, None, 4) for k in AUTH_KEYS[:3])
        self.assertEqual(pool.add(a), (True, None))
        self.assertEqual(pool.add(a), (False, None))
        self.assertEqual(pool.add(b), (True, None))
        self.assertEqual(pool.add(c), (True, None))
        self.assertEqual(len(pool), 3)
        double = vote(AUTH_KEYS[0], 5, h("5b"), 4)
        self.assertEqual(pool.add(double), (False, a))
        surround = vote(AUTH_KEYS[1], 6, None, 3)
        self.assertEqual(pool.add(surround), (False, b))
        self.assertEqual(len(pool), 3)
        self.assertEqual(pool.for_block(F.Checkpoint(5, h(5)), F.Checkpoint(4, h(4)), auth, set()), F.block_votes([a, b, c]))
        self.assertEqual(pool.for_block(F.Checkpoint(5, h(5)), F.Checkpoint(4, h(4)), auth, {b.voter}), F.block_votes([a, c]))
        self.assertEqual(pool.for_block(F.Checkpoint(5, h(5)), F.Checkpoint(3, h(3)), auth, set()), [])
        self.assertEqual(pool.for_block(F.Checkpoint(5, h("5b")), F.Checkpoint(4, h(4)), auth, set()), [])
        self.assertEqual(pool.for_block(F.Checkpoint(5, h(5)), F.Checkpoint(4, h(4)), authorities(2), set()),
                         F.block_votes([v for v in (a, b) if v.voter in authorities(2)]))
        pool.prune(6)
        self.assertEqual(len(pool), 0)

    def test_per_voter_bound_drops_the_lowest(self):
        pool = F.VotePool(per_voter=3)
        for t in range(1, 6):
            pool.add(vote(VOTER, t, None, t - 1))
        self.assertEqual(len(pool), 3)
        self.assertEqual(pool.for_block(F.Checkpoint(2, h(2)), F.Checkpoint(1, h(1)), {VOTER.address: b""}, set()), [])
        self.assertEqual(len(pool.for_block(F.Checkpoint(5, h(5)), F.Checkpoint(4, h(4)), {VOTER.address: b""}, set())), 1)
