"""The state: entries ``(namespace, key) -> value`` and their root.

The state holds accounts, params, authorities, supply counters, receipts
and spent payments.  Its root is the root of a Jellyfish Merkle Tree over
the entries (jmt.py, docs/protocol.md 11.2), so a node can prove one
entry, or its absence, to a client that holds nothing but the root.

``StateView`` is the state at the head (or at a past height, or after a
block not yet committed) plus a block's uncommitted changes; ``finish``
folds them into a jmt.TreeUpdate.  store.Store writes both.  This module
knows nothing of HTTP or peers.
"""

import cbor2

from aitnode import jmt
from aitnode.encoding import canonical_unchecked
from aitnode.steps import run_steps

_loads = cbor2.loads


class TreeBase:
    """The tree a view starts from: the height whose state it is (-1:
    before genesis), its root reference, and nodes not yet in LMDB
    ({node_key: bytes}, from blocks verified ahead of a branch switch)."""

    __slots__ = ("height", "root", "pending")

    def __init__(self, height, root, pending=None):
        self.height = height
        self.root = root
        self.pending = pending or {}

    @classmethod
    def empty(cls):
        return cls(-1, None)

    def after(self, tree):
        """The base for the block after the one tree (a TreeUpdate) made.
        It shares (and extends) this base's pending nodes: use only the new one."""
        self.pending.update(tree.nodes)
        return TreeBase(tree.version, tree.root, self.pending)


class StateView:
    """The state at the head plus uncommitted changes.

    Reads fall through to the store (through one read transaction, kept
    until ``release``); writes stay in memory.  ``finish`` hashes each
    touched entry once, however often a block wrote it, and encodes each
    new value once: those bytes are what LMDB stores and what the tree's
    leaf commits to.  Nothing reaches LMDB until Store.commit_block.
    """

    def __init__(self, store, base=None, overlay=None):
        """overlay: {(ns, key): raw bytes or None} read before the store,
        with base (a TreeBase) its tree: the view then starts from another
        state than the head's (a past height, or a block not yet committed)."""
        self.store = store
        self._overlay = overlay
        self._base = base
        self._txn = None
        self._orig = {}  # (ns, key) -> raw bytes at the head, or None
        self._new = {}  # (ns, key) -> value written (None deletes)
        self._final = None

    def _raw(self, ident):
        try:
            return self._orig[ident]
        except KeyError:
            pass
        if self._overlay is not None and ident in self._overlay:
            raw = self._orig[ident] = self._overlay[ident]
            return raw
        if self._txn is None:
            self._txn = self.store.state_reader()
        raw = self.store.state_get(self._txn, *ident)
        self._orig[ident] = raw
        return raw

    def release(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def get(self, ns, key):
        ident = (ns, key)
        if ident in self._new:
            return self._new[ident]
        raw = self._raw(ident)
        return None if raw is None else _loads(raw)

    def put(self, ns, key, value):
        """Set an entry (None deletes it)."""
        ident = (ns, key)
        if ident not in self._orig:
            self._raw(ident)
        self._new[ident] = value
        self._final = None

    def finish_steps(self, slice_size=512):
        """finish() as a generator that yields every slice_size entries
        and between subtrees of the tree, so a caller can let the reactor
        run in between (see run_steps)."""
        if self._final is None:
            base = self._base if self._base is not None else self.store.tree_base()
            changes = {}
            updates = []
            for n, (ident, value) in enumerate(list(self._new.items()), 1):
                old = self._orig[ident]
                new = None if value is None else canonical_unchecked(value)
                if old != new:
                    changes[ident] = (old, new)
                    updates.append((jmt.key_hash(*ident), None if new is None else jmt.value_hash_raw(new) + new))
                if n % slice_size == 0:
                    yield
            updates.sort()
            # A driver may run it in the tree worker (steps.run_steps_async);
            # run alone (steps.run_steps), it gets None and it is done here.
            tree = (yield jmt.TreeJob(base.height + 1, base.root, updates)) if not base.pending else None
            if tree is None or tree.version != base.height + 1:
                tree = jmt.TreeUpdate(self._node_reader(base), base.height + 1)
                yield from tree.run_steps(base.root, updates)
            self._final = (tree, changes)
        return self._final

    def _node_reader(self, base):
        pending = base.pending
        if self._txn is None:
            self._txn = self.store.state_reader()
        read = self.store.tree_reader(self._txn)

        def get(key):
            raw = pending.get(key)
            return read(key) if raw is None else raw
        return get

    def finish(self):
        """(tree, changes): tree a jmt.TreeUpdate (root, nodes, stale);
        changes maps (ns, key) -> (old raw, new raw)."""
        return run_steps(self.finish_steps())

    @property
    def tree(self):
        return self.finish()[0]

    @property
    def changes(self):
        return self.finish()[1]

    def root(self):
        return self.tree.root_hash().hex()

    # accounts: [balance, nonce]; an account at 0, 0 is no entry at all.
    def account(self, address):
        v = self.get("acct", address)
        return (0, 0) if v is None else (v[0], v[1])

    def set_account(self, address, balance, nonce):
        self.put("acct", address, None if balance == 0 and nonce == 0 else [balance, nonce])

    def param(self, name, default=None):
        v = self.get("param", name)
        return default if v is None else v

    def params(self):
        out = dict(self.store.entries("param"))
        for (ns, key), raw in (self._overlay or {}).items():
            if ns == "param":
                if raw is None:
                    out.pop(key, None)
                else:
                    out[key] = _loads(raw)
        for (ns, key), new in self._new.items():
            if ns == "param":
                if new is None:
                    out.pop(key, None)
                else:
                    out[key] = new
        return out
