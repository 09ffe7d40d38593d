"""Tests for aitnode.pipeline: rollbacks and what comes back to the mempool."""

import lmdb

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from aitnode import unstorable
from aitnode.proposer import ProposerService

from tests.common import ALICE, BOB, CAROL, key, make_node, state_dump, transfer

K1, K2 = key(21), key(22)  # two authorities for the multi-authority tests
SERVER_ADDR = IPv4Address("TCP", "127.0.0.1", 9000)


class RollbackTests(SynchronousTestCase):
    def test_rollback_to_restores_exactly(self):
        node = make_node(self)
        store = node.store
        node.admission.submit(transfer(ALICE, 1, BOB, 10).to_wire())
        node.pipeline.propose()
        node.pipeline.propose()
        snap = (state_dump(store), store.state_root(), store.head(), node.chain.view().root())
        self.assertEqual(snap[3], store.block_at(2)["header"]["state_root"])
        later = [transfer(ALICE, 2, CAROL, 20), transfer(BOB, 1, CAROL, 30), transfer(ALICE, 3, CAROL, 40)]
        node.admission.submit(later[0].to_wire())
        node.admission.submit(later[1].to_wire())
        b3 = node.pipeline.propose()
        node.admission.submit(later[2].to_wire())
        node.admission.submit_own("PARAM_UPDATE", {"key": "max_block_txs", "value": 7})
        b4 = node.pipeline.propose()
        self.assertEqual(node.queries.get_params()["max_block_txs"], 7)
        dropped = store.rollback_to(2)
        self.assertEqual([w for w in dropped if w["type"] == "TRANSFER"], [t.to_wire() for t in later])
        self.assertEqual(len(dropped), 4)
        self.assertEqual((state_dump(store), store.state_root(), store.head(), node.chain.view().root()), snap)
        for t in later:
            self.assertIsNone(store.tx_record(t.hash))
            self.assertFalse(store.has_tx(t.hash))
        self.assertIsNotNone(store.tx_record(transfer(ALICE, 1, BOB, 10).hash))
        for h, b in ((3, b3), (4, b4)):
            self.assertIsNone(store.hash_at(h))
            self.assertIsNone(store.block_by_hash(b["hash"]))
        self.assertEqual(node.queries.get_balance(CAROL.address), {"balance": 0, "nonce": 0})
        self.assertNotEqual(node.queries.get_params()["max_block_txs"], 7)
        # The store's rollback leaves the proposer's record of what it signed
        # alone: it signed headers at 3 and 4, and signs none there again
        # (two headers at one height are evidence against it)...
        node.mempool.clear()
        node.admission.submit(later[0].to_wire())
        self.assertIsNone(node.pipeline.propose())
        self.assertEqual(store.head()[0], 2)
        # ...until the operator's rollback (pipeline.rollback) lowers it.
        node.pipeline.rollback(2)  # the head is at 2 already: only the record moves
        self.assertIn(later[0].hash, node.mempool)
        b3b = node.pipeline.propose()
        self.assertEqual(b3b["header"]["parent"], store.hash_at(2))
        other = make_node(self, key=None)
        for h in range(1, 4):
            e = node.chain.block_entry(h)
            other.pipeline.import_block(e["block"], [other.admission.parse(w) for w in e["txs"]])
        self.assertEqual(other.queries.get_head(), node.queries.get_head())

    def test_rollback_to_genesis_and_noop(self):
        node = make_node(self)
        genesis = (state_dump(node.store), node.store.state_root(), node.store.head())
        self.assertEqual(node.store.rollback_to(0), [])
        node.pipeline.propose()
        self.assertEqual(node.store.rollback_to(1), [])
        self.assertEqual(node.store.head()[0], 1)
        self.assertEqual(node.store.rollback_to(0), [])
        self.assertEqual((state_dump(node.store), node.store.state_root(), node.store.head()), genesis)

    def test_rollback_deeper_than_undo_refused(self):
        node = make_node(self)
        node.pipeline.propose()
        node.pipeline.propose()
        self.assertRaises(ValueError, node.store.rollback_to, -1)
        self.assertEqual(node.store.head()[0], 2)

    def test_undo_pruned_beyond_keep(self):
        import aitnode.store as storemod
        self.patch(storemod, "UNDO_KEEP", 3)
        node = make_node(self)
        for _ in range(6):
            node.pipeline.propose()
        self.assertEqual(node.store.undo_depth(), 2)
        self.assertRaises(ValueError, node.store.rollback_to, 3)
        node.store.rollback_to(4)
        self.assertEqual(node.store.head()[0], 4)

    def test_node_rollback_readmits(self):
        node = make_node(self)
        t1, t2, t3 = transfer(ALICE, 1, BOB, 1), transfer(ALICE, 2, BOB, 2), transfer(ALICE, 3, BOB, 3)
        node.admission.submit(t1.to_wire())
        node.pipeline.propose()
        node.admission.submit(t2.to_wire())
        node.pipeline.propose()
        node.admission.submit(t3.to_wire())  # still pending at the rollback
        seen = []
        node.admission.tx_listeners.append(lambda tx: seen.append(tx.hash))
        self.assertEqual(node.pipeline.rollback(0), 3)
        self.assertEqual([tx.hash for tx in node.mempool.all()], [t1.hash, t2.hash, t3.hash])
        self.assertEqual(seen, [t1.hash, t2.hash, t3.hash])
        self.assertEqual(node.queries.get_tx(t1.hash)["status"], "pending")
        block = node.pipeline.propose()
        self.assertEqual(block["txs"], [t1.hash, t2.hash, t3.hash])


