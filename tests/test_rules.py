"""Tests for aitnode.rules: what each transaction type does, in a block built on the head."""


from twisted.trial.unittest import SynchronousTestCase

from aitnode.errors import AitError
from aitnode.tx import parse_tx, sign_tx

from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, key, make_node, transfer, payload_size)

T1 = 1_700_000_100


class RulesTestBase(SynchronousTestCase):
    doc = None

    def setUp(self):
        self.node = make_node(self, doc=self.doc)
        self.chain = self.node.chain

    def block(self, txs, timestamp=T1, proposer=AUTHORITY):
        """Build and commit one block; return (block, failed codes by hash)."""
        block, records, view, failed = self.chain.build_block(txs, proposer, timestamp)
        self.chain.commit(block, records, view)
        return block, {h: e.code for h, (tx, e) in failed.items()}

    def acct(self, k):
        return self.chain.view().account(k.address if hasattr(k, "address") else k)

    def supply(self):
        return self.chain.view().get("chain", "supply")

    def min_fee(self, payload):
        p = self.chain.view().params()
        return p["base_fee"] + p["fee_per_byte"] * payload_size(payload)


class TransferRuleTests(RulesTestBase):
    def test_transfer_moves_amount_and_fee(self):
        t = transfer(ALICE, 1, BOB, 5000, fee=700)
        block, failed = self.block([t])
        self.assertEqual(failed, {})
        self.assertEqual(block["txs"], [t.hash])
        self.assertEqual(self.acct(ALICE), (GENESIS_BALANCE - 5700, 1))
        self.assertEqual(self.acct(BOB), (10**6 + 5000, 0))
        self.assertEqual(self.acct(AUTHORITY), (700, 0))
        rec = self.node.store.tx_record(t.hash)
        self.assertEqual(rec["result"]["fee"], 700)
        self.assertEqual(
            sorted((c["address"], c["delta"]) for c in rec["result"]["changes"]),
            sorted([(ALICE.address, -5700), (BOB.address, 5000)]),
        )

    def test_fees_go_to_proposer_after_the_block(self):
        # The proposer holds nothing yet, so it cannot spend this block's fees
        # inside the same block.
        t1 = transfer(ALICE, 1, BOB, 1, fee=5000)
        t2 = transfer(AUTHORITY, 1, CAROL, 100, fee=1000)
        block, failed = self.block([t1, t2])
        self.assertEqual(failed, {t2.hash: "insufficient_balance"})
        self.assertEqual(self.acct(AUTHORITY), (5000, 0))
        block, failed = self.block([t2], timestamp=T1 + 1)
        self.assertEqual(failed, {})
        # It paid 1100 and was credited its own fee back after the block.
        self.assertEqual(self.acct(AUTHORITY), (5000 - 1100 + 1000, 1))
        self.assertEqual(self.acct(CAROL), (100, 0))

    def test_fees_of_many_senders_summed(self):
        txs = [transfer(ALICE, 1, CAROL, 1, fee=300), transfer(BOB, 1, CAROL, 1, fee=400), transfer(ALICE, 2, CAROL, 1, fee=500)]
        self.block(txs, proposer=AUTHORITY)
        self.assertEqual(self.acct(AUTHORITY), (1200, 0))
        self.assertEqual(self.acct(CAROL), (3, 0))

    def test_nonce_increments(self):
        txs = [transfer(ALICE, n, BOB, 1) for n in (1, 2, 3)]
        block, failed = self.block(txs)
        self.assertEqual(failed, {})
        self.assertEqual(self.acct(ALICE)[1], 3)
        self.assertEqual(self.acct(BOB)[1], 0)
        self.block([transfer(ALICE, 4, BOB, 1)], timestamp=T1 + 1)
        self.assertEqual(self.acct(ALICE)[1], 4)

    def test_insufficient_balance(self):
        bob_bal = 10**6
        exact = transfer(BOB, 1, CAROL, bob_bal - 1000, fee=1000)
        over = transfer(BOB, 1, CAROL, bob_bal - 999, fee=1000)
        block, failed = self.block([over])
        self.assertEqual(failed, {over.hash: "insufficient_balance"})
        self.assertEqual(block["txs"], [])
        self.assertEqual(self.acct(BOB), (bob_bal, 0))
        block, failed = self.block([exact], timestamp=T1 + 1)
        self.assertEqual(failed, {})
        self.assertEqual(self.acct(BOB), (0, 1))
        self.assertEqual(self.acct(CAROL), (bob_bal - 1000, 0))
        # CAROL (no balance, no nonce) cannot pay a fee.
        c = transfer(key(40), 1, BOB, 1)
        self.assertEqual(self.block([c], timestamp=T1 + 2)[1], {c.hash: "insufficient_balance"})

    def test_nonce_too_low_and_too_far_ahead(self):
        self.block([transfer(ALICE, 1, BOB, 1)])
        low = transfer(ALICE, 1, BOB, 2)
        ahead = transfer(ALICE, 3, BOB, 3)
        block, failed = self.block([low, ahead], timestamp=T1 + 1)
        self.assertEqual(failed, {low.hash: "nonce_too_low", ahead.hash: "nonce_too_far_ahead"})
        self.assertEqual(block["txs"], [])
        self.assertEqual(self.acct(ALICE)[1], 1)

    def test_fee_too_low(self):
        payload = {"to": BOB.address, "amount": 12345}
        need = 10 + 1 * payload_size(payload)
        self.assertEqual(self.min_fee(payload), need)
        low = transfer(ALICE, 1, BOB, 12345, fee=need - 1)
        ok = transfer(ALICE, 1, BOB, 12345, fee=need)
        block, failed = self.block([low, ok])
        self.assertEqual(failed, {low.hash: "fee_too_low"})
        self.assertEqual(block["txs"], [ok.hash])
        self.assertEqual(self.acct(AUTHORITY), (need, 0))

    def test_self_transfer(self):
        t = transfer(ALICE, 1, ALICE, 10**9, fee=800)
        block, failed = self.block([t])
        self.assertEqual(failed, {})
        self.assertEqual(self.acct(ALICE), (GENESIS_BALANCE - 800, 1))
        rec = self.node.store.tx_record(t.hash)
        self.assertEqual(rec["result"]["changes"], [{"address": ALICE.address, "delta": -800}])
        # A self-transfer still needs amount + fee on hand.
        big = transfer(BOB, 1, BOB, 10**6, fee=800)
        self.assertEqual(self.block([big], timestamp=T1 + 1)[1], {big.hash: "insufficient_balance"})

    def test_failed_tx_changes_nothing(self):
        before = self.chain.view().root()
        bad = transfer(BOB, 1, CAROL, 10**7)
        block, failed = self.block([bad])
        self.assertEqual(failed, {bad.hash: "insufficient_balance"})
        self.assertEqual(block["header"]["state_root"], before)


