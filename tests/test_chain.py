"""Tests for aitnode.chain: genesis, transaction rules, building and
verifying blocks."""

import copy

import cbor2

from twisted.trial.unittest import SynchronousTestCase

from aitnode import crypto, p2p, params as P
from aitnode.blocks import ENTRY_OVERHEAD, block_bytes, block_hash, tx_bytes
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
        self.assertEqual(set(header), {"chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root",
                                       "votes_root", "evidence_root", "authorities_hash"})
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

    def test_empty_block_and_timestamp_never_before_the_turn(self):
        # The genesis is stamped 0 and turns are 10 ms apart: a block asked
        # for at 5 ms is stamped at its proposer's turn.
        block, _ = self.block([], timestamp=5)
        self.assertEqual(block["header"]["timestamp"], 10)
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
        self.assertEqual(self.b.store.state_root(), self.a.store.state_root())
        self.assertEqual(dict(self.b.store.entries("acct")), dict(self.a.store.entries("acct")))
        self.assertEqual(self.b.queries.get_tx(txs[1].hash)["block"]["hash"], block["hash"])
        # And the next one on top of it.
        t3 = transfer(BOB, 2, ALICE, 1)
        block2 = self.a.chain.build_block([t3], AUTHORITY, T1 + 5)
        self.assertEqual(block2[3], {})
        self.a.chain.commit(*block2[:3])
        self.b.pipeline.import_block(block2[0], [t3])
        self.assertEqual(self.b.chain.head(), (2, block2[0]["hash"]))

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
        self.assertRaises(AitError, self.a.chain.build_block, [t], ALICE, T1)
        block = self.build([t])
        block["header"]["proposer"] = ALICE.address
        self.refused(self.resign(block, ALICE), [t], "not an authority")

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
        self.refused(self.resign(bad), [], "before its proposer's turn")


