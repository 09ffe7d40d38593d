"""Tests for aitnode.voting.Ballot: the node's own votes (once per head,
persisted before they leave, never against the rules, across a restart
too), the votes and evidence it hears, what the next block carries, and
the protection against another machine signing with the node's key.

Our node is authority A0 of four; blocks come from a second node
(Builder, never signed by A0 unless a test says so) and are imported
through the pipeline, as sync does.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from aitnode import consensus as C, evidence as E, finality as F
from aitnode.errors import AitError
from aitnode.genesis import Genesis
from aitnode.node import compose

from tests.common import CHAIN_ID, make_node
from tests.test_consensus import A0, A1, A2, A3, KEYS, X, Builder, copy_to, double_proposal, doc, resign


def sample(node, name, **labels):
    return node.metrics.registry.get_sample_value(name, labels)


class BallotTestBase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.path = self.mktemp()
        self.node = self.open()
        self.src = make_node(self, doc=doc(), key=None)
        self.b = Builder(self.src)
        self.sent = []
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def open(self):
        """Our node (A0) on self.path: a restart opens the same data_dir."""
        node = compose(self.path, Genesis(doc()), self.clock, key=A0)
        self.addCleanup(node.store.close)  # (closing twice is harmless)
        node.ballot.vote_listeners.append(lambda wire: self.sent.append((wire, node.local.signed("vote"))))
        return node

    def restart(self):
        self.node.store.close()
        self.node = self.open()

    def logged(self, event):
        return [e for e in self.events if e.get("event") == event]

    def block(self, by=A1, voters=(), evidence=()):
        """A block made at the source node, imported by ours."""
        block = self.b.block(by=by, voters=voters, evidence=evidence)
        self.node.pipeline.import_block(block, [])
        return block

    def vote(self, signer, height, hash, source=None):
        source = source or self.node.chain.finality().justified
        return F.sign_vote(signer, CHAIN_ID, height, hash, source.height, source.hash)

    def receive(self, vote):
        return self.node.ballot.receive_vote(vote.to_wire() if isinstance(vote, F.Vote) else vote)


class OwnVoteTests(BallotTestBase):
    def test_one_vote_for_each_new_head(self):
        b1 = self.block()
        genesis = self.node.chain.genesis.hash
        record = {"height": 1, "hash": b1["hash"], "source_height": 0, "source_hash": genesis}
        # It went out once, and was on disk before it did.
        self.assertEqual(len(self.sent), 1)
        wire, on_disk = self.sent[0]
        self.assertEqual(on_disk, record)
        self.assertEqual({k: wire[k] for k in record}, record)
        self.assertEqual(wire["voter"], A0.address)
        self.assertTrue(F.verify_vote(F.parse_vote(wire), CHAIN_ID, A0.public_key))
        self.assertIsNone(self.node.ballot.vote())  # the same head: nothing more
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(sample(self.node, "aitnode_votes_total", result="sent"), 1)
        self.assertEqual(len(self.logged("vote_sent")), 1)
        b2 = self.block(voters=KEYS)  # carries the votes for 1: justified 1
        wire, on_disk = self.sent[-1]
        self.assertEqual(on_disk, {"height": 2, "hash": b2["hash"], "source_height": 1, "source_hash": b1["hash"]})
        self.assertEqual(len(self.sent), 2)
        # Its own vote is in its pool, for its next block.
        votes, _ = self.node.ballot.block_fields(self.node.chain)
        self.assertEqual(votes, [wire])

    def evidence_against(self, signer):
        """Evidence of two headers by signer at the next height, made on a
        scratch copy of the source chain (our node never sees the headers)."""
        scratch = make_node(self, doc=doc(), key=None)
        copy_to(self.b, scratch)
        block = Builder(scratch).block(by=signer)
        return double_proposal(scratch.chain, signer, block["header"]["height"])

    def test_a_follower_and_a_jailed_authority_do_not_vote(self):
        follower = make_node(self, doc=doc(), key=None)
        block = self.b.block(by=A1)
        follower.pipeline.import_block(block, [])
        self.assertIsNone(follower.local.signed("vote"))
        self.assertIsNone(follower.ballot.vote())
        self.node.pipeline.import_block(block, [])
        self.assertEqual(len(self.sent), 1)
        # A0 jailed by the evidence in block 2: from block 3 on, no vote.
        self.block(by=A2, evidence=[self.evidence_against(A0)])
        self.assertEqual(len(self.sent), 2)  # block 2's set still had A0 active
        self.assertIn(A0.address, C.set_of(self.node.chain.view()).jailed)
        self.block()
        self.block()
        self.assertEqual(len(self.sent), 2)
        self.assertFalse(self.node.pipeline.signing_stopped)


class RestartTests(BallotTestBase):
    def test_a_restart_never_signs_again_at_or_below_the_last_vote(self):
        self.block()
        b2 = self.block()
        self.assertEqual(self.node.local.signed("vote")["height"], 2)
        self.restart()
        self.assertEqual(self.node.ballot.voter.last, F.Record(2, b2["hash"], 0, self.node.chain.genesis.hash))
        self.assertIsNone(self.node.ballot.vote())  # the same head as before the restart
        # The head changes to another block at height 2 (a reorganisation):
        # a vote for it would be a double vote, so none comes.
        other = make_node(self, doc=doc(), key=None)
        copy_to(self.b, other)
        other.chain.rollback(1)
        ob = Builder(other)
        ob.block(by=A2)
        b3 = ob.block(by=A2, voters=(A1, A2, A3))  # justified 2': a better branch
        n = len(self.sent)
        committed = self.successResultOf(Deferred.fromCoroutine(self.node.pipeline.reorganise(1, ob.entries(1))))
        self.assertEqual([b["hash"] for b in committed], [b["hash"] for b, _ in ob.entries(1)])
        wire, record = self.sent[-1]
        self.assertEqual(len(self.sent), n + 1)  # one vote, for 3 (above the last), none for 2'
        self.assertEqual((wire["height"], wire["hash"]), (3, b3["hash"]))
        self.assertEqual(record["source_height"], 2)
        self.restart()
        self.assertIsNone(self.node.ballot.vote())
        self.assertEqual(self.node.local.signed("vote"), record)

    def test_a_record_written_but_not_sent_still_counts(self):
        """A crash between persisting a vote and sending it loses that vote;
        the node still never signs another one at that height."""
        self.block()
        self.node.local.put_signed("vote", F.Record(5, "ab" * 32, 0, self.node.chain.genesis.hash).to_json())
        self.restart()
        for _ in range(4):
            self.block()
        self.assertEqual(self.node.chain.head()[0], 5)
        n = len(self.sent)
        self.assertIsNone(self.node.ballot.vote())
        self.block()
        self.assertEqual(len(self.sent), n + 1)
        self.assertEqual(self.sent[-1][0]["height"], 6)


class ReceiveTests(BallotTestBase):
    def setUp(self):
        super().setUp()
        for _ in range(3):
            self.block()
        self.head = self.node.chain.head()

    def test_a_good_vote_is_pooled_once(self):
        v = self.vote(A1, *self.head)
        self.assertTrue(self.receive(v))
        self.assertFalse(self.receive(v))
        self.assertEqual(sample(self.node, "aitnode_votes_total", result="received"), 1)
        votes, _ = self.node.ballot.block_fields(self.node.chain)
        self.assertIn(v.to_wire(), votes)
        # One for the next height (a block not here yet) is kept too.
        self.assertTrue(self.receive(self.vote(A2, self.head[0] + 1, "cd" * 32)))

    def test_junk_refused(self):
        pooled = len(self.node.ballot.votes)  # its own
        good = self.vote(A1, *self.head).to_wire()
        for bad in (None, [], "vote", {}, dict(good, height="3"), dict(good, sig="00" * 64),
                    dict(good, extra=1), {k: v for k, v in good.items() if k != "sig"},
                    dict(good, source_height=good["height"])):
            with self.assertRaises(AitError) as e:
                self.receive(bad)
            self.assertEqual(e.exception.code, "bad_vote", bad)
        # Signed by a key that is no authority's.
        with self.assertRaises(AitError) as e:
            self.receive(self.vote(X, *self.head))
        self.assertEqual(e.exception.code, "bad_vote")
        # An authority's address, another key's signature.
        forged = dict(self.vote(X, *self.head).to_wire(), voter=A1.address)
        with self.assertRaises(AitError):
            self.receive(forged)
        self.assertEqual(sample(self.node, "aitnode_votes_total", result="refused"), 3)  # zero sig, X, forged
        self.assertEqual(len(self.node.ballot.votes), pooled)

    def test_votes_it_cannot_use_are_ignored(self):
        self.block(voters=KEYS)
        self.block(voters=KEYS)  # finalized 3
        final = self.node.chain.finality().finalized
        self.assertEqual(final.height, 3)
        g = self.node.chain.genesis
        self.assertFalse(self.receive(self.vote(A1, final.height, final.hash, F.Checkpoint(0, g.hash))))  # settled
        height = self.node.chain.head()[0]
        self.assertFalse(self.receive(self.vote(A1, height + 2, "ab" * 32)))  # too far ahead to judge

    def test_a_double_vote_becomes_evidence(self):
        evidence = []
        self.node.ballot.evidence_listeners.append(evidence.append)
        a = self.vote(A1, self.head[0], self.head[1])
        b = self.vote(A1, self.head[0], "ee" * 32)
        self.assertTrue(self.receive(a))
        self.assertFalse(self.receive(b))
        [ev] = evidence
        parsed = E.parse_evidence(ev)
        self.assertEqual((parsed.offender, parsed.offence), (A1.address, F.DOUBLE_VOTE))
        self.assertEqual(sample(self.node, "aitnode_evidence_total", kind=F.DOUBLE_VOTE), 1)
        self.assertEqual(sample(self.node, "aitnode_votes_total", result="conflict"), 1)
        self.assertEqual(len(self.logged("evidence_found")), 1)
        _, offered = self.node.ballot.block_fields(self.node.chain)
        self.assertEqual(offered, [ev])
        # Heard again (from a peer), it is not new.
        self.assertFalse(self.node.ballot.receive_evidence(ev))
        self.assertEqual(len(evidence), 1)
        # Once a block records it, the pool lets it go.
        self.block(evidence=[ev])
        self.assertEqual(self.node.ballot.block_fields(self.node.chain)[1], [])
        self.assertEqual(self.node.ballot.evidence, {})

    def test_a_surround_vote_becomes_evidence(self):
        g = self.node.chain.genesis.hash
        one = self.node.chain.store.hash_at(1)
        wide = F.sign_vote(A2, CHAIN_ID, self.head[0], self.head[1], 0, g)
        inner = F.sign_vote(A2, CHAIN_ID, self.head[0] - 1, self.node.chain.store.hash_at(2), 1, one)
        self.assertTrue(self.receive(inner))
        self.assertFalse(self.receive(wide))
        [ev] = self.node.ballot.evidence.values()
        self.assertEqual((ev.offender, ev.offence), (A2.address, F.SURROUND_VOTE))

    def test_evidence_from_a_peer(self):
        ev = self.evidence_against_votes()
        self.assertTrue(self.node.ballot.receive_evidence(ev))
        self.assertFalse(self.node.ballot.receive_evidence(ev))
        for bad in (None, {}, dict(ev, kind="nonsense"), dict(ev, a=ev["b"])):
            with self.assertRaises(AitError) as e:
                self.node.ballot.receive_evidence(bad)
            self.assertEqual(e.exception.code, "bad_evidence")
        # Two votes that break no rule are no evidence; X's are no authority's.
        x = E.vote_evidence(F.sign_vote(X, CHAIN_ID, 3, "aa" * 32, 0, "bb" * 32),
                            F.sign_vote(X, CHAIN_ID, 3, "cc" * 32, 0, "bb" * 32)).to_wire()
        with self.assertRaises(AitError) as e:
            self.node.ballot.receive_evidence(x)
        self.assertEqual(e.exception.code, "bad_evidence")

    def evidence_against_votes(self, who=A3):
        return E.vote_evidence(F.sign_vote(who, CHAIN_ID, 3, "aa" * 32, 0, "bb" * 32),
                               F.sign_vote(who, CHAIN_ID, 3, "cc" * 32, 0, "bb" * 32)).to_wire()

    def test_two_headers_by_one_proposer(self):
        ours = self.node.chain.store.block_at(2)
        self.assertEqual(ours["header"]["proposer"], A1.address)
        twin = resign(ours, A1, timestamp=ours["header"]["timestamp"] + 1)
        self.node.ballot.seen_header(ours["header"], ours["sig"])  # the same one: nothing
        self.assertEqual(self.node.ballot.evidence, {})
        self.node.ballot.seen_header(twin["header"], "00" * 64)  # a bad signature: nothing
        self.node.ballot.seen_header({"height": "x"}, None)  # junk: nothing
        self.assertEqual(self.node.ballot.evidence, {})
        self.node.ballot.seen_header(twin["header"], twin["sig"])
        [ev] = self.node.ballot.evidence.values()
        self.assertEqual((ev.offender, ev.offence), (A1.address, E.DOUBLE_PROPOSAL))
        self.assertFalse(self.node.pipeline.signing_stopped)

    def test_block_fields(self):
        """The votes for the head with its justified block as source, by
        authorities active in the head's set; sorted by voter."""
        self.block(by=A2, evidence=[self.evidence_against_votes(A3)])  # A3 jailed from the next block on
        self.block()
        head = self.node.chain.head()
        for k in (A3, A2, A1):
            self.receive(self.vote(k, *head))
        self.receive(self.vote(A1, head[0] - 1, self.node.chain.store.hash_at(head[0] - 1)))  # not for the head
        votes, _ = self.node.ballot.block_fields(self.node.chain)
        self.assertEqual([v["voter"] for v in votes], sorted([A0.address, A1.address, A2.address]))
        justified = self.node.chain.finality().justified
        self.assertTrue(all((v["height"], v["hash"]) == head for v in votes))
        self.assertTrue(all((v["source_height"], v["source_hash"]) == justified for v in votes))
        # Our node's next block carries them, and they justify the head.
        block = self.node.pipeline.propose()
        self.assertEqual(block["votes"], votes)
        self.assertEqual(self.node.chain.finality().justified, F.Checkpoint(*head))


