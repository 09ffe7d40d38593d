"""Tests for aitnode.store and aitnode.local: committing, undo, reopening, the node-local tables."""

import hashlib
import os
import struct

import cbor2

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aitnode.chain import Chain
from aitnode.genesis import Genesis
from aitnode.errors import ConfigError
from aitnode.state import StateView, TreeBase
from aitnode.node import compose
from aitnode.store import FORMAT_VERSION, Store, _ekey

from tests.test_state import StoreTestBase, reference_root
from tests.common import ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, transfer


class CommitTests(StoreTestBase):
    def test_commit_block_makes_everything_visible(self):
        t1 = transfer(ALICE, 1, BOB, 1234, fee=500)
        t2 = transfer(BOB, 1, CAROL, 99, fee=400)
        block = self.commit_transfers([t1, t2])
        h = block["hash"]
        self.assertEqual(self.store.head(), (1, h))
        self.assertEqual(self.store.hash_at(1), h)
        self.assertEqual(self.store.block_at(1), block)
        self.assertEqual(self.store.block_by_hash(h)["txs"], [t1.hash, t2.hash])
        rec = self.store.tx_record(t1.hash)
        self.assertEqual(rec["height"], 1)
        self.assertEqual(rec["block"], h)
        self.assertEqual(rec["index"], 0)
        self.assertEqual(rec["tx"], t1.to_wire())
        self.assertEqual(self.store.tx_record(t2.hash)["index"], 1)
        self.assertTrue(self.store.has_tx(t2.hash))
        self.assertEqual(self.store.entry("acct", ALICE.address), [GENESIS_BALANCE - 1234 - 500, 1])
        self.assertEqual(self.store.entry("acct", BOB.address), [10**6 + 1234 - 99 - 400, 1])
        self.assertEqual(self.store.entry("acct", CAROL.address), [99, 0])
        self.assertEqual(self.store.entry("acct", AUTHORITY.address), [900, 0])
        self.assertEqual(self.store.state_root(), block["header"]["state_root"])

    def test_uncommitted_view_never_visible(self):
        view = self.chain.view()
        view.set_account(ALICE.address, 1, 9)
        view.put("param", "base_fee", 12345)
        view.root()
        view.release()
        del view
        self.assertEqual(self.store.entry("acct", ALICE.address), [GENESIS_BALANCE, 0])
        self.assertEqual(self.store.entry("param", "base_fee"), self.genesis.params["base_fee"])
        self.assertEqual(self.store.head(), (0, self.genesis.hash))
        self.assertEqual(self.store.state_root(), self.genesis.header["state_root"])
        self.reopen()
        self.assertEqual(self.store.entry("acct", ALICE.address), [GENESIS_BALANCE, 0])

    def test_failed_commit_writes_nothing(self):
        """An error in the middle of commit_block leaves the store as it was."""
        block, records, view, failed = self.chain.build_block(
            [transfer(ALICE, 1, BOB, 10)], AUTHORITY, 1_700_000_100
        )
        tree, changes = view.finish()
        view.release()
        records = records + [("ab" * 32, {"unencodable": object()})]
        before = dict(self.store.entries("acct"))
        counts = self.store.tree_counts()
        self.assertRaises(Exception, self.store.commit_block, block, records, changes, tree)
        self.assertEqual(self.store.tree_counts(), counts)
        self.assertEqual(dict(self.store.entries("acct")), before)
        self.assertEqual(self.store.head(), (0, self.genesis.hash))
        self.assertIsNone(self.store.block_by_hash(block["hash"]))
        self.assertIsNone(self.store.hash_at(1))
        self.assertFalse(self.store.has_tx(records[0][0]))
        self.assertEqual(self.store.state_root(), self.genesis.header["state_root"])

    def test_undo_data_recorded(self):
        t1 = transfer(ALICE, 1, CAROL, 10, fee=300)
        self.commit_transfers([t1])
        store = self.store
        with store.env.begin(db=store._db["undo"]) as t:
            raw = t.get(struct.pack(">Q", 1))
            genesis_undo = t.get(struct.pack(">Q", 0))
        self.assertIsNotNone(genesis_undo)
        undo = {(ns, k): old for ns, k, old in cbor2.loads(raw)["entries"]}
        self.assertEqual(
            set(undo),
            {("acct", ALICE.address), ("acct", CAROL.address), ("acct", AUTHORITY.address)},
        )
        self.assertEqual(undo[("acct", ALICE.address)], cbor2.dumps([GENESIS_BALANCE, 0], canonical=True))
        self.assertIsNone(undo[("acct", CAROL.address)])
        self.assertIsNone(undo[("acct", AUTHORITY.address)])

    def test_mempool_snapshot(self):
        w1 = transfer(ALICE, 1, BOB, 1).to_wire()
        w2 = transfer(ALICE, 2, BOB, 2).to_wire()
        w3 = transfer(BOB, 1, ALICE, 3).to_wire()
        self.assertEqual(self.local.load_mempool(), [])
        self.local.save_mempool([w1, w2, w3])
        self.assertEqual(self.local.load_mempool(), [w1, w2, w3])
        # Saving again replaces the snapshot.
        self.local.save_mempool([w3])
        self.assertEqual(self.local.load_mempool(), [w3])
        self.local.save_mempool([w2, w1])
        self.reopen()
        self.assertEqual(self.local.load_mempool(), [w2, w1])
        self.local.clear_mempool()
        self.assertEqual(self.local.load_mempool(), [])

    def test_reopen_keeps_everything(self):
        t1 = transfer(ALICE, 1, BOB, 55)
        b1 = self.commit_transfers([t1])
        t2 = transfer(BOB, 1, CAROL, 66)
        b2 = self.commit_transfers([t2], timestamp=1_700_000_200)
        self.local.record_failed({"cd" * 32: {"tx": {"x": 1}, "error": {"code": "c", "message": "m"}}})
        accounts = dict(self.store.entries("acct"))
        root = self.store.state_root()
        self.reopen()
        self.assertEqual(self.store.head(), (2, b2["hash"]))
        self.assertEqual(self.store.block_at(1), b1)
        self.assertEqual(self.store.block_at(2), b2)
        self.assertEqual(self.store.hash_at(0), self.genesis.hash)
        self.assertEqual(self.store.tx_record(t1.hash)["height"], 1)
        self.assertEqual(self.store.tx_record(t2.hash)["height"], 2)
        self.assertEqual(dict(self.store.entries("acct")), accounts)
        self.assertEqual(self.store.state_root(), root)
        self.assertEqual(self.store.meta("genesis_hash"), self.genesis.hash)
        self.assertEqual(self.store.meta("chain_id"), CHAIN_ID)
        self.assertEqual(self.store.meta("format_version"), FORMAT_VERSION)
        self.assertEqual(self.local.failed_record("cd" * 32)["error"]["code"], "c")
        # And the chain goes on from there.
        b3 = self.commit_transfers([transfer(BOB, 2, ALICE, 1)], timestamp=1_700_000_300)
        self.assertEqual(b3["header"]["parent"], b2["hash"])
        self.assertEqual(b3["header"]["height"], 3)

    def test_other_genesis_refused(self):
        self.commit_transfers([transfer(ALICE, 1, BOB, 1)])
        self.store.close()
        self.store = Store(self.path)
        other = Genesis(genesis_doc(base_fee=11))
        self.assertNotEqual(other.hash, self.genesis.hash)
        e = self.assertRaises(ConfigError, Chain, self.store, other)
        self.assertIn("genesis", str(e))
        self.assertIn(self.path, str(e))
        # Nothing was changed by the refusal.
        self.assertEqual(self.store.head()[0], 1)
        self.assertEqual(self.store.meta("genesis_hash"), self.genesis.hash)
        Chain(self.store, self.genesis)


