"""Tests for aitnode.proposer: block production on a Clock."""

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from aitnode.proposer import ProposerService

from tests.common import ALICE, BOB, genesis_doc, key, make_node, transfer

K1, K2 = key(21), key(22)  # two authorities


class Boom(Exception):
    pass


class ProposerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.node = make_node(self, clock=self.clock)
        self.service = ProposerService(self.node.pipeline, self.clock, 2.0)

    def height(self):
        return self.node.queries.get_head()["height"]

    def start(self):
        self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())

    def test_no_block_before_interval(self):
        self.start()
        self.assertTrue(self.service.running)
        self.clock.advance(1.999)
        self.assertEqual(self.height(), 0)
        self.clock.advance(0.001)
        self.assertEqual(self.height(), 1)

    def test_one_block_per_interval(self):
        self.start()
        t = transfer(ALICE, 1, BOB, 5)
        self.node.admission.submit(t.to_wire())
        for expected in range(1, 6):
            self.clock.advance(2.0)
            self.assertEqual(self.height(), expected)
        self.assertEqual(self.node.queries.get_tx(t.hash)["block"]["height"], 1)
        self.assertEqual(self.node.store.block_at(2)["txs"], [])
        # Block timestamps (ms) follow the clock.
        self.assertEqual(self.node.store.block_at(5)["header"]["timestamp"], 10_000)
        self.clock.advance(1.0)
        self.assertEqual(self.height(), 5)

    def test_timestamps_follow_clock(self):
        self.clock.advance(1_800_000_000)
        self.start()
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(self.node.store.block_at(1)["header"]["timestamp"], 1_800_000_002_000)
        self.assertEqual(self.node.store.block_at(2)["header"]["timestamp"], 1_800_000_004_000)

    def test_exception_logged_and_next_round_runs(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        real = self.node.pipeline.propose
        calls = []

        def once():
            calls.append(1)
            if len(calls) == 1:
                raise Boom("proposal exploded")
            return real()

        self.node.pipeline.propose = once
        self.start()
        self.node.admission.submit(transfer(ALICE, 1, BOB, 5).to_wire())
        self.clock.advance(2.0)
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.height(), 0)
        self.assertEqual(self.service.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, Boom)
        self.assertEqual(failures[0].get("event"), "propose_failed")
        # The loop still runs: the next interval produces a block with the tx.
        self.assertTrue(self.service._loop.running)
        self.clock.advance(2.0)
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.height(), 1)
        self.assertEqual(len(self.node.store.block_at(1)["txs"]), 1)
        self.clock.advance(2.0)
        self.assertEqual(self.height(), 2)
        self.assertEqual(self.service.failures, 1)

    def test_repeated_exceptions_never_stop_the_loop(self):
        real = self.node.pipeline.propose
        calls = []

        def flaky():
            calls.append(1)
            if len(calls) <= 3:
                raise ValueError("again")
            return real()

        self.node.pipeline.propose = flaky
        self.start()
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.assertEqual(self.height(), 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)
        self.clock.advance(2.0)
        self.assertEqual(self.height(), 1)

    def test_stop_service(self):
        self.start()
        self.clock.advance(2.0)
        self.assertEqual(self.height(), 1)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.service.stopService()
        self.assertFalse(self.service.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10.0)
        self.assertEqual(self.height(), 1)
        # Stopping twice is harmless; starting again resumes.
        self.service.stopService()
        self.service.startService()
        self.clock.advance(2.0)
        self.assertEqual(self.height(), 2)
        self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_non_proposer_node_makes_no_blocks(self):
        node = make_node(self, key=ALICE, clock=self.clock)
        self.assertFalse(node.is_proposer)
        service = ProposerService(node.pipeline, self.clock, 0.5)
        service.startService()
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(node.queries.get_head()["height"], 0)
        self.assertEqual(service.failures, 0)
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TurnTests(SynchronousTestCase):
    interval = 2.0

    def setUp(self):
        self.clock = Clock()
        doc = genesis_doc(authorities=(K1, K2), block_interval_ms=int(self.interval * 1000))
        self.n1 = make_node(self, doc=doc, key=K1, clock=self.clock)
        self.n2 = make_node(self, doc=doc, key=K2, clock=self.clock)

    def due_for(self, node):
        return ProposerService(node.pipeline, self.clock, self.interval).due()

    def due(self):
        return self.due_for(self.n1), self.due_for(self.n2)

    def test_in_turn_after_interval_out_of_turn_after_three(self):
        # Height 1: authorities[1 % 2] = K2 is in turn.
        self.assertEqual(self.due(), (False, False))
        self.clock.advance(self.interval - 0.01)
        self.assertEqual(self.due(), (False, False))
        self.clock.advance(0.01)
        self.assertEqual(self.due(), (False, True))
        self.clock.advance(2 * self.interval - 0.01)
        self.assertEqual(self.due(), (False, True))
        self.clock.advance(0.01)
        self.assertEqual(self.due(), (True, True))

    def test_turns_alternate_with_height(self):
        self.clock.advance(self.interval)
        b = self.n2.pipeline.propose()
        self.n1.pipeline.import_block(b, [])
        # Height 2: K1 is in turn, counted from the parent's timestamp.
        self.assertEqual(self.due(), (False, False))
        self.clock.advance(self.interval)
        self.assertEqual(self.due(), (True, False))
        self.clock.advance(2 * self.interval)
        self.assertEqual(self.due(), (True, True))

    def test_a_higher_chain_elsewhere_never_delays_a_turn(self):
        """Whatever height peers claim, or even verified headers ahead of
        the head, an authority proposes on its turn; the one behind syncs
        meanwhile and fork choice settles the two blocks."""
        self.clock.advance(10 * self.interval)
        self.assertEqual(self.due(), (True, True))
        self.n1.pipeline.header_verified(5)
        self.n2.pipeline.header_verified(5)
        self.assertEqual(self.due(), (True, True))
        self.n2.pipeline.propose()
        self.assertEqual(self.due(), (True, False))  # n2's head changed just now; n1 is not told yet
        self.clock.advance(10 * self.interval)
        self.assertEqual(self.due(), (True, True))

    def test_follower_never_due(self):
        follower = make_node(self, doc=genesis_doc(authorities=(K1, K2)), key=None, clock=self.clock)
        self.clock.advance(100)
        self.assertFalse(self.due_for(follower))

    def test_single_authority_due_each_interval(self):
        node = make_node(self, clock=self.clock)  # block_interval_ms 10
        self.assertFalse(self.due_for(node))
        self.clock.advance(0.01)
        self.assertTrue(self.due_for(node))
        node.pipeline.propose()
        self.assertFalse(self.due_for(node))
        self.clock.advance(0.01)
        self.assertTrue(self.due_for(node))
