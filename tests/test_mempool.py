"""Tests for aitnode.mempool, and the node's admission and failure handling."""


from twisted.trial.unittest import SynchronousTestCase

from aitnode.errors import AitError
from aitnode.mempool import Mempool
from aitnode.tx import sign_tx

from tests.common import ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, transfer

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