class SetChangeVoteTests(BallotTestBase):
    """A block whose authority set differs from its parent's is what a
    light client takes the new set from, on the word of the votes it
    carries for its parent: the proposer holds it back (one block
    interval at most) until those votes reach quorum."""

    def setUp(self):
        super().setUp()
        for _ in range(3):
            self.block()

    def interval(self):
        return self.node.chain.view().param("block_interval_ms") / 1000

    def jailing_block(self):
        evidence = ReceiveTests.evidence_against_votes(self, A3)
        self.block(by=A2, evidence=[evidence])  # A3 jailed from the next block on
        head = self.node.chain.head()
        self.assertNotEqual(C.set_of(self.node.chain.view()).hash, self.node.chain.head_header()["authorities_hash"])
        self.clock.advance(60)  # well past every turn
        return head

    def test_held_back_until_the_votes_come(self):
        head = self.jailing_block()
        self.assertIsNone(self.node.pipeline.propose())  # only its own vote: 1 of 4
        self.receive(self.vote(A1, *head))
        self.clock.advance(self.interval() / 2)
        self.assertIsNone(self.node.pipeline.propose())  # 2 of 4, q = 3
        self.receive(self.vote(A2, *head))
        block = self.node.pipeline.propose()
        self.assertEqual(block["header"]["height"], head[0] + 1)
        self.assertEqual(len(block["votes"]), 3)
        self.assertIn("authorities", block)
        self.assertEqual(self.node.chain.finality().justified, F.Checkpoint(*head))

    def test_proposed_anyway_after_one_interval(self):
        head = self.jailing_block()
        self.assertIsNone(self.node.pipeline.propose())
        self.clock.advance(self.interval() * 0.9)
        self.assertIsNone(self.node.pipeline.propose())
        self.clock.advance(self.interval() * 0.2)
        block = self.node.pipeline.propose()
        self.assertEqual((block["header"]["height"], len(block["votes"])), (head[0] + 1, 1))

    def test_a_block_without_a_set_change_never_waits(self):
        self.block()
        self.clock.advance(60)
        self.assertIsNotNone(self.node.pipeline.propose())