class FeeParamTests(RulesTestBase):
    doc = genesis_doc(base_fee=7, fee_per_byte=3)

    def test_min_fee_formula(self):
        payload = {"to": CAROL.address, "amount": 2**30}
        need = 7 + 3 * payload_size(payload)
        self.assertEqual(self.node.queries.estimate_fee({
            "type": "TRANSFER", "sender": ALICE.address, "nonce": 1, "fee": 0, "payload": payload,
        }), need)
        low = transfer(ALICE, 1, CAROL, 2**30, fee=need - 1)
        ok = transfer(ALICE, 1, CAROL, 2**30, fee=need)
        block, failed = self.block([low, ok])
        self.assertEqual(failed, {low.hash: "fee_too_low"})
        self.assertEqual(block["txs"], [ok.hash])


class AuthorityTxTests(RulesTestBase):
    def test_mint_by_authority(self):
        m = sign_tx(AUTHORITY, CHAIN_ID, "MINT", 1, 0, {"to": CAROL.address, "amount": 777})
        before = self.supply()
        block, failed = self.block([m])
        self.assertEqual(failed, {})
        self.assertEqual(self.acct(CAROL), (777, 0))
        self.assertEqual(self.acct(AUTHORITY), (0, 1))
        after = self.supply()
        self.assertEqual(after["faucet"], before["faucet"] + 777)
        self.assertEqual(after["genesis"], before["genesis"])
        self.assertEqual(self.node.store.tx_record(m.hash)["result"]["minted"], 777)
        m2 = sign_tx(AUTHORITY, CHAIN_ID, "MINT", 2, 0, {"to": ALICE.address, "amount": 23})
        self.block([m2], timestamp=T1 + 1)
        self.assertEqual(self.supply()["faucet"], 800)
        total = sum(b for b, n in dict(self.node.store.entries("acct")).values())
        self.assertEqual(total, GENESIS_BALANCE + 10**6 + 800)

    def test_mint_not_authority(self):
        m = sign_tx(ALICE, CHAIN_ID, "MINT", 1, 0, {"to": ALICE.address, "amount": 5})
        m_fee = sign_tx(ALICE, CHAIN_ID, "MINT", 1, 10**6, {"to": ALICE.address, "amount": 5})
        block, failed = self.block([m, m_fee])
        self.assertEqual(failed, {m.hash: "not_authority", m_fee.hash: "not_authority"})
        self.assertEqual(self.acct(ALICE), (GENESIS_BALANCE, 0))
        self.assertEqual(self.supply()["faucet"], 0)

    def test_param_update_not_authority(self):
        p = sign_tx(ALICE, CHAIN_ID, "PARAM_UPDATE", 1, 1000, {"key": "base_fee", "value": 0})
        block, failed = self.block([p])
        self.assertEqual(failed, {p.hash: "not_authority"})
        self.assertEqual(self.chain.view().params()["base_fee"], 10)

    def test_param_update_changes_fee_rules(self):
        payload = {"to": BOB.address, "amount": 1}
        old_need = self.min_fee(payload)
        up = sign_tx(AUTHORITY, CHAIN_ID, "PARAM_UPDATE", 1, 0, {"key": "base_fee", "value": 500})
        # In the same block, a transaction after the update pays the new fee.
        same_block = transfer(ALICE, 1, BOB, 1, fee=old_need)
        block, failed = self.block([up, same_block])
        self.assertEqual(failed, {same_block.hash: "fee_too_low"})
        self.assertEqual(self.chain.view().params()["base_fee"], 500)
        self.assertEqual(self.node.store.tx_record(up.hash)["result"]["param"], {"base_fee": 500})
        new_need = 500 + payload_size(payload)
        self.assertEqual(self.min_fee(payload), new_need)
        low = transfer(ALICE, 1, BOB, 1, fee=new_need - 1)
        ok = transfer(ALICE, 1, BOB, 1, fee=new_need)
        block, failed = self.block([low, ok], timestamp=T1 + 1)
        self.assertEqual(failed, {low.hash: "fee_too_low"})
        self.assertEqual(block["txs"], [ok.hash])
        # The change is under the state root.
        self.assertEqual(self.node.store.entry("param", "base_fee"), 500)

    def test_param_update_before_in_block_order_only(self):
        payload = {"to": BOB.address, "amount": 1}
        old_need = self.min_fee(payload)
        before = transfer(ALICE, 1, BOB, 1, fee=old_need)
        up = sign_tx(AUTHORITY, CHAIN_ID, "PARAM_UPDATE", 1, 0, {"key": "fee_per_byte", "value": 100})
        block, failed = self.block([before, up])
        self.assertEqual(failed, {})
        self.assertEqual(block["txs"], [before.hash, up.hash])


class FaucetOffTests(RulesTestBase):
    doc = genesis_doc(faucet=False)

    def test_faucet_disabled(self):
        m = sign_tx(AUTHORITY, CHAIN_ID, "MINT", 1, 0, {"to": CAROL.address, "amount": 5})
        block, failed = self.block([m])
        self.assertEqual(failed, {m.hash: "faucet_disabled"})
        self.assertEqual(self.acct(CAROL), (0, 0))
        self.assertEqual(self.supply()["faucet"], 0)
        # faucet is not updatable by PARAM_UPDATE.
        wire = sign_tx(AUTHORITY, CHAIN_ID, "PARAM_UPDATE", 1, 0, {"key": "faucet", "value": True}).to_wire()
        e = self.assertRaises(AitError, parse_tx, wire, CHAIN_ID)
        self.assertEqual(e.code, "bad_param")
