"""Tests for aitnode.jmt, aitnode.proof and the tree's LMDB tables.

The reference below is docs/protocol.md 11.2 written as plainly as
possible (a binary tree over the bits of the key hashes, a lone leaf
standing for its subtree); the 16-ary tree must give the same root after
any sequence of versions, its proofs must verify, and any change to a
proof, key, value or root must not.
"""

import hashlib
import os
import shutil
import tempfile

import cbor2

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aitnode import jmt, proof as P, treestore
from aitnode.chain import Chain
from aitnode.genesis import Genesis
from aitnode.store import Store

from tests.common import ALICE, AUTHORITY, BOB, CAROL, genesis_doc, key, make_node, transfer
from tests.test_state import StoreTestBase, reference_root, root_of_pairs as ref_root


def _h(b):
    return hashlib.sha256(b).digest()


class Tree:
    """A tree over an in-memory node table, one version per apply()."""

    def __init__(self):
        self.nodes = {}
        self.roots = {}
        self.root = None
        self.version = -1
        self.state = {}

    def apply(self, changes):
        """changes: {key_hash: value bytes or None}."""
        self.version += 1
        up = jmt.TreeUpdate(self.nodes.get, self.version)
        up.run(self.root, sorted((k, None if v is None else _h(v) + v) for k, v in changes.items()))
        self.nodes.update(up.nodes)
        self.root = up.root
        self.roots[self.version] = up.root
        for k, v in changes.items():
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v
        return up

    def root_hash(self):
        return jmt.EMPTY if self.root is None else self.root[2]

    def proof(self, kh, version=None):
        root = self.root if version is None else self.roots[version]
        leaf, siblings, value = jmt.prove(self.nodes.get, root, kh)
        return jmt.encode_proof(leaf, siblings), value


# Key hashes: random ones, plus clusters sharing long prefixes (deep paths).
key_hashes = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.builds(lambda p, tail: bytes(p) + tail, st.lists(st.sampled_from([0, 255]), min_size=2, max_size=6),
              st.binary(min_size=26, max_size=30)).map(lambda b: b[:32].ljust(32, b"\x00")),
)
values = st.binary(min_size=0, max_size=12)
versions = st.lists(st.dictionaries(key_hashes, st.one_of(st.none(), values), max_size=12), min_size=1, max_size=8)