class KeyConflictTests(BallotTestBase):
    """Another machine signing with A0's key: the node logs an error, sets
    aitnode_authority_key_conflict and signs nothing (no vote, no block)
    until it is restarted."""

    def setUp(self):
        super().setUp()
        self.block()
        self.block()
        self.assertFalse(self.node.pipeline.signing_stopped)
        self.assertEqual(sample(self.node, "aitnode_authority_key_conflict"), 0)

    def assertStopped(self):
        self.assertTrue(self.node.pipeline.signing_stopped)
        self.assertEqual(sample(self.node, "aitnode_authority_key_conflict"), 1)
        [event] = self.logged("authority_key_conflict")
        self.assertEqual(event["log_level"].name, "error")
        self.assertIn("another node is using this authority key", event["log_format"])
        n = len(self.sent)
        self.block()
        self.assertEqual(len(self.sent), n)  # no vote for the new head
        self.assertIsNone(self.node.pipeline.propose())  # no block
        self.restart()
        self.assertFalse(self.node.pipeline.signing_stopped)
        self.block()
        self.assertEqual(len(self.sent), n + 1)

    def test_a_vote_it_did_not_make(self):
        height, head = self.node.chain.head()
        mine = F.parse_vote(self.sent[-1][0])
        self.assertFalse(self.receive(mine))  # its own, relayed back: fine
        self.assertFalse(self.node.pipeline.signing_stopped)
        self.assertFalse(self.receive(self.vote(A0, height + 1, "ab" * 32)))
        self.assertStopped()

    def test_another_vote_at_its_last_height(self):
        height, _ = self.node.chain.head()
        self.assertFalse(self.receive(self.vote(A0, height, "ab" * 32)))
        self.assertStopped()

    def test_a_block_it_did_not_make(self):
        self.block(by=A0)  # made elsewhere with A0's key, imported here
        self.assertStopped()

    def test_a_second_header_with_its_key(self):
        proposed = self.node.pipeline.propose()
        self.src.chain.commit(*self.src.chain.verify_block(proposed, []))  # the source follows
        twin = resign(proposed, A0, timestamp=proposed["header"]["timestamp"] + 1)
        self.node.ballot.seen_header(twin["header"], twin["sig"])
        [ev] = self.node.ballot.evidence.values()
        self.assertEqual(ev.offender, A0.address)
        self.assertStopped()

    def test_its_own_block_is_no_conflict(self):
        block = self.node.pipeline.propose()
        self.assertEqual(self.node.local.signed("proposal"), block["header"]["height"])
        self.assertFalse(self.node.pipeline.signing_stopped)
        self.assertEqual(self.sent[-1][0]["hash"], block["hash"])  # and it voted for it