class StateKeyTests(StoreTestBase):
    """No LMDB key is user text: entries are stored under the hash of their key."""

    def raw_state(self):
        with self.store.env.begin(db=self.store._db["state"]) as t:
            return list(t.cursor())

    def commit_view(self, view):
        tree, changes = view.finish()
        view.release()
        head = self.store.head()
        block = {"header": {"height": head[0] + 1}, "hash": "%064x" % (head[0] + 1), "sig": "", "txs": []}
        self.store.commit_block(block, [], changes, tree)
        return tree.root_hash().hex()

    def test_a_key_of_any_length_is_stored_and_read_back(self):
        long_key = "\U0001F600" * 600  # 2400 bytes: LMDB keys stop at 511
        view = self.chain.view()
        view.put("rcpt", long_key, {"n": 1})
        view.put("rcpt", "a", {"n": 2})
        root = self.commit_view(view)
        self.assertEqual(self.store.entry("rcpt", long_key), {"n": 1})
        self.assertEqual(self.store.entries("rcpt"), [("a", {"n": 2}), (long_key, {"n": 1})])
        self.assertEqual(self.store.state_root(), root)
        self.assertEqual(self.chain.view().get("rcpt", long_key), {"n": 1})
        self.assertIsNone(self.store.entry("rcpt", long_key[:-1]))
        for k, _ in self.raw_state():
            self.assertLessEqual(len(k), len(b"authkey/") + 32)  # the longest namespace
            self.assertNotIn("\U0001F600".encode(), k)
        # The root is the same as if the entries were stored any other way.
        view = self.chain.view()
        entries = self.genesis.entries + [("rcpt", long_key, {"n": 1}), ("rcpt", "a", {"n": 2})]
        self.assertEqual(view.root(), reference_root(entries))
        view.release()
        # Undo puts back exactly what was there.
        self.store.rollback_to(0)
        self.assertEqual(self.store.entries("rcpt"), [])
        self.assertEqual(self.store.state_root(), self.genesis.header["state_root"])

    def test_records_hold_their_key_and_value(self):
        for k, v in self.raw_state():
            ns, digest = k.split(b"/", 1)
            key, value = cbor2.loads(v)
            self.assertEqual(digest, hashlib.sha256(cbor2.dumps(key, canonical=True)).digest())
            self.assertEqual(v, cbor2.dumps([key, value], canonical=True))
            self.assertEqual(self.store.entry(ns.decode(), key), value)
        self.assertEqual(len(self.raw_state()), self.store.count_entries())
        self.assertEqual(dict(self.store.entries("param")), self.genesis.params)
        self.assertEqual([k for k, _ in self.store.entries("acct")], sorted([ALICE.address, BOB.address]))

    def test_a_record_under_the_wrong_hash_is_not_read_as_another_key(self):
        k_alice, _ = _ekey("acct", ALICE.address)
        k_bob, _ = _ekey("acct", BOB.address)
        with self.store.env.begin(write=True, db=self.store._db["state"]) as t:
            t.put(k_bob, t.get(k_alice))
        self.assertRaises(ValueError, self.store.entry, "acct", BOB.address)


