"""The state tree's tables in LMDB (jmt.py holds the tree itself).

- ``tree``:  node key (version, 8 bytes; nibble path) -> node bytes.  A
  block's nodes share its version, so its writes are one run of keys and
  undoing it deletes one key range.
- ``stale``: version (8 bytes) + node key -> b"": the node left the tree at
  that version; the versions before it still need it.
- ``roots``: height (8 bytes) -> root reference of that height's tree:
  b"" for the empty tree, else version (8) || is_leaf (1) || hash (32).

Pruning keeps every version at or above ``kept_from`` whole: a node that
went stale at or below it is needed by no kept version.  Every function
here works inside a write or read transaction its caller owns.
"""

import struct

import cbor2

from aitnode import jmt
from aitnode.state import TreeBase

TREE_DBS = ("tree", "stale", "roots")
_ver = struct.Struct(">Q")


class Pruned(LookupError):
    """The tree of that height was pruned."""


def encode_ref(ref):
    if ref is None:
        return b""
    return ref[0] + (b"\x01" if ref[1] else b"\x00") + ref[2]


def decode_ref(raw):
    if not raw:
        return None
    return (raw[:8], raw[8] == 1, raw[9:41])


def root_ref(t, dbs, height):
    """The root reference of height's tree; KeyError if it has none."""
    raw = t.get(_ver.pack(height), db=dbs["roots"])
    if raw is None:
        raise KeyError(height)
    return decode_ref(raw)


def write(t, dbs, height, tree):
    """Write one block's TreeUpdate (its version is height)."""
    if tree.nodes:
        t.cursor(db=dbs["tree"]).putmulti(sorted(tree.nodes.items()))
    if tree.stale:
        prefix = _ver.pack(height)
        t.cursor(db=dbs["stale"]).putmulti(sorted((prefix + k, b"") for k in tree.stale))
    t.put(_ver.pack(height), encode_ref(tree.root), db=dbs["roots"])


def _delete_prefix(t, db, prefix):
    cur = t.cursor(db=db)
    if not cur.set_range(prefix):
        return
    while cur.key()[:len(prefix)] == prefix:
        cur.delete()  # and moves to the next: key() is b"" past the end


def undo(t, dbs, height):
    """Forget version height: its nodes, its stale marks (the nodes it
    replaced are live again) and its root."""
    prefix = _ver.pack(height)
    _delete_prefix(t, dbs["tree"], prefix)
    _delete_prefix(t, dbs["stale"], prefix)
    t.delete(prefix, db=dbs["roots"])


def prune(t, dbs, kept_from, budget):
    """Delete what no version >= kept_from needs, at most budget nodes.
    Returns how many nodes it deleted."""
    done = 0
    cur = t.cursor(db=dbs["stale"])
    tree = dbs["tree"]
    if cur.first():
        while done < budget:
            key = cur.key()
            if not key or _ver.unpack_from(key)[0] > kept_from:
                break
            t.delete(key[8:], db=tree)
            done += 1
            cur.delete()
    rcur = t.cursor(db=dbs["roots"])
    if rcur.first():
        while True:
            key = rcur.key()
            if not key or _ver.unpack_from(key)[0] >= kept_from:
                break
            rcur.delete()
    return done


def prove(t, dbs, height, kh):
    """(leaf, siblings) for key hash kh in height's tree."""
    try:
        ref = root_ref(t, dbs, height)
    except KeyError:
        raise Pruned(height)
    return jmt.prove(lambda k: t.get(k, db=dbs["tree"]), ref, kh)


def counts(t, dbs):
    """{table: entries} of the tree's tables (metrics, bench)."""
    return {name: t.stat(dbs[name])["entries"] for name in TREE_DBS}


class TreeTables:
    """Store's part for the state tree (a mixin: self.env, self._db)."""

    def prune_tree(self, kept_from, budget):
        """Make heights below kept_from unprovable (at once) and delete the
        nodes only they need (at most budget, in this write transaction);
        True when more is left to delete.  Not part of any block: the
        node calls it in slices after commits (pipeline)."""
        with self.env.begin() as t:
            current = self._kept_from(t)
            cur = t.cursor(db=self._db["stale"])
            first = cur.key() if cur.first() else None
        if kept_from <= current and (first is None or _ver.unpack_from(first)[0] > current):
            return False  # nothing to do: no write transaction (no fsync)
        with self.env.begin(write=True) as t:
            if kept_from > current:
                t.put(b"tree_kept_from", cbor2.dumps(kept_from), db=self._db["meta"])
            return prune(t, self._db, max(kept_from, current), budget) >= budget

    def _kept_from(self, t):
        raw = t.get(b"tree_kept_from", db=self._db["meta"])
        return 0 if raw is None else cbor2.loads(raw)

    def tree_base(self):
        """The head's tree, as a state.TreeBase."""
        head = self.head()
        if head is None:
            return TreeBase.empty()
        with self.env.begin() as t:
            return TreeBase(head[0], root_ref(t, self._db, head[0]))

    def tree_reader(self, txn):
        """get(node_key) -> bytes or None, through txn (a state_reader)."""
        db = self._db["tree"]
        return lambda key: txn.get(key, db=db)

    def state_root(self, height=None):
        """The state root (hex) of height's state (the head's by default)."""
        if height is None:
            height = self.head()[0]
        with self.env.begin() as t:
            ref = root_ref(t, self._db, height)
        return (jmt.EMPTY if ref is None else ref[2]).hex()

    def tree_kept_from(self):
        """The lowest height whose state tree is kept whole."""
        with self.env.begin() as t:
            return self._kept_from(t)

    def tree_counts(self):
        with self.env.begin() as t:
            return counts(t, self._db)

    def proof(self, ns, key, height):
        """(the value's canonical bytes or None, proof bytes) of entry
        (ns, key) in height's state.  KeyError: no block at height;
        Pruned: that height's tree is pruned."""
        head = self.head()[0]
        if not 0 <= height <= head:
            raise KeyError(height)
        kh = jmt.key_hash(ns, key)
        with self.env.begin() as t:
            if height < self._kept_from(t):
                raise Pruned(height)
            leaf, siblings, value = prove(t, self._db, height, kh)
        return value, jmt.encode_proof(leaf, siblings)
