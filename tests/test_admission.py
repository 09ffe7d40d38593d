"""Tests for aitnode.admission: every submit path against the head and the mempool's rules."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aitnode.genesis import Genesis
from aitnode.errors import AitError
from aitnode.node import compose
from aitnode.tx import sign_tx

from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, key, make_node, transfer,
)

K2 = key(22)  # a second authority

BIG = 10**15


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
        doc = genesis_doc(authorities=(AUTHORITY, K2))  # the other block is K2's (a block by
        node = make_node(self, doc=doc, key=AUTHORITY)  # this node's key would be a key conflict)
        other = make_node(self, doc=doc, key=K2)
        drain = transfer(BOB, 1, CAROL, 10**6 - 1000)
        b2 = transfer(BOB, 2, CAROL, 10)
        b3 = transfer(BOB, 3, CAROL, 10)
        # This node pools BOB's nonces 1..3 (another nonce-1 spelling).
        b1_here = transfer(BOB, 1, CAROL, 100)
        for t in (b1_here, b2, b3):
            node.admission.submit(t.to_wire())
        block, records, view, failed = other.chain.build_block([drain], K2, 1_700_000_100)
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