class BlockSizeTests(SynchronousTestCase):
    """Blocks are bounded in bytes (max_block_bytes) so that one always fits
    in one peer frame, and verify_block enforces both block limits."""

    LIMIT = P.MIN_BLOCK_BYTES

    def setUp(self):
        self.doc = genesis_doc(max_block_bytes=self.LIMIT)
        self.a = make_node(self, doc=self.doc)
        self.b = make_node(self, doc=self.doc, key=None)

    def fill(self, node, n):
        """n transfers, half from ALICE and half from BOB, into node's mempool."""
        txs = []
        for i in range(n):
            sender, to = (ALICE, CAROL) if i % 2 == 0 else (BOB, CAROL)
            tx = transfer(sender, i // 2 + 1, to, 1 + i)
            node.admission.submit(tx.to_wire())
            txs.append(tx)
        return txs

    def measure(self, node, block):
        txs = [node.chain.parse_stored_tx(node.store.tx_record(h)["tx"]) for h in block["txs"]]
        return block_bytes(txs, block.get("attestations", {}))

    def test_the_builder_stops_at_the_byte_limit_and_the_rest_follows(self):
        txs = self.fill(self.a, 400)
        per_tx = tx_bytes(txs[0])
        self.assertGreater(per_tx * len(txs), 2 * self.LIMIT)  # more than two blocks' worth
        heights = {}
        while len(self.a.mempool):
            block = self.a.pipeline.propose()
            size = self.measure(self.a, block)
            self.assertLessEqual(size, self.LIMIT)
            if len(self.a.mempool):
                # Full: the next pending transaction would have passed the limit.
                nxt = self.a.mempool.candidates()[0]
                self.assertGreater(size + tx_bytes(nxt), self.LIMIT)
            for h in block["txs"]:
                heights[h] = block["header"]["height"]
            # What a peer receives is one frame, within the documented allowance.
            entry = self.a.chain.block_entry(block["header"]["height"])
            self.assertLessEqual(len(p2p.encode("block", entry)), size + ENTRY_OVERHEAD)
            self.b.pipeline.import_block(entry["block"], [self.b.admission.parse(w) for w in entry["txs"]])
        self.assertEqual(sorted(heights), sorted(t.hash for t in txs))
        self.assertGreaterEqual(max(heights.values()), 3)
        for tx in txs:
            self.assertEqual(self.a.queries.get_tx(tx.hash)["status"], "included")
        self.assertEqual(self.b.queries.get_head(), self.a.queries.get_head())

    def test_max_block_txs_and_bytes_are_read_when_the_block_starts(self):
        self.fill(self.a, 20)
        self.a.admission.submit_own("PARAM_UPDATE", {"key": "max_block_bytes", "value": P.MAX_BLOCK_BYTES})
        self.a.admission.submit_own("PARAM_UPDATE", {"key": "max_block_txs", "value": 3})
        block = self.a.pipeline.propose()
        self.assertEqual(len(block["txs"]), 22)  # the limits in force when it started
        for tx in [transfer(ALICE, 11 + i, BOB, 1) for i in range(5)]:
            self.a.admission.submit(tx.to_wire())
        self.assertEqual(len(self.a.pipeline.propose()["txs"]), 3)
        self.assertEqual(self.a.queries.get_params()["max_block_bytes"], P.MAX_BLOCK_BYTES)
        # A verifier reads the limits the same way.
        for h in (1, 2):
            entry = self.a.chain.block_entry(h)
            self.b.pipeline.import_block(entry["block"], [self.b.admission.parse(w) for w in entry["txs"]])
        self.assertEqual(self.b.queries.get_head(), self.a.queries.get_head())

    def refused(self, block, txs, word):
        e = self.assertRaises(AitError, self.b.chain.verify_block, block, txs)
        self.assertEqual(e.code, "bad_block")
        self.assertIn(word, e.message)
        self.assertEqual(self.b.queries.get_head()["height"], 0)
        return e

    def test_verify_block_refuses_a_block_over_max_block_bytes(self):
        txs = self.fill(self.a, 400)
        block, records, view, failed = self.a.chain.build_block(txs, AUTHORITY, T1, max_bytes=10**9)
        view.release()
        self.assertEqual(failed, {})
        self.assertEqual(len(block["txs"]), 400)
        e = self.refused(block, txs, "max_block_bytes")
        self.assertIn(str(self.LIMIT), e.message)
        # The same transactions cut at the limit are a good block.
        block, records, view, failed = self.a.chain.build_block(txs, AUTHORITY, T1)
        view.release()
        n = len(block["txs"])
        self.assertLess(n, 400)
        self.b.pipeline.import_block(block, txs[:n])
        self.assertEqual(self.b.queries.get_head()["height"], 1)

    def test_verify_block_refuses_a_block_over_max_block_txs(self):
        doc = genesis_doc(max_block_txs=5)
        a, b = make_node(self, doc=doc), make_node(self, doc=doc, key=None)
        txs = [transfer(ALICE, n, BOB, 1) for n in range(1, 7)]
        block, records, view, failed = a.chain.build_block(txs, AUTHORITY, T1, max_txs=6)
        view.release()
        self.assertEqual(len(block["txs"]), 6)
        e = self.assertRaises(AitError, b.chain.verify_block, block, txs)
        self.assertEqual(e.code, "bad_block")
        self.assertIn("max_block_txs", e.message)
        block, records, view, failed = a.chain.build_block(txs, AUTHORITY, T1)
        view.release()
        self.assertEqual(len(block["txs"]), 5)
        b.chain.verify_block(block, txs[:5])[2].release()

    def test_no_param_update_makes_blocks_unsendable(self):
        for value in (P.MAX_BLOCK_BYTES + 1, p2p.MAX_MESSAGE, 2**64 - 1, P.MIN_BLOCK_BYTES - 1, 0):
            e = self.assertRaises(AitError, self.a.admission.submit_own, "PARAM_UPDATE",
                                  {"key": "max_block_bytes", "value": value})
            self.assertEqual(e.code, "bad_param")
        for value in (0, 100_001):
            e = self.assertRaises(AitError, self.a.admission.submit_own, "PARAM_UPDATE",
                                  {"key": "max_block_txs", "value": value})
            self.assertEqual(e.code, "bad_param")
        self.assertRaises(AitError, Genesis, genesis_doc(max_block_bytes=P.MAX_BLOCK_BYTES + 1))
        # The largest allowed block and its envelope fit one frame, with the margin.
        self.assertLessEqual(P.MAX_BLOCK_BYTES + ENTRY_OVERHEAD, p2p.MAX_MESSAGE)
        self.assertEqual(P.FRAME_BYTES, p2p.MAX_MESSAGE)
        self.assertLess(P.DEFAULT_MAX_BLOCK_BYTES, P.MAX_BLOCK_BYTES)
        for value in (P.MIN_BLOCK_BYTES, P.MAX_BLOCK_BYTES):
            self.a.admission.submit_own("PARAM_UPDATE", {"key": "max_block_bytes", "value": value})

    def test_the_default_applies_while_unset(self):
        node = make_node(self)
        self.assertNotIn("max_block_bytes", node.queries.get_params())
        self.assertEqual(P.block_limits(node.chain.params()), (10_000, P.DEFAULT_MAX_BLOCK_BYTES))
        self.assertEqual(P.DEFAULT_MAX_BLOCK_BYTES, 8 * 1024 * 1024)