class FormatVersionTests(StoreTestBase):
    def test_a_data_dir_of_another_format_refuses_to_start(self):
        self.commit_transfers([transfer(ALICE, 1, BOB, 1)])
        for old in (1, 2, FORMAT_VERSION + 1):  # 2: the multiset-hash root, before the state tree
            self.store.set_meta(format_version=old)
            e = self.assertRaises(ConfigError, self.reopen)
            message = str(e)
            self.assertNotIn("\n", message)
            self.assertIn(f"format {old}", message)
            self.assertIn(self.path, message)
            self.assertIn("resync", message)
            self.assertIn("reset", message)
        # Nothing was changed by the refusal.
        self.store.set_meta(format_version=FORMAT_VERSION)
        self.reopen()
        self.assertEqual(self.store.head()[0], 1)

    def test_the_node_refuses_an_old_data_dir(self):
        path = self.path
        self.store.set_meta(format_version=1)
        self.store.close()
        self.store = None
        e = self.assertRaises(ConfigError, compose, path, self.genesis, Clock())
        self.assertIn("storage format 1", str(e))


class StoreEmptyTests(SynchronousTestCase):
    def test_fresh_store_is_empty(self):
        store = Store(os.path.abspath(self.mktemp()))
        self.addCleanup(store.close)
        self.assertTrue(store.is_empty())
        self.assertIsNone(store.head())
        view = StateView(store, base=TreeBase.empty())
        self.assertEqual(view.root(), "00" * 32)
        view.release()
        Chain(store, Genesis(genesis_doc()))
        self.assertFalse(store.is_empty())