class TreeProperties(SynchronousTestCase):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(versions, st.data())
    def test_root_matches_reference_and_proofs_hold(self, steps, data):
        tree = Tree()
        for changes in steps:
            # deletes of keys that exist, sometimes
            if tree.state and data.draw(st.booleans()):
                changes = dict(changes)
                changes[data.draw(st.sampled_from(sorted(tree.state)))] = None
            tree.apply(changes)
            self.assertEqual(tree.root_hash(), ref_root({k: _h(v) for k, v in tree.state.items()}))
        root = tree.root_hash()
        for k, v in tree.state.items():
            proof, value = tree.proof(k)
            self.assertEqual(value, v)
            jmt.verify_proof(root, k, _h(v), proof)
            # It proves that value only, for that key only.
            self.assertRaises(jmt.ProofError, jmt.verify_proof, root, k, _h(v + b"x"), proof)
            self.assertRaises(jmt.ProofError, jmt.verify_proof, root, k, None, proof)
        absent = data.draw(key_hashes)
        if absent not in tree.state:
            proof, value = tree.proof(absent)
            self.assertIsNone(value)
            jmt.verify_proof(root, absent, None, proof)
            self.assertRaises(jmt.ProofError, jmt.verify_proof, root, absent, _h(b"anything"), proof)

    @settings(max_examples=60, deadline=None)
    @given(st.dictionaries(key_hashes, values, min_size=1, max_size=30), st.data())
    def test_any_flipped_bit_fails(self, state, data):
        tree = Tree()
        tree.apply(state)
        root = tree.root_hash()
        k = data.draw(st.sampled_from(sorted(state)))
        present = data.draw(st.booleans())
        if not present:
            k = data.draw(key_hashes.filter(lambda x: x not in state))
        vh = _h(state[k]) if present else None
        proof, _ = tree.proof(k)
        jmt.verify_proof(root, k, vh, proof)

        def flip(b, i):
            b = bytearray(b)
            b[i // 8] ^= 0x80 >> (i % 8)
            return bytes(b)
        for i in range(len(proof) * 8):
            self.assertRaises(jmt.ProofError, jmt.verify_proof, root, k, vh, flip(proof, i))
        for i in data.draw(st.lists(st.integers(0, 255), min_size=1, max_size=16)):
            self.assertRaises(jmt.ProofError, jmt.verify_proof, flip(root, i), k, vh, proof)
            if vh is not None:
                self.assertRaises(jmt.ProofError, jmt.verify_proof, root, k, flip(vh, i), proof)
                self.assertRaises(jmt.ProofError, jmt.verify_proof, root, flip(k, i), vh, proof)
        # Truncated or extended, it is not a proof.
        self.assertRaises(jmt.ProofError, jmt.verify_proof, root, k, vh, proof[:-1])
        self.assertRaises(jmt.ProofError, jmt.verify_proof, root, k, vh, proof + b"\x00")

    @settings(max_examples=60, deadline=None)
    @given(versions)
    def test_old_versions_stay_provable(self, steps):
        tree = Tree()
        history = []
        for changes in steps:
            tree.apply(changes)
            history.append((tree.version, tree.root_hash(), dict(tree.state)))
        for version, root, state in history:
            for k, v in list(state.items())[:5]:
                proof, value = tree.proof(k, version)
                self.assertEqual(value, v)
                jmt.verify_proof(root, k, _h(v), proof)

    def test_empty_tree_and_single_leaf(self):
        tree = Tree()
        tree.apply({})
        self.assertEqual(tree.root_hash(), bytes(32))
        proof, _ = tree.proof(b"\x01" * 32)
        self.assertEqual(proof, b"\x00\x00\x00")
        jmt.verify_proof(bytes(32), b"\x01" * 32, None, proof)
        tree.apply({b"\x02" * 32: b"v"})
        self.assertEqual(tree.root_hash(), _h(b"\x00" + b"\x02" * 32 + _h(b"v")))
        proof, _ = tree.proof(b"\x02" * 32)
        jmt.verify_proof(tree.root_hash(), b"\x02" * 32, _h(b"v"), proof)
        # Deleting the last entry empties the tree again.
        tree.apply({b"\x02" * 32: None})
        self.assertEqual(tree.root_hash(), bytes(32))

    def test_malformed_proofs_are_refused(self):
        root = bytes(32)
        kh = b"\x05" * 32
        for bad in (b"", b"\x02\x00\x00", b"\x00\x01\x01\x00", b"\x00\x00\x09\x00", b"\x00\x01\x01\x80",
                    b"\x00\x00\x01\x40", b"\x01" + b"\x00" * 10, b"\x00\x00\x00\x00"):
            self.assertRaises(P.ProofError, P.verify_proof, root, kh, None, bad)
        self.assertRaises(P.ProofError, P.decode_proof, "not bytes")

    def test_deep_paths_between_two_close_keys(self):
        """Two keys sharing 250 bits: a chain of internal nodes, one proof of 251 siblings."""
        a = bytes(31) + b"\x00"
        b = bytes(31) + b"\x04"
        tree = Tree()
        tree.apply({a: b"1", b: b"2"})
        self.assertEqual(tree.root_hash(), ref_root({a: _h(b"1"), b: _h(b"2")}))
        proof, _ = tree.proof(a)
        self.assertEqual(len(P.decode_proof(proof)[1]), 254)
        jmt.verify_proof(tree.root_hash(), a, _h(b"1"), proof)


class StoredTreeTests(StoreTestBase):
    """The tree in LMDB: proofs at past heights, undo restores roots and
    node tables exactly, pruning keeps what kept heights need."""

    def test_store_proofs_for_every_namespace(self):
        self.commit_transfers([transfer(ALICE, 1, BOB, 10)])
        root = bytes.fromhex(self.store.state_root())
        for ns in ("acct", "param", "chain", "authkey"):
            for k, v in self.store.entries(ns):
                raw, proof = self.store.proof(ns, k, 1)
                self.assertEqual(raw, cbor2.dumps(v, canonical=True))
                jmt.verify_proof(root, jmt.key_hash(ns, k), jmt.value_hash(v), proof)
        raw, proof = self.store.proof("acct", key(99).address, 1)
        self.assertIsNone(raw)
        jmt.verify_proof(root, jmt.key_hash("acct", key(99).address), None, proof)
        self.assertRaises(KeyError, self.store.proof, "acct", ALICE.address, 2)

    def test_a_past_height_proves_its_own_state(self):
        self.commit_transfers([transfer(ALICE, 1, BOB, 10)])
        self.commit_transfers([transfer(ALICE, 2, BOB, 20)], timestamp=1_700_000_200)
        for height in (0, 1, 2):
            header = self.store.block_at(height)["header"]
            raw, proof = self.store.proof("acct", BOB.address, height)
            value = cbor2.loads(raw)
            self.assertEqual(value[0], 10**6 + (0, 10, 30)[height])
            jmt.verify_proof(bytes.fromhex(header["state_root"]), jmt.key_hash("acct", BOB.address),
                             jmt.value_hash(value), proof)

    def tables(self):
        return tables(self.store)

    def test_rollback_restores_roots_and_tables_exactly(self):
        self.commit_transfers([transfer(ALICE, 1, BOB, 10)])
        before = (self.tables(), self.store.state_root())
        self.commit_transfers([transfer(ALICE, 2, CAROL, 20), transfer(BOB, 1, CAROL, 5)], timestamp=1_700_000_200)
        self.commit_transfers([transfer(BOB, 2, key(50), 1)], timestamp=1_700_000_300)
        self.assertNotEqual(self.store.state_root(), before[1])
        self.store.rollback_to(1)
        self.assertEqual((self.tables(), self.store.state_root()), before)
        # And the chain goes on from there, to the same root as before.
        again = self.commit_transfers([transfer(ALICE, 2, CAROL, 20), transfer(BOB, 1, CAROL, 5)],
                                      timestamp=1_700_000_200)
        self.assertEqual(self.store.state_root(), again["header"]["state_root"])
        entries = [(ns, k, v) for ns in ("acct", "param", "chain", "authkey") for k, v in self.store.entries(ns)]
        self.assertEqual(reference_root(entries), again["header"]["state_root"])

    def test_pruning_keeps_every_kept_height_whole(self):
        """Pruned in slices of 3 nodes: heights below the kept one are
        refused at once, every kept height still proves every entry, and
        in the end nothing stale at or below the kept height is left."""
        path = os.path.abspath(self.mktemp())
        store = Store(path)
        self.addCleanup(store.close)
        chain = Chain(store, Genesis(genesis_doc()))
        accounts = [key(200 + i) for i in range(6)]
        for n in range(1, 9):
            block, records, view, failed = chain.build_block(
                [transfer(ALICE, n, accounts[n % 6], n)], AUTHORITY, 1_700_000_000 + n * 100)
            chain.commit(block, records, view)
        before = store.tree_counts()
        self.assertTrue(store.prune_tree(5, 3))  # more left
        self.assertEqual(store.tree_kept_from(), 5)
        self.assertRaises(treestore.Pruned, store.proof, "acct", ALICE.address, 4)
        slices = 1
        while store.prune_tree(5, 3):
            slices += 1
        self.assertGreater(slices, 2)
        self.assertFalse(store.prune_tree(5, 3))  # nothing left: no write at all
        self.assertFalse(store.prune_tree(2, 3))  # the kept height never goes down
        self.assertEqual(store.tree_kept_from(), 5)
        for height in range(5, 9):
            root = bytes.fromhex(store.block_at(height)["header"]["state_root"])
            for a in accounts + [ALICE]:
                raw, proof = store.proof("acct", a.address, height)
                vh = None if raw is None else jmt.value_hash_raw(raw)
                jmt.verify_proof(root, jmt.key_hash("acct", a.address), vh, proof)
        with store.env.begin() as t:
            stale = [k for k, _ in t.cursor(db=store._db["stale"])]
            roots = [int.from_bytes(k, "big") for k, _ in t.cursor(db=store._db["roots"])]
        self.assertTrue(all(int.from_bytes(k[:8], "big") > 5 for k in stale))
        self.assertEqual(roots, [5, 6, 7, 8])
        self.assertLess(store.tree_counts()["tree"], before["tree"])

    def test_a_node_prunes_after_its_blocks_in_slices(self):
        """One authority finalizes with its own votes; with state_history
        2 the node keeps the tree of the two heights under the finalized
        one and below, prunes in slices run by the clock after each block
        (never inside a block's write transaction)."""
        node = make_node(self, state_history=2)
        slices = []
        real = node.store.prune_tree
        node.store.prune_tree = lambda kept_from, budget: (slices.append(budget), real(kept_from, budget))[1]
        for n in range(1, 13):
            node.admission.submit(transfer(ALICE, n, key(300 + n), 5).to_wire())
            node.clock.advance(1)
            seen = len(slices)
            node.pipeline.propose()
            self.assertEqual(len(slices), seen)  # not while committing: after, on the clock
            node.clock.advance(0)
        finalized = node.chain.finality().finalized.height
        self.assertGreater(finalized, 6)
        self.assertEqual(node.store.tree_kept_from(), finalized - 2)
        self.assertTrue(slices)
        self.assertRaises(treestore.Pruned, node.store.proof, "acct", ALICE.address, finalized - 3)
        node.store.proof("acct", ALICE.address, finalized - 2)
        node.pruner.stop()
        node.admission.submit(transfer(ALICE, 13, BOB, 5).to_wire())
        node.pipeline.propose()
        self.assertFalse(node.clock.getDelayedCalls())


class StoredTreeProperties(SynchronousTestCase):
    """Over random sequences of blocks in LMDB: the stored root is the
    documented one, every entry proves at every height, and rolling back
    to any height gives that height's root and tree tables exactly."""

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.dictionaries(
        st.tuples(st.sampled_from(["acct", "rcpt", "param"]), st.text(max_size=5)),
        st.one_of(st.none(), st.integers(0, 10**6), st.lists(st.integers(0, 9), max_size=3)), max_size=12),
        min_size=1, max_size=6), st.data())
    def test_blocks_then_rollback(self, blocks, data):
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, True)
        store = Store(path)
        self.addCleanup(store.close)
        chain = Chain(store, Genesis(genesis_doc()))
        state = {(ns, k): v for ns, k, v in chain.genesis.entries}
        snaps = [(store.state_root(), tables(store), dict(state))]
        for height, changes in enumerate(blocks, 1):
            view = chain.view()
            for (ns, k), v in changes.items():
                view.put(ns, k, v)
                if v is None:
                    state.pop((ns, k), None)
                else:
                    state[(ns, k)] = v
            tree, delta = view.finish()
            view.release()
            store.commit_block({"header": {"height": height}, "hash": "%064x" % height, "sig": "", "txs": []},
                               [], delta, tree)
            self.assertEqual(store.state_root(), reference_root([(ns, k, v) for (ns, k), v in state.items()]))
            snaps.append((store.state_root(), tables(store), dict(state)))
        for height, (root, _, entries) in enumerate(snaps):
            for (ns, k), v in list(entries.items())[-4:]:
                raw, proof = store.proof(ns, k, height)
                self.assertEqual(raw, cbor2.dumps(v, canonical=True))
                jmt.verify_proof(bytes.fromhex(root), jmt.key_hash(ns, k), jmt.value_hash(v), proof)
        back = data.draw(st.integers(0, len(blocks)))
        store.rollback_to(back)
        self.assertEqual((store.state_root(), tables(store)), snaps[back][:2])


