"""Tests for aitnode.chain: genesis, transaction rules, building and
verifying blocks."""

import copy

import cbor2

from twisted.trial.unittest import SynchronousTestCase

from aitnode import crypto
from aitnode.blocks import block_hash
from aitnode.genesis import Genesis
from aitnode.encoding import ZERO_HASH, merkle_root
from aitnode.errors import AitError
from aitnode.tx import sign_tx

from tests.test_rules import RulesTestBase
from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, make_node, transfer, sha256_hex)

T1 = 1_700_000_100


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