class BreakingTxTests(SynchronousTestCase):
    """A transaction that makes building or storing a block fail leaves the
    mempool as failed, with the reason; the proposer goes on."""

    def setUp(self):
        self.clock = Clock()
        self.node = make_node(self, clock=self.clock)
        self.good = [transfer(ALICE, 1, CAROL, 1), transfer(ALICE, 2, CAROL, 2), transfer(ALICE, 3, CAROL, 3)]
        self.bad = transfer(BOB, 1, CAROL, 7)
        self.after_bad = transfer(BOB, 2, CAROL, 8)  # can never apply once bad is gone
        for tx in (self.good[0], self.bad, self.good[1], self.after_bad, self.good[2]):
            self.node.admission.submit(tx.to_wire())

    def refuse_to_store(self, tx_hash):
        """The store raises, as LMDB does for a key over 511 bytes, for any
        block that holds tx_hash."""
        store = self.node.store
        real = store._commit
        calls = []

        def commit(t, block, tx_records, changes, acc):
            calls.append([h for h, _ in tx_records])
            if any(h == tx_hash for h, _ in tx_records):
                raise lmdb.BadValsizeError("mdb_put: MDB_BAD_VALSIZE: Unsupported size of key/DB name/data")
            return real(t, block, tx_records, changes, acc)

        self.patch(store, "_commit", commit)
        return calls

    def assertDropped(self, code):
        q = self.node.queries
        got = q.get_tx(self.bad.hash)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["tx"], self.bad.to_wire())
        self.assertEqual(got["receipt"]["error"]["code"], code)
        self.assertEqual(q.get_tx(self.after_bad.hash)["receipt"]["error"]["code"], "predecessor_failed")
        self.assertNotIn(self.bad.hash, self.node.mempool)
        self.assertNotIn(self.after_bad.hash, self.node.mempool)
        for tx in self.good:
            self.assertEqual(q.get_tx(tx.hash)["status"], "included")
        self.assertEqual(q.get_balance(BOB.address)["nonce"], 0)
        self.assertEqual(self.node.metrics.txs.labels("TRANSFER", "failed")._value.get(), 2)
        return got

    def test_a_tx_whose_block_cannot_be_stored_is_dropped(self):
        calls = self.refuse_to_store(self.bad.hash)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        block = self.node.pipeline.propose()
        self.assertEqual(block["txs"], [tx.hash for tx in self.good])
        self.assertEqual(self.node.store.head(), (1, block["hash"]))
        got = self.assertDropped("tx_unstorable")
        self.assertIn("BadValsizeError", got["receipt"]["error"]["message"])
        # The whole block, then trial blocks (never stored), then the block without it.
        self.assertEqual(sorted(calls[0]), sorted(tx.hash for tx in self.good + [self.bad, self.after_bad]))
        self.assertLessEqual(len(calls), 1 + 2 + 3 + 1)  # whole, empty and whole, bisection, result
        self.assertEqual(calls[-1], block["txs"])
        logged = [e for e in events if e.get("event") == "tx_breaks_block"]
        self.assertEqual([e["tx_hash"] for e in logged], [self.bad.hash])
        # The chain goes on; the node's data reopens as it was.
        self.assertEqual(self.node.pipeline.propose()["header"]["height"], 2)

    def test_the_proposer_service_keeps_producing(self):
        self.refuse_to_store(self.bad.hash)
        service = ProposerService(self.node.pipeline, self.clock, 2.0)
        service.startService()
        self.addCleanup(service.stopService)
        for height in (1, 2, 3):
            self.clock.advance(2.0)
            self.assertEqual(self.node.queries.get_head()["height"], height)
        self.assertEqual(service.failures, 0)
        self.assertDropped("tx_unstorable")

    def test_a_tx_that_makes_building_raise_is_dropped(self):
        # The builder applies transactions through unstorable.apply_in_build.
        real = unstorable.apply_tx

        def apply_tx(ctx, tx):
            if tx.hash == self.bad.hash:
                ctx.view.set_account(tx.sender, 1, 99)  # half written, then a bug
                raise KeyError("boom")
            return real(ctx, tx)

        self.patch(unstorable, "apply_tx", apply_tx)
        block = self.node.pipeline.propose()
        self.assertEqual(block["txs"], [tx.hash for tx in self.good])
        got = self.assertDropped("tx_unprocessable")
        self.assertIn("KeyError", got["receipt"]["error"]["message"])
        # Nothing of the half-applied transaction reached the state.
        self.assertEqual(self.node.queries.get_balance(BOB.address), {"balance": 10**6, "nonce": 0})
        self.assertEqual(self.node.chain.view().root(), block["header"]["state_root"])

    def test_a_failure_of_every_block_is_no_transaction_fault(self):
        def commit(*a):
            raise lmdb.BadValsizeError("every block")

        self.patch(self.node.store, "_commit", commit)
        self.assertRaises(lmdb.BadValsizeError, self.node.pipeline.propose)
        self.assertEqual(len(self.node.mempool), 5)
        self.assertIsNone(self.node.local.failed_record(self.bad.hash))

    def test_a_full_disk_is_no_transaction_fault(self):
        def commit(t, block, tx_records, changes, acc):
            if tx_records:
                raise lmdb.MapFullError("full")

        self.patch(self.node.store, "_commit", commit)
        self.assertRaises(lmdb.MapFullError, self.node.pipeline.propose)
        self.assertEqual(len(self.node.mempool), 5)
