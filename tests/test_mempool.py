"""Tests for aitnode.mempool, and the node's admission and failure handling."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aitnode.chain import Chain
from aitnode.genesis import Genesis
from aitnode.errors import AitError
from aitnode.mempool import Mempool
from aitnode.node import compose
from aitnode.store import Store
from aitnode.tx import sign_tx
from aitnode.verifier import InlineVerifier

from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, make_node, transfer,
)

BIG = 10**15


def cost(tx):
    return tx.payload["amount"] + tx.fee


class MempoolRuleTests(SynchronousTestCase):
    def refused(self, pool, tx, balance, nonce, code):
        size = len(pool)
        e = self.assertRaises(AitError, pool.add, tx, balance, nonce)
        self.assertEqual(e.code, code)
        self.assertEqual(len(pool), size)
        self.assertNotIn(tx.hash, pool)
        return e

    def test_contiguous_run(self):
        pool = Mempool()
        txs = [transfer(ALICE, n, BOB, n) for n in (1, 2, 3, 4)]
        for t in txs:
            self.assertIsNone(pool.add(t, BIG, 0))
        self.assertEqual(len(pool), 4)
        self.assertEqual(sorted(pool.by_sender[ALICE.address]), [1, 2, 3, 4])
        self.assertEqual(pool.candidates(), txs)
        for t in txs:
            self.assertIn(t.hash, pool)
            self.assertIs(pool.get(t.hash), t)

    def test_run_starts_after_account_nonce(self):
        pool = Mempool()
        pool.add(transfer(ALICE, 6, BOB, 1), BIG, 5)
        pool.add(transfer(ALICE, 7, BOB, 1), BIG, 5)
        self.refused(pool, transfer(ALICE, 5, BOB, 1), BIG, 5, "nonce_too_low")
        self.refused(pool, transfer(ALICE, 3, BOB, 1), BIG, 5, "nonce_too_low")

    def test_nonce_gap_refused(self):
        pool = Mempool()
        self.refused(pool, transfer(ALICE, 2, BOB, 1), BIG, 0, "nonce_too_far_ahead")
        pool.add(transfer(ALICE, 1, BOB, 1), BIG, 0)
        e = self.refused(pool, transfer(ALICE, 3, BOB, 1), BIG, 0, "nonce_too_far_ahead")
        self.assertIn("2", e.message)
        pool.add(transfer(ALICE, 2, BOB, 1), BIG, 0)
        pool.add(transfer(ALICE, 3, BOB, 1), BIG, 0)
        self.assertEqual(len(pool), 3)

    def test_max_per_sender(self):
        pool = Mempool(max_per_sender=3)
        for n in (1, 2, 3):
            pool.add(transfer(ALICE, n, BOB, 1), BIG, 0)
        self.refused(pool, transfer(ALICE, 4, BOB, 1), BIG, 0, "nonce_too_far_ahead")
        # Other senders are not limited by ALICE's run.
        pool.add(transfer(BOB, 1, ALICE, 1), BIG, 0)
        # A replacement inside the run is still possible.
        pool.add(transfer(ALICE, 3, BOB, 1, fee=2000), BIG, 0)
        self.assertEqual(len(pool), 4)

    def test_max_size(self):
        pool = Mempool(max_size=2)
        pool.add(transfer(ALICE, 1, BOB, 1), BIG, 0)
        pool.add(transfer(BOB, 1, ALICE, 1), BIG, 0)
        e = self.refused(pool, transfer(CAROL, 1, ALICE, 1), BIG, 0, "mempool_full")
        self.assertEqual(e.status, 429)
        self.refused(pool, transfer(ALICE, 2, BOB, 1), BIG, 0, "mempool_full")
        # Replacing does not grow the pool, so it is allowed when full.
        new = transfer(ALICE, 1, BOB, 1, fee=5000)
        self.assertIsNotNone(pool.add(new, BIG, 0))
        self.assertEqual(len(pool), 2)

    def test_replacement_with_higher_fee(self):
        pool = Mempool()
        old = transfer(ALICE, 1, BOB, 10, fee=1000)
        after = transfer(ALICE, 2, BOB, 20, fee=1000)
        pool.add(old, BIG, 0)
        pool.add(after, BIG, 0)
        new = transfer(ALICE, 1, CAROL, 99, fee=1001)
        replaced = pool.add(new, BIG, 0)
        self.assertIs(replaced, old)
        self.assertNotIn(old.hash, pool)
        self.assertIsNone(pool.get(old.hash))
        self.assertIn(new.hash, pool)
        self.assertEqual(len(pool), 2)
        self.assertIs(pool.by_sender[ALICE.address][1], new)
        self.assertEqual(pool.candidates(), [new, after])

    def test_replacement_fee_too_low(self):
        pool = Mempool()
        old = transfer(ALICE, 1, BOB, 10, fee=1000)
        pool.add(old, BIG, 0)
        e = self.refused(pool, transfer(ALICE, 1, BOB, 11, fee=1000), BIG, 0, "replacement_fee_too_low")
        self.assertEqual(e.status, 409)
        self.refused(pool, transfer(ALICE, 1, BOB, 11, fee=999), BIG, 0, "replacement_fee_too_low")
        self.assertIs(pool.by_sender[ALICE.address][1], old)

    def test_pending_spend_counted(self):
        pool = Mempool()
        t1 = transfer(ALICE, 1, BOB, 500, fee=100)
        balance = 1000
        pool.add(t1, balance, 0)
        self.refused(pool, transfer(ALICE, 2, BOB, 301, fee=100), balance, 0, "insufficient_balance")
        t2 = transfer(ALICE, 2, BOB, 300, fee=100)
        pool.add(t2, balance, 0)
        self.refused(pool, transfer(ALICE, 3, BOB, 1, fee=0), balance, 0, "insufficient_balance")
        # A replacement counts its own cost instead of the one it replaces.
        self.refused(pool, transfer(ALICE, 1, BOB, 500, fee=101), balance, 0, "insufficient_balance")
        r = transfer(ALICE, 1, BOB, 499, fee=101)
        self.assertIs(pool.add(r, balance, 0), t1)
        # Spend is per sender.
        pool.add(transfer(BOB, 1, ALICE, 900, fee=100), balance, 0)

    def test_spend_of_authority_types_is_the_fee(self):
        pool = Mempool()
        m = sign_tx(AUTHORITY, CHAIN_ID, "MINT", 1, 5, {"to": ALICE.address, "amount": 10**9})
        pool.add(m, 5, 0)
        self.refused(pool, sign_tx(AUTHORITY, CHAIN_ID, "MINT", 2, 1, {"to": ALICE.address, "amount": 1}), 5, 0,
                     "insufficient_balance")

    def test_candidates_order(self):
        pool = Mempool()
        b1 = transfer(BOB, 1, ALICE, 1)
        a1 = transfer(ALICE, 1, BOB, 1)
        b2 = transfer(BOB, 2, ALICE, 1)
        c1 = transfer(CAROL, 1, ALICE, 1)
        a2 = transfer(ALICE, 2, BOB, 1)
        for t in (b1, a1, b2, c1, a2):
            pool.add(t, BIG, 0)
        # Senders in order of arrival, each in nonce order.
        self.assertEqual(pool.candidates(), [b1, b2, a1, a2, c1])
        self.assertEqual(pool.candidates(limit=3), [b1, b2, a1])
        self.assertEqual(pool.all(), [b1, b2, a1, a2, c1])
        # A replacement keeps its place.
        b1r = transfer(BOB, 1, CAROL, 2, fee=3000)
        pool.add(b1r, BIG, 0)
        self.assertEqual(pool.candidates(), [b1r, b2, a1, a2, c1])

    def test_remove_committed_drops_stale(self):
        pool = Mempool()
        a = [transfer(ALICE, n, BOB, 100, fee=100) for n in (1, 2, 3)]
        for t in a:
            pool.add(t, BIG, 0)
        b1 = transfer(BOB, 1, ALICE, 1)
        pool.add(b1, BIG, 0)
        # A block included ALICE's nonce 1 (another spelling than ours: a
        # different hash) and nonce 2 as pooled.
        other1 = transfer(ALICE, 1, CAROL, 1)
        pool.remove_committed([(other1.hash, ALICE.address), (a[1].hash, ALICE.address)], lambda s: 2)
        self.assertEqual(pool.candidates(), [a[2], b1])
        self.assertNotIn(a[0].hash, pool)
        self.assertNotIn(a[1].hash, pool)
        # ALICE's pending spend is now a[2]'s only: 200 more fits a 400 balance.
        pool.add(transfer(ALICE, 4, BOB, 100, fee=100), 400, 2)
        self.refused(pool, transfer(ALICE, 5, BOB, 1, fee=0), 400, 2, "insufficient_balance")
        # Everything of a sender gone: the sender is gone.
        pool.remove_committed([(b1.hash, BOB.address)], lambda s: 1)
        self.assertNotIn(BOB.address, pool.by_sender)
        pool.add(transfer(BOB, 2, ALICE, 100, fee=100), 200, 1)

    def test_drop_removes_successors(self):
        pool = Mempool()
        a = [transfer(ALICE, n, BOB, 1) for n in (1, 2, 3, 4)]
        for t in a:
            pool.add(t, BIG, 0)
        b1 = transfer(BOB, 1, ALICE, 1)
        pool.add(b1, BIG, 0)
        self.assertEqual(pool.drop(a[1]), [a[1], a[2], a[3]])
        self.assertEqual(pool.candidates(), [a[0], b1])
        # Something not pooled (or a replaced spelling) drops nothing.
        self.assertEqual(pool.drop(a[2]), [])
        self.assertEqual(pool.drop(transfer(ALICE, 1, BOB, 2)), [])
        self.assertEqual(pool.drop(transfer(CAROL, 1, BOB, 2)), [])
        self.assertEqual(len(pool), 2)
        # The run can be refilled from where it now ends.
        pool.add(transfer(ALICE, 2, BOB, 5), BIG, 0)
        self.assertEqual(pool.drop(a[0])[0], a[0])
        self.assertNotIn(ALICE.address, pool.by_sender)


class NodeMempoolTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node(self)

    def test_submit_refusals(self):
        node = self.node
        node.admission.submit(transfer(ALICE, 1, BOB, 1).to_wire())
        for tx, code in (
            (transfer(ALICE, 3, BOB, 1), "nonce_too_far_ahead"),
            (transfer(ALICE, 2, BOB, 1, fee=10), "fee_too_low"),
            (transfer(BOB, 1, ALICE, 10**6), "insufficient_balance"),
            (sign_tx(ALICE, CHAIN_ID, "MINT", 2, 0, {"to": ALICE.address, "amount": 1}), "not_authority"),
            (transfer(ALICE, 1, BOB, 2), "replacement_fee_too_low"),
        ):
            e = self.assertRaises(AitError, node.admission.submit, tx.to_wire())
            self.assertEqual(e.code, code)
            self.assertIsNone(node.queries.get_tx(tx.hash))
        self.assertEqual(len(node.mempool), 1)
        self.assertEqual(node.admission.stats["refused"], 5)

    def test_failed_at_build_after_param_update(self):
        """A tx admitted under the old fee fails when an earlier tx of the
        same block raises the fee; its successors are dropped too."""
        node = self.node
        up = node.admission.submit_own("PARAM_UPDATE", {"key": "base_fee", "value": 10**5})
        a1 = transfer(ALICE, 1, BOB, 5)
        a2 = transfer(ALICE, 2, BOB, 6, fee=10**6)
        a3 = transfer(ALICE, 3, BOB, 7)
        b1 = transfer(BOB, 1, CAROL, 8, fee=2 * 10**5)
        for t in (a1, a2, a3, b1):
            self.assertEqual(node.admission.submit(t.to_wire()), t.hash)
        block = node.pipeline.propose()
        self.assertEqual(block["txs"], [up, b1.hash])
        self.assertEqual(len(node.mempool), 0)
        got = node.queries.get_tx(a1.hash)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["tx"], a1.to_wire())
        self.assertEqual(got["receipt"]["error"]["code"], "fee_too_low")
        for t in (a2, a3):
            got = node.queries.get_tx(t.hash)
            self.assertEqual(got["status"], "failed")
            self.assertEqual(got["receipt"]["error"]["code"], "predecessor_failed")
            self.assertIn(a1.hash, got["receipt"]["error"]["message"])
        self.assertEqual(node.queries.get_balance(ALICE.address), {"balance": GENESIS_BALANCE, "nonce": 0})
        # ALICE can start over at nonce 1 with the new fee.
        ok = transfer(ALICE, 1, BOB, 5, fee=2 * 10**5)
        node.admission.submit(ok.to_wire())
        self.assertEqual(node.pipeline.propose()["txs"], [ok.hash])
        self.assertEqual(node.queries.get_tx(ok.hash)["status"], "included")
        self.assertEqual(node.queries.get_tx(a1.hash)["status"], "failed")

    def test_failed_at_build_balance_drained(self):
        """Another node's block drains the sender; the pending tx of the
        next nonce fails when this node builds, and its successors go too."""
        node = self.node
        other = make_node(self)
        drain = transfer(BOB, 1, CAROL, 10**6 - 1000)
        b2 = transfer(BOB, 2, CAROL, 10)
        b3 = transfer(BOB, 3, CAROL, 10)
        # This node pools BOB's nonces 1..3 (another nonce-1 spelling).
        b1_here = transfer(BOB, 1, CAROL, 100)
        for t in (b1_here, b2, b3):
            node.admission.submit(t.to_wire())
        block, records, view, failed = other.chain.build_block([drain], AUTHORITY, 1_700_000_100)
        other.chain.commit(block, records, view)
        node.pipeline.import_block(block, [drain])
        self.assertEqual(node.queries.get_balance(BOB.address), {"balance": 0, "nonce": 1})
        self.assertNotIn(b1_here.hash, node.mempool)
        self.assertEqual([t.hash for t in node.mempool.candidates()], [b2.hash, b3.hash])
        built = node.pipeline.propose()
        self.assertEqual(built["txs"], [])
        self.assertEqual(built["header"]["height"], 2)
        got = node.queries.get_tx(b2.hash)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["receipt"]["error"]["code"], "insufficient_balance")
        self.assertNotIn("block", got)
        got = node.queries.get_tx(b3.hash)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["receipt"]["error"]["code"], "predecessor_failed")
        self.assertEqual(len(node.mempool), 0)
        # The one that lost the race is simply unknown (never failed, never included).
        self.assertIsNone(node.queries.get_tx(b1_here.hash))

    def test_duplicate_submit_included_once(self):
        node = self.node
        t = transfer(ALICE, 1, BOB, 42)
        h1 = node.admission.submit(t.to_wire())
        wire = t.to_wire()
        del wire["chain_id"]
        h2 = node.admission.submit(wire)
        self.assertEqual(h1, t.hash)
        self.assertEqual(h2, t.hash)
        self.assertEqual(len(node.mempool), 1)
        block = node.pipeline.propose()
        self.assertEqual(block["txs"], [t.hash])
        # Submitted again once included: same hash, never included again.
        self.assertEqual(node.admission.submit(t.to_wire()), t.hash)
        self.assertEqual(len(node.mempool), 0)
        self.assertEqual(node.pipeline.propose()["txs"], [])
        self.assertEqual(node.queries.get_balance(BOB.address)["balance"], 10**6 + 42)
        self.assertEqual(node.queries.get_tx(t.hash)["block"]["height"], 1)

    def test_duplicate_in_one_batch(self):
        node = self.node
        t = transfer(ALICE, 1, BOB, 42)
        out = self.successResultOf(node.admission.submit_batch([t.to_wire(), t.to_wire()]))
        self.assertEqual(out, [{"txHash": t.hash}, {"txHash": t.hash}])
        self.assertEqual(len(node.mempool), 1)
        self.assertEqual(node.pipeline.propose()["txs"], [t.hash])

    def test_save_and_restore_mempool(self):
        path = os.path.abspath(self.mktemp())
        genesis = Genesis(genesis_doc())

        def open_node():
            node = compose(path, genesis, Clock(), key=AUTHORITY)
            return node.store, node

        store, node = open_node()
        try:
            included = transfer(CAROL, 1, ALICE, 1)  # fails: CAROL has nothing
            txs = [transfer(ALICE, 1, BOB, 1), transfer(BOB, 1, CAROL, 2000), transfer(ALICE, 2, CAROL, 3)]
            for t in txs:
                node.admission.submit(t.to_wire())
            m = node.admission.submit_own("MINT", {"to": CAROL.address, "amount": 9})
            self.assertRaises(AitError, node.admission.submit, included.to_wire())
            node.admission.save_mempool()
            self.assertEqual(len(node.local.load_mempool()), 4)
        finally:
            store.close()
        store, node = open_node()
        try:
            self.assertEqual(len(node.mempool), 0)
            self.assertEqual(node.admission.restore_mempool(), 4)
            self.assertEqual([t.hash for t in node.mempool.all()], [txs[0].hash, txs[2].hash, txs[1].hash, m])
            self.assertEqual(node.local.load_mempool(), [])
            self.assertEqual(node.queries.get_tx(txs[1].hash)["status"], "pending")
            block = node.pipeline.propose()
            self.assertEqual(sorted(block["txs"]), sorted([t.hash for t in txs] + [m]))
            self.assertEqual(node.queries.get_balance(CAROL.address)["balance"], 2000 + 3 + 9)
            # Restoring again (nothing saved) restores nothing.
            self.assertEqual(node.admission.restore_mempool(), 0)
        finally:
            store.close()

    def test_restore_skips_what_is_no_longer_valid(self):
        node = self.node
        t1 = transfer(ALICE, 1, BOB, 1)
        node.admission.submit(t1.to_wire())
        node.admission.save_mempool()
        node.pipeline.propose()  # t1 is now included
        stale = transfer(ALICE, 1, BOB, 2).to_wire()
        node.local.save_mempool([[t1.to_wire(), None], [stale, None], [{"junk": True}, None]])
        node.mempool.clear()
        self.assertEqual(node.admission.restore_mempool(), 0)
        self.assertEqual(len(node.mempool), 0)
        self.assertEqual(node.local.load_mempool(), [])
