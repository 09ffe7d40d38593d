"""Tests for aitnode.pipeline: rollbacks and what comes back to the mempool."""

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase


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
        snap = (state_dump(store), store.accumulator(), store.head(), node.chain.view().root())
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
        self.assertEqual((state_dump(store), store.accumulator(), store.head(), node.chain.view().root()), snap)
        for t in later:
            self.assertIsNone(store.tx_record(t.hash))
            self.assertFalse(store.has_tx(t.hash))
        self.assertIsNotNone(store.tx_record(transfer(ALICE, 1, BOB, 10).hash))
        for h, b in ((3, b3), (4, b4)):
            self.assertIsNone(store.hash_at(h))
            self.assertIsNone(store.block_by_hash(b["hash"]))
        self.assertEqual(node.queries.get_balance(CAROL.address), {"balance": 0, "nonce": 0})
        self.assertNotEqual(node.queries.get_params()["max_block_txs"], 7)
        # The chain goes on from there, and a fresh node accepts it.
        node.mempool.clear()
        node.admission.submit(later[0].to_wire())
        b3b = node.pipeline.propose()
        self.assertEqual(b3b["header"]["parent"], store.hash_at(2))
        other = make_node(self, key=None)
        for h in range(1, 4):
            e = node.chain.block_entry(h)
            other.pipeline.import_block(e["block"], [other.admission.parse(w) for w in e["txs"]])
        self.assertEqual(other.queries.get_head(), node.queries.get_head())

    def test_rollback_to_genesis_and_noop(self):
        node = make_node(self)
        genesis = (state_dump(node.store), node.store.accumulator(), node.store.head())
        self.assertEqual(node.store.rollback_to(0), [])
        node.pipeline.propose()
        self.assertEqual(node.store.rollback_to(1), [])
        self.assertEqual(node.store.head()[0], 1)
        self.assertEqual(node.store.rollback_to(0), [])
        self.assertEqual((state_dump(node.store), node.store.accumulator(), node.store.head()), genesis)

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
