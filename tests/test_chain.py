"""Tests for aitnode.chain: genesis, transaction rules, building and
verifying blocks."""

import copy
import hashlib
import json
import os

import cbor2

from twisted.trial.unittest import SynchronousTestCase

from aitnode import crypto
from aitnode.blocks import block_hash
from aitnode.genesis import Genesis
from aitnode.encoding import ZERO_HASH, merkle_root
from aitnode.errors import AitError, ConfigError
from aitnode.tx import parse_tx, sign_tx

from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, key, make_node, transfer,
)

T1 = 1_700_000_100


def payload_size(payload):
    return len(cbor2.dumps(payload, canonical=True))


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


class GenesisValidationTests(SynchronousTestCase):
    def refused(self, doc, code="bad_genesis"):
        e = self.assertRaises(AitError, Genesis, doc)
        self.assertEqual(e.code, code)
        return e.message

    def test_valid(self):
        g = Genesis(genesis_doc())
        self.assertEqual(g.chain_id, CHAIN_ID)
        self.assertEqual(g.accounts, {ALICE.address: GENESIS_BALANCE, BOB.address: 10**6})
        self.assertEqual(g.supply, GENESIS_BALANCE + 10**6)
        self.assertEqual(g.authorities, [{"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex()}])
        # Left-out params take their defaults.
        self.assertEqual(g.params["base_fee"], 10)
        self.assertEqual(g.params["fee_per_byte"], 1)
        self.assertIs(g.params["faucet"], True)

    def test_bad_chain_id(self):
        for bad in ("", "Bad", "has space", "-lead", "x" * 65, 7, None, "ait\n"):
            doc = genesis_doc()
            doc["chain_id"] = bad
            self.assertIn("chain_id", self.refused(doc))

    def test_no_authorities(self):
        doc = genesis_doc()
        doc["authorities"] = []
        self.assertIn("authority", self.refused(doc))
        del doc["authorities"]
        self.refused(doc)

    def test_pubkey_address_mismatch(self):
        doc = genesis_doc()
        doc["authorities"] = [{"address": AUTHORITY.address, "public_key": ALICE.public_key.hex()}]
        self.assertIn("does not match", self.refused(doc))
        doc["authorities"] = [{"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex().upper()}]
        self.refused(doc)

    def test_duplicate_authority(self):
        doc = genesis_doc(authorities=(AUTHORITY, AUTHORITY))
        self.assertIn("twice", self.refused(doc))

    def test_duplicate_account(self):
        doc = genesis_doc(accounts=[(ALICE.address, 5), (ALICE.address, 6)])
        self.assertIn("twice", self.refused(doc))

    def test_unknown_param(self):
        doc = genesis_doc()
        doc["params"]["block_reward"] = 5
        e = self.assertRaises(AitError, Genesis, doc)
        self.assertEqual(e.code, "bad_param")
        self.assertIn("block_reward", e.message)

    def test_bad_param_value(self):
        doc = genesis_doc(base_fee=-1)
        self.assertEqual(self.assertRaises(AitError, Genesis, doc).code, "bad_param")

    def test_unknown_field(self):
        doc = genesis_doc()
        doc["extra"] = 1
        self.assertIn("extra", self.refused(doc))

    def test_bad_balance(self):
        doc = genesis_doc(accounts=[(ALICE.address, 1.5)])
        self.assertEqual(self.assertRaises(AitError, Genesis, doc).code, "float_not_allowed")
        doc = genesis_doc(accounts=[(ALICE.address, 2**63), (BOB.address, 2**63)])
        self.refused(doc)

    def test_load_gives_config_error(self):
        path = os.path.abspath(self.mktemp())
        doc = genesis_doc()
        doc["chain_id"] = "BAD"
        with open(path, "w") as f:
            json.dump(doc, f)
        e = self.assertRaises(ConfigError, Genesis.load, path)
        self.assertIn(path, str(e))
        self.assertIn("chain_id", str(e))
        with open(path, "w") as f:
            f.write("{")
        self.assertRaises(ConfigError, Genesis.load, path)
        self.assertRaises(ConfigError, Genesis.load, path + ".missing")


class GenesisBlockTests(SynchronousTestCase):
    def test_deterministic(self):
        doc = genesis_doc()
        a, b = Genesis(doc), Genesis(copy.deepcopy(doc))
        self.assertEqual(a.hash, b.hash)
        self.assertEqual(a.header, b.header)
        self.assertEqual(a.header["parent"], ZERO_HASH)
        self.assertEqual(a.header["parent"], "0" * 64)
        self.assertEqual(a.header["height"], 0)
        self.assertEqual(a.header["tx_root"], ZERO_HASH)
        self.assertEqual(a.header["timestamp"], 1_700_000_000)
        self.assertEqual(a.header["chain_id"], CHAIN_ID)
        self.assertEqual(a.hash, sha256_hex(cbor2.dumps(a.header, canonical=True)))
        # Account order in the document does not matter.
        doc2 = copy.deepcopy(doc)
        doc2["accounts"].reverse()
        self.assertEqual(Genesis(doc2).hash, a.hash)
        # Any change does.
        self.assertNotEqual(Genesis(genesis_doc(base_fee=11)).hash, a.hash)
        self.assertNotEqual(Genesis(genesis_doc(accounts=[(ALICE.address, 5)])).hash, a.hash)

    def test_two_nodes_same_genesis_block(self):
        n1, n2 = make_node(self), make_node(self)
        self.assertEqual(n1.queries.get_head(), {"height": 0, "hash": Genesis(genesis_doc()).hash})
        self.assertEqual(n1.queries.get_head(), n2.queries.get_head())
        self.assertEqual(n1.store.block_at(0), n2.store.block_at(0))


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


class BuildBlockTests(RulesTestBase):
    def test_header_fields(self):
        good = [transfer(ALICE, 1, BOB, 10), transfer(BOB, 1, CAROL, 20), transfer(ALICE, 2, CAROL, 30)]
        bad = transfer(CAROL, 1, ALICE, 5)  # CAROL has nothing at this point
        block, records, view, failed = self.chain.build_block([good[0], bad, good[1], good[2]], AUTHORITY, T1)
        header = block["header"]
        self.assertEqual(set(header), {"chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root"})
        self.assertEqual(header["chain_id"], CHAIN_ID)
        self.assertEqual(header["parent"], Genesis(genesis_doc()).hash)
        self.assertEqual(header["height"], 1)
        self.assertEqual(header["timestamp"], T1)
        self.assertEqual(header["proposer"], AUTHORITY.address)
        self.assertEqual(block["txs"], [t.hash for t in good])
        self.assertEqual(header["tx_root"], merkle_root([t.hash for t in good]))
        self.assertEqual(header["state_root"], view.root())
        self.assertEqual(block["hash"], sha256_hex(cbor2.dumps(header, canonical=True)))
        self.assertEqual(block["hash"], block_hash(header))
        self.assertTrue(crypto.verify(AUTHORITY.public_key, bytes.fromhex(block["sig"]), bytes.fromhex(block["hash"])))
        self.assertFalse(crypto.verify(ALICE.public_key, bytes.fromhex(block["sig"]), bytes.fromhex(block["hash"])))
        self.assertEqual(list(failed), [bad.hash])
        self.assertEqual(failed[bad.hash][1].code, "insufficient_balance")
        self.assertEqual([h for h, _ in records], [t.hash for t in good])
        # Nothing is stored until commit.
        self.assertEqual(self.chain.head()[0], 0)
        self.chain.commit(block, records, view)
        self.assertEqual(self.chain.head(), (1, block["hash"]))
        self.assertFalse(self.node.store.has_tx(bad.hash))

    def test_empty_block_and_timestamp_never_decreases(self):
        block, _ = self.block([], timestamp=5)
        self.assertEqual(block["header"]["timestamp"], 1_700_000_000)
        self.assertEqual(block["header"]["tx_root"], ZERO_HASH)
        self.assertEqual(block["header"]["state_root"], Genesis(genesis_doc()).header["state_root"])
        b2, _ = self.block([], timestamp=T1)
        self.assertEqual(b2["header"]["parent"], block["hash"])
        self.assertEqual(b2["header"]["height"], 2)
        self.assertEqual(b2["header"]["timestamp"], T1)

    def test_max_txs(self):
        txs = [transfer(ALICE, n, BOB, 1) for n in range(1, 6)]
        block, records, view, failed = self.chain.build_block(txs, AUTHORITY, T1, max_txs=3)
        self.assertEqual(block["txs"], [t.hash for t in txs[:3]])
        view.release()


class VerifyBlockTests(SynchronousTestCase):
    def setUp(self):
        self.a = make_node(self)
        self.b = make_node(self)

    def build(self, txs, timestamp=T1):
        """Build a block on node a (not committed there)."""
        block, records, view, failed = self.a.chain.build_block(txs, AUTHORITY, timestamp)
        view.release()
        return block

    def resign(self, block, key=AUTHORITY):
        block = copy.deepcopy(block)
        block["hash"] = block_hash(block["header"])
        block["sig"] = key.sign(bytes.fromhex(block["hash"])).hex()
        return block

    def refused(self, block, txs, word):
        head = self.b.queries.get_head()
        root = self.b.chain.head_header()["state_root"]
        e = self.assertRaises(AitError, self.b.pipeline.import_block, block, txs)
        self.assertEqual(e.code, "bad_block")
        self.assertIn(word, e.message)
        self.assertEqual(self.b.queries.get_head(), head)
        self.assertEqual(self.b.chain.head_header()["state_root"], root)
        return e

    def test_accepts_block_from_other_node(self):
        txs = [transfer(ALICE, 1, BOB, 10), transfer(BOB, 1, CAROL, 20)]
        self.a.mempool.add(txs[0], GENESIS_BALANCE, 0)
        self.a.mempool.add(txs[1], 10**6, 0)
        block = self.a.pipeline.propose()
        self.assertEqual(block["txs"], [t.hash for t in txs])
        checked = self.b.pipeline.import_block(block, txs)
        self.assertEqual(checked["hash"], block["hash"])
        self.assertEqual(self.b.queries.get_head(), self.a.queries.get_head())
        self.assertEqual(self.b.chain.head_header()["state_root"], self.a.chain.head_header()["state_root"])
        self.assertEqual(self.b.store.accumulator(), self.a.store.accumulator())
        self.assertEqual(dict(self.b.store.entries("acct")), dict(self.a.store.entries("acct")))
        self.assertEqual(self.b.queries.get_tx(txs[1].hash)["block"]["hash"], block["hash"])
        # And the next one on top of it.
        t3 = transfer(BOB, 2, ALICE, 1)
        block2 = self.a.chain.build_block([t3], AUTHORITY, T1 + 5)
        self.assertEqual(block2[3], {})
        self.a.chain.commit(*block2[:3])
        self.b.pipeline.import_block(block2[0], [t3])
        self.assertEqual(self.b.queries.get_head(), {"height": 2, "hash": block2[0]["hash"]})

    def test_import_removes_from_mempool(self):
        t = transfer(ALICE, 1, BOB, 10)
        self.b.admission.submit(t.to_wire())
        self.b.admission.submit(transfer(ALICE, 2, BOB, 10).to_wire())
        block = self.build([t])
        self.b.pipeline.import_block(block, [t])
        self.assertNotIn(t.hash, self.b.mempool)
        self.assertEqual(len(self.b.mempool), 1)

    def test_tampered_state_root(self):
        t = transfer(ALICE, 1, BOB, 10)
        block = self.build([t])
        bad = copy.deepcopy(block)
        bad["header"]["state_root"] = "ab" * 32
        # With the old hash and sig the hash no longer matches the header.
        self.refused(bad, [t], "hash")
        # Re-signed by the authority, the state root itself is wrong.
        self.refused(self.resign(bad), [t], "state_root")
        self.b.pipeline.import_block(block, [t])

    def test_tampered_tx_root(self):
        t = transfer(ALICE, 1, BOB, 10)
        block = self.build([t])
        bad = copy.deepcopy(block)
        bad["header"]["tx_root"] = merkle_root([transfer(ALICE, 1, BOB, 11).hash])
        self.refused(self.resign(bad), [t], "tx_root")
        # Other transactions than the header commits to.
        other = transfer(ALICE, 1, BOB, 11)
        bad = copy.deepcopy(block)
        bad["txs"] = [other.hash]
        self.refused(self.resign(bad), [other], "tx_root")
        self.refused(block, [other], "transaction list")
        self.refused(block, [], "transaction list")
        self.b.pipeline.import_block(block, [t])

    def test_bad_sig(self):
        t = transfer(ALICE, 1, BOB, 10)
        block = self.build([t])
        bad = copy.deepcopy(block)
        sig = bytearray(bytes.fromhex(block["sig"]))
        sig[5] ^= 1
        bad["sig"] = bytes(sig).hex()
        self.refused(bad, [t], "signature")
        self.refused(self.resign(block, ALICE), [t], "signature")
        bad["sig"] = "zz"
        self.refused(bad, [t], "sig")
        del bad["sig"]
        self.refused(bad, [t], "sig")
        self.b.pipeline.import_block(block, [t])

    def test_wrong_parent(self):
        block = self.build([])
        bad = copy.deepcopy(block)
        bad["header"]["parent"] = "cd" * 32
        self.refused(self.resign(bad), [], "extend")

    def test_wrong_height(self):
        block = self.build([])
        for h in (0, 2, 7):
            bad = copy.deepcopy(block)
            bad["header"]["height"] = h
            self.refused(self.resign(bad), [], "extend")

    def test_wrong_chain(self):
        block = self.build([])
        bad = copy.deepcopy(block)
        bad["header"]["chain_id"] = "other"
        self.refused(self.resign(bad), [], "chain")

    def test_non_authority_proposer(self):
        t = transfer(ALICE, 1, BOB, 10)
        block, records, view, failed = self.a.chain.build_block([t], ALICE, T1)
        view.release()
        self.assertEqual(block["header"]["proposer"], ALICE.address)
        self.refused(block, [t], "not an authority")

    def test_block_with_invalid_tx(self):
        good = transfer(ALICE, 1, BOB, 10)
        for invalid in (
            transfer(ALICE, 3, BOB, 10),  # nonce gap
            transfer(BOB, 1, CAROL, 10**7),  # more than BOB has
            sign_tx(ALICE, CHAIN_ID, "MINT", 1, 0, {"to": ALICE.address, "amount": 5}),
        ):
            block = self.build([good])
            bad = copy.deepcopy(block)
            txs = [good, invalid]
            bad["txs"] = [t.hash for t in txs]
            bad["header"]["tx_root"] = merkle_root(bad["txs"])
            self.refused(self.resign(bad), txs, "invalid")
        self.b.pipeline.import_block(block, [good])
        self.assertEqual(self.b.queries.get_head()["height"], 1)

    def test_bad_header_fields(self):
        block = self.build([])
        bad = copy.deepcopy(block)
        bad["header"]["extra"] = 1
        self.refused(bad, [], "fields")
        bad = copy.deepcopy(block)
        del bad["header"]["timestamp"]
        self.refused(bad, [], "fields")
        bad = copy.deepcopy(block)
        bad["header"]["timestamp"] = 5
        self.refused(self.resign(bad), [], "timestamp")
