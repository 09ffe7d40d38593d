"""The state: entries ``(namespace, key) -> value`` and their root.

The state holds accounts, params, authorities, supply counters, receipts
and spent payments.  Its root is an additive multiset hash over all
entries, so committing a block costs time in proportion to the entries
the block touches, not to the size of the state:

    leaf(e)    = int(shake_256(canonical([ns, key, value])), 256 bytes)
    acc        = sum of leaf(e) over every entry, mod 2**2048
    state_root = sha256(acc as 256 big-endian bytes)

``StateView`` is the state at the head plus a block's uncommitted changes;
store.Store writes them.  This module knows nothing of HTTP or peers.
"""

import hashlib

import cbor2

from aitnode.encoding import canonical_unchecked
from aitnode.steps import run_steps

ACC_BITS = 2048
ACC_BYTES = ACC_BITS // 8
ACC_MOD = 1 << ACC_BITS

_loads = cbor2.loads


def _leaf_prefix(ns, key):
    # canonical([ns, key, value]) is 0x83, then ns, key and value encoded.
    return b"\x83" + canonical_unchecked(ns) + canonical_unchecked(key)


def _leaf_int(leaf):
    return int.from_bytes(hashlib.shake_256(leaf).digest(ACC_BYTES), "big")


def leaf_hash(ns, key, value):
    """The accumulator term of one entry."""
    return _leaf_int(canonical_unchecked([ns, key, value]))


def root_of(acc):
    return hashlib.sha256(acc.to_bytes(ACC_BYTES, "big")).hexdigest()


class StateView:
    """The state at the head plus uncommitted changes.

    Reads fall through to the store (through one read transaction, kept
    until ``release``); writes stay in memory.  ``finish`` folds them into
    the accumulator once per touched entry, however often a block wrote
    it, and encodes each new value once: those bytes are both what LMDB
    stores and the tail of the entry's leaf.  Nothing reaches LMDB until
    Store.commit_block.
    """

    def __init__(self, store, acc=None, overlay=None):
        """overlay: {(ns, key): raw bytes or None} read before the store,
        with acc its accumulator: the view then starts from another state
        than the head's (a past height, or a block not yet committed)."""
        self.store = store
        self._overlay = overlay
        self._base_acc = acc
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
        """finish() as a generator that yields every slice_size entries, so
        a caller can let the reactor run in between (see run_steps)."""
        if self._final is None:
            acc = self.store.accumulator() if self._base_acc is None else self._base_acc
            changes = {}
            for n, (ident, value) in enumerate(list(self._new.items()), 1):
                old = self._orig[ident]
                new = None if value is None else canonical_unchecked(value)
                if old != new:
                    prefix = _leaf_prefix(*ident)
                    if old is not None:
                        acc -= _leaf_int(prefix + old)
                    if new is not None:
                        acc += _leaf_int(prefix + new)
                    changes[ident] = (old, new)
                if n % slice_size == 0:
                    yield
            self._final = (acc % ACC_MOD, changes)
        return self._final

    def finish(self):
        """(acc, changes): changes maps (ns, key) -> (old raw, new raw)."""
        return run_steps(self.finish_steps())

    @property
    def acc(self):
        return self.finish()[0]

    @property
    def changes(self):
        return self.finish()[1]

    def root(self):
        return root_of(self.acc)

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
