"""Tests for aitnode.state: the LMDB Store, StateView and the state root."""

import hashlib
import os

import cbor2

from twisted.trial.unittest import SynchronousTestCase

from aitnode.chain import Chain
from aitnode.genesis import Genesis
from aitnode.local import LocalStore
from aitnode.store import Store

from tests.common import ALICE, AUTHORITY, BOB, CAROL, GENESIS_BALANCE, genesis_doc, key, transfer


def _h(data):
    return hashlib.sha256(data).digest()


def _bit(kh, i):
    return (kh[i // 8] >> (7 - i % 8)) & 1


def root_of_pairs(pairs, depth=0):
    """docs/protocol.md 11.2, as written: a binary tree over the key
    hashes' bits in which a lone leaf stands for its subtree."""
    if not pairs:
        return bytes(32)
    if len(pairs) == 1:
        ((kh, vh),) = pairs.items()
        return _h(b"\x00" + kh + vh)
    left = {k: v for k, v in pairs.items() if not _bit(k, depth)}
    right = {k: v for k, v in pairs.items() if _bit(k, depth)}
    return _h(b"\x01" + root_of_pairs(left, depth + 1) + root_of_pairs(right, depth + 1))


def reference_root(entries):
    """The state root of entries [(ns, key, value)], from the documented formula."""
    dump = lambda v: cbor2.dumps(v, canonical=True)  # noqa: E731
    return root_of_pairs({_h(dump([ns, k])): _h(dump(v)) for ns, k, v in entries}).hex()


class StoreTestBase(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.genesis = Genesis(genesis_doc())
        self.store = Store(self.path)
        self.addCleanup(self._close)
        self.chain = Chain(self.store, self.genesis)
        self.local = LocalStore(self.store)

    def _close(self):
        if self.store is not None:
            self.store.close()
            self.store = None

    def reopen(self):
        self.store.close()
        self.store = Store(self.path)
        self.chain = Chain(self.store, self.genesis)
        self.local = LocalStore(self.store)

    def commit_transfers(self, txs, timestamp=1_700_000_100):
        block, records, view, failed = self.chain.build_block(txs, AUTHORITY, timestamp)
        self.assertEqual(failed, {})
        self.chain.commit(block, records, view)
        return block


class StateViewTests(StoreTestBase):
    def test_put_get_overlay(self):
        view = self.chain.view()
        self.assertEqual(view.get("acct", ALICE.address), [GENESIS_BALANCE, 0])
        view.put("acct", ALICE.address, [5, 3])
        view.put("misc", "thing", {"a": [1, "b", True]})
        self.assertEqual(view.get("acct", ALICE.address), [5, 3])
        self.assertEqual(view.account(ALICE.address), (5, 3))
        self.assertEqual(view.get("misc", "thing"), {"a": [1, "b", True]})
        # Nothing reached the store.
        self.assertEqual(self.store.entry("acct", ALICE.address), [GENESIS_BALANCE, 0])
        self.assertIsNone(self.store.entry("misc", "thing"))
        # A second view sees the head, not the first view's writes.
        other = self.chain.view()
        self.assertEqual(other.account(ALICE.address), (GENESIS_BALANCE, 0))
        self.assertIsNone(other.get("misc", "thing"))
        # put(None) deletes in the overlay.
        view.put("acct", BOB.address, None)
        self.assertIsNone(view.get("acct", BOB.address))
        self.assertEqual(view.account(BOB.address), (0, 0))
        view.release()
        other.release()

    def test_changes_lists_old_and_new_raw(self):
        view = self.chain.view()
        view.set_account(ALICE.address, 7, 1)
        tree, changes = view.finish()
        old, new = changes[("acct", ALICE.address)]
        self.assertEqual(old, cbor2.dumps([GENESIS_BALANCE, 0], canonical=True))
        self.assertEqual(new, cbor2.dumps([7, 1], canonical=True))
        self.assertEqual(list(changes), [("acct", ALICE.address)])
        view.release()

    def test_zero_account_is_no_entry(self):
        view = self.chain.view()
        stranger = key(77).address
        self.assertEqual(view.account(stranger), (0, 0))
        self.assertIsNone(view.get("acct", stranger))
        # Writing (0, 0) to an account that never existed changes nothing.
        view.set_account(stranger, 0, 0)
        self.assertEqual(view.changes, {})
        self.assertEqual(view.root(), self.genesis.header["state_root"])
        # Emptying an existing account deletes its entry.
        view.set_account(BOB.address, 0, 0)
        self.assertIsNone(view.get("acct", BOB.address))
        self.assertEqual(view.changes[("acct", BOB.address)][1], None)
        # (0, 1) is not empty: the nonce is kept.
        view.set_account(CAROL.address, 0, 1)
        self.assertEqual(view.get("acct", CAROL.address), [0, 1])
        tree, changes = view.finish()
        view.release()
        block = {"header": dict(self.genesis.header, height=1), "hash": "11" * 32, "sig": "", "txs": []}
        self.store.commit_block(block, [], changes, tree)
        self.assertIsNone(self.store.entry("acct", BOB.address))
        self.assertEqual(self.store.entry("acct", CAROL.address), [0, 1])
        self.assertNotIn(BOB.address, dict(self.store.entries("acct")))
        self.assertEqual(self.chain.view().account(BOB.address), (0, 0))

    def test_root_independent_of_write_order(self):
        a, b, c = ALICE.address, BOB.address, CAROL.address
        v1 = self.chain.view()
        v1.set_account(a, 100, 1)
        v1.set_account(b, 200, 0)
        v1.set_account(c, 300, 2)
        v1.put("param", "base_fee", 99)
        v2 = self.chain.view()
        v2.put("param", "base_fee", 1)
        v2.set_account(c, 1, 1)
        v2.set_account(b, 5, 5)
        v2.set_account(a, 100, 1)
        v2.set_account(c, 300, 2)
        v2.put("param", "base_fee", 99)
        v2.set_account(b, 200, 0)
        self.assertEqual(v1.root(), v2.root())
        self.assertEqual(v1.tree.root, v2.tree.root)
        self.assertNotEqual(v1.root(), self.genesis.header["state_root"])
        # Writing back the original values gives the head's root again.
        v2.set_account(a, GENESIS_BALANCE, 0)
        v2.set_account(b, 10**6, 0)
        v2.set_account(c, 0, 0)
        v2.put("param", "base_fee", self.genesis.params["base_fee"])
        self.assertEqual(v2.root(), self.genesis.header["state_root"])
        self.assertEqual(v2.changes, {})
        v1.release()
        v2.release()

    def test_root_independent_of_block_split(self):
        """The same final state reached in one block or in two gives one root."""
        other_store = Store(os.path.abspath(self.mktemp()))
        self.addCleanup(other_store.close)
        other = Chain(other_store, self.genesis)
        t1 = transfer(ALICE, 1, BOB, 10)
        t2 = transfer(ALICE, 2, CAROL, 20)
        t3 = transfer(BOB, 1, CAROL, 30)
        self.commit_transfers([t1, t2, t3])
        for batch in ([t1], [t2, t3]):
            block, records, view, failed = other.build_block(batch, AUTHORITY, 1_700_000_100)
            self.assertEqual(failed, {})
            other.commit(block, records, view)
        self.assertEqual(self.store.state_root(), other_store.state_root())
        self.assertEqual(dict(self.store.entries("acct")), dict(other_store.entries("acct")))
        self.assertEqual(
            self.chain.head_header()["state_root"], other.head_header()["state_root"]
        )

    def test_root_changes_with_any_balance(self):
        base = self.genesis.header["state_root"]
        seen = {base}
        for addr in (ALICE.address, BOB.address, CAROL.address, AUTHORITY.address):
            view = self.chain.view()
            bal, nonce = view.account(addr)
            view.set_account(addr, bal + 1, nonce)
            root = view.root()
            self.assertNotIn(root, seen)
            seen.add(root)
            view.set_account(addr, bal, nonce + 1)
            root = view.root()
            self.assertNotIn(root, seen)
            seen.add(root)
            view.set_account(addr, bal, nonce)
            self.assertEqual(view.root(), base)
            view.release()

    def test_genesis_root_follows_the_documented_formula(self):
        g = self.genesis
        root = reference_root(g.entries)
        self.assertEqual(root, g.header["state_root"])
        self.assertEqual(self.store.state_root(), root)
        self.assertEqual(self.chain.head_header()["state_root"], root)
        # The entries are what the store holds.
        self.assertEqual(len(g.entries), self.store.count_entries())
        for ns, k, v in g.entries:
            self.assertEqual(self.store.entry(ns, k), v)
        self.assertEqual(self.store.entry("acct", ALICE.address), [GENESIS_BALANCE, 0])
        self.assertEqual(self.store.entry("chain", "supply")["genesis"], GENESIS_BALANCE + 10**6)

    def test_genesis_root_over_current_state(self):
        """After blocks, the stored root is the documented root over all entries."""
        self.commit_transfers([transfer(ALICE, 1, BOB, 10), transfer(BOB, 1, CAROL, 7)])
        entries = [(ns, k, v) for ns in ("acct", "param", "chain", "authkey") for k, v in self.store.entries(ns)]
        self.assertEqual(reference_root(entries), self.store.state_root())
        self.assertEqual(reference_root(entries), self.chain.head_header()["state_root"])