def tables(store):
    with store.env.begin() as t:
        return {name: list(t.cursor(db=store._db[name])) for name in treestore.TREE_DBS}


class BranchReaderTests(SynchronousTestCase):
    def test_a_long_branch_holds_no_read_transactions(self):
        """Each block of a competing branch is checked on its own view, and
        its tree update is kept until the switch: it must not keep that
        view's read transaction (an LMDB reader slot; 126 per environment)
        alive, or a branch of 150 blocks cannot be checked at all."""
        from tests.test_p2p import K1, K2
        doc = genesis_doc(authorities=(K1, K2))
        a, b = make_node(self, doc=doc, key=K1), make_node(self, doc=doc, key=K2)
        for node, n, amount in ((a, 5, 2), (b, 150, 1)):
            for nonce in range(1, n + 1):
                node.admission.submit(transfer(ALICE, nonce, CAROL, amount).to_wire())
                node.clock.advance(10)
                node.pipeline.propose()
        branch = [(e["block"], [a.admission.parse(w) for w in e["txs"]])
                  for e in (b.chain.block_entry(h) for h in range(1, 151))]
        readers = []
        steps = a.chain.reorganise_steps(0, branch)
        try:
            while True:
                next(steps)
                readers.append(a.store.env.readers().count("\n"))
        except StopIteration as stop:
            committed, _ = stop.value
        self.assertEqual(len(committed), 150)
        self.assertLessEqual(max(readers), 3)
        self.assertEqual(a.chain.head(), b.chain.head())
