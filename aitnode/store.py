"""Chain storage in LMDB: blocks, transactions, state entries, undo data.

Everything a block changes is written in one LMDB write transaction: after
a crash the store holds the last whole block and nothing of the next.
Node-local tables are local.LocalStore's, in the same environment.

No LMDB key is ever user text: LMDB refuses keys over 511 bytes, so a key
built from text a transaction chose could make a block unstorable.

- A state entry (ns, key) is stored under ``ns/`` + sha256(canonical(key))
  (the namespace in ASCII, "/", 32 raw bytes: at most a few dozen bytes
  whatever the key), and its record is canonical([key, value]): 0x82, the
  key's canonical bytes, then the value's.  Reading an entry checks that the
  record holds the key asked for; ``entries(ns)`` returns the keys from the
  records.  How entries are stored does not touch the state root (its leaf
  commits to the key and value hashes, see jmt.py).
- The state tree's nodes, stale marks and roots are in treestore.py's tables.
- Blocks and transactions are keyed by their hashes, heights by 8 bytes,
  history by address + 12 bytes, node-local tables by hashes, ids, counters.

FORMAT_VERSION names this layout; a data_dir of another version refuses to
open (resync: start on an empty data_dir, or reset the devnet).
"""

import functools
import hashlib
import itertools
import os
import struct

import cbor2
import lmdb

from aitnode import treestore
from aitnode.errors import ConfigError
from aitnode.state import TreeBase

FORMAT_VERSION = 3  # 2: state entries keyed by the hash of their key; 3: the state tree
CHAIN_DBS = ("meta", "state", "blocks", "heights", "txs", "undo", "history") + treestore.TREE_DBS
LOCAL_DBS = ("mempool", "failed", "peers", "signing")
UNDO_KEEP = 1000  # recent blocks whose undo data is kept for reorgs
# Failures of the storage itself, never of what a block holds.
RESOURCE_ERRORS = (
    lmdb.MapFullError, lmdb.MapResizedError, lmdb.DiskError, lmdb.ReadonlyError, lmdb.ReadersFullError,
    lmdb.TlsFullError, lmdb.TxnFullError, MemoryError, OSError,
)
_ADDR_FIELDS = ("to", "client_addr", "miner_addr")

_dumps = cbor2.dumps
_loads = cbor2.loads


def _history_keys(rec):
    """Index keys of one included transaction: address/height/index."""
    tx = rec["tx"]
    addrs = {tx["sender"]}
    payload = tx.get("payload", {})
    for f in _ADDR_FIELDS:
        if isinstance(payload.get(f), str):
            addrs.add(payload[f])
    tail = struct.pack(">QI", rec["height"], rec["index"])
    return [a.encode() + b"/" + tail for a in addrs]


@functools.lru_cache(maxsize=1 << 16)  # hot: each state read and write (accounts mostly)
def _ekey(ns, key):
    """The LMDB key of state entry (ns, key), and its key's canonical bytes."""
    ck = _dumps(key, canonical=True)
    return ns.encode() + b"/" + hashlib.sha256(ck).digest(), ck


def _record(ck, raw):
    """The stored record of an entry: canonical([key, value])."""
    return b"\x82" + ck + raw


def _value_of(record, ck, ns):
    """The value's canonical bytes in a record that must hold key ck."""
    if record is None:
        return None
    if record[1:1 + len(ck)] != ck or record[0] != 0x82:
        raise ValueError(f"state record under {ns}/ does not hold the key asked for (data_dir damaged?)")
    return record[1 + len(ck):]


def _state_get(txn, ns, key):
    """The canonical bytes of entry (ns, key)'s value, or None, read through
    txn (a Store.state_reader)."""
    k, ck = _ekey(ns, key)
    return _value_of(txn.get(k), ck, ns)


def check_format(store):
    """Refuse a data_dir written in another layout (ConfigError)."""
    have = store.meta("format_version")
    if have is not None and have != FORMAT_VERSION:
        raise ConfigError(
            f"data_dir {store.path} holds storage format {have}, this node reads format {FORMAT_VERSION}: "
            f"resync (point [node] data_dir at an empty folder) or reset it (./dev devnet --reset)"
        )


def _height_key(height):
    return struct.pack(">Q", height)


class EncodedRecord(dict):
    """A transaction record that carries its stored bytes and index keys,
    worked out ahead of commit_block (so the commit itself stays short)."""

    __slots__ = ("raw", "hkeys")


def encode_tx_records(tx_records):
    """[(hash, record)] -> [(hash, EncodedRecord)]."""
    out = []
    for h, rec in tx_records:
        enc = EncodedRecord(rec)
        enc.raw = _dumps(rec)
        enc.hkeys = _history_keys(rec)
        out.append((h, enc))
    return out


class _Writes:
    """Store's writing half: one write transaction per block or switch."""

    def commit_block(self, block, tx_records, changes, tree, genesis_hash=None):
        """Write one whole block in one LMDB transaction.

        block: the block record; tx_records: [(tx_hash, record)] (records
        may come from encode_tx_records); changes: {(ns, key): (old, new)}
        (raw CBOR) and tree (a jmt.TreeUpdate) from StateView.finish.
        """
        self._head = None  # read again after any write (or failed write)
        try:
            with self.env.begin(write=True) as t:
                self._commit(t, block, tx_records, changes, tree)
                if genesis_hash is not None:
                    meta = self._db["meta"]
                    t.put(b"format_version", _dumps(FORMAT_VERSION), db=meta)
                    t.put(b"genesis_hash", _dumps(genesis_hash), db=meta)
                    t.put(b"chain_id", _dumps(block["header"]["chain_id"]), db=meta)
        finally:
            self._head = None

    def try_commit(self, block, tx_records, changes, tree):
        """commit_block, aborted at the end: raises what it would, writes nothing."""
        t = self.env.begin(write=True)
        try:
            self._commit(t, block, tx_records, changes, tree)
        finally:
            t.abort()

    def _commit(self, t, block, tx_records, changes, tree):
        height = block["header"]["height"]
        undo = []
        sdb = self._db["state"]
        for (ns, key), (old, new) in changes.items():
            k, ck = _ekey(ns, key)
            if new is None:
                t.delete(k, db=sdb)
            else:
                t.put(k, _record(ck, new), db=sdb)
            undo.append([ns, key, old])
        t.put(block["hash"].encode(), _dumps(block), db=self._db["blocks"])
        t.put(_height_key(height), block["hash"].encode(), db=self._db["heights"])
        txdb = self._db["txs"]
        hdb = self._db["history"]
        for h, rec in tx_records:
            hb = h.encode()
            if isinstance(rec, EncodedRecord):
                raw, hkeys = rec.raw, rec.hkeys
            else:
                raw, hkeys = _dumps(rec), _history_keys(rec)
            t.put(hb, raw, db=txdb)
            for k in hkeys:
                t.put(k, hb, db=hdb)
        udb = self._db["undo"]
        t.put(_height_key(height), _dumps({"entries": undo, "txs": [h for h, _ in tx_records]}), db=udb)
        treestore.write(t, self._db, height, tree)
        if height >= UNDO_KEEP:
            t.delete(_height_key(height - UNDO_KEEP), db=udb)
        meta = self._db["meta"]
        t.put(b"head", _dumps([height, block["hash"]]), db=meta)

    def undo_depth(self):
        """How many blocks back from the head can be rolled back."""
        height = self.head()[0]
        return min(height, UNDO_KEEP - 1)

    def rollback_to(self, height):
        """Undo every block above height, in one write transaction.

        Returns the wire transactions of the undone blocks, oldest first,
        so the caller can offer them to the mempool again.
        """
        self._check_undo(height)
        self._head = None
        try:
            with self.env.begin(write=True) as t:
                return self._rollback(t, height)
        finally:
            self._head = None

    def switch_branch(self, height, blocks):
        """Undo every block above height and commit blocks (each a tuple of
        commit_block's first four arguments) in their place, all in ONE
        write transaction: a crash at any instant leaves either the old
        branch or the new one whole.  Returns what rollback_to returns."""
        self._check_undo(height)
        self._head = None
        try:
            with self.env.begin(write=True) as t:
                dropped = self._rollback(t, height)
                for block, tx_records, changes, tree in blocks:
                    self._commit(t, block, tx_records, changes, tree)
        finally:
            self._head = None
        return dropped

    def _check_undo(self, height):
        head = self.head()[0]
        if head - height > self.undo_depth():
            raise ValueError(f"cannot roll back {head - height} blocks; undo data covers {self.undo_depth()}")

    def _rollback(self, t, height):
        head = _loads(t.get(b"head", db=self._db["meta"]))[0]
        dropped = []
        sdb, udb, txdb = self._db["state"], self._db["undo"], self._db["txs"]
        for h in range(head, height, -1):
            undo = _loads(t.get(_height_key(h), db=udb))
            for ns, key, old in undo["entries"]:
                k, ck = _ekey(ns, key)
                if old is None:
                    t.delete(k, db=sdb)
                else:
                    t.put(k, _record(ck, old), db=sdb)
            block_wires = []
            for tx_hash in undo["txs"]:
                raw = t.get(tx_hash.encode(), db=txdb)
                if raw is not None:
                    rec = _loads(raw)
                    block_wires.append(rec["tx"])
                    t.delete(tx_hash.encode(), db=txdb)
                    for k in _history_keys(rec):
                        t.delete(k, db=self._db["history"])
            dropped[:0] = block_wires
            block_hash = t.get(_height_key(h), db=self._db["heights"])
            t.delete(_height_key(h), db=self._db["heights"])
            t.delete(block_hash, db=self._db["blocks"])
            t.delete(_height_key(h), db=udb)
            treestore.undo(t, self._db, h)
        if head > height:
            parent = t.get(_height_key(height), db=self._db["heights"]).decode()
            t.put(b"head", _dumps([height, parent]), db=self._db["meta"])
        return dropped


class Store(_Writes, treestore.TreeTables):
    """The node's LMDB environment: one per data_dir."""

    def __init__(self, path, map_size=1 << 34):
        os.makedirs(path, exist_ok=True)
        try:
            self.env = lmdb.open(
                path, map_size=map_size, max_dbs=len(CHAIN_DBS) + len(LOCAL_DBS) + 2, subdir=True,
            )
        except lmdb.Error as e:
            raise ConfigError(f"cannot open data_dir {path}: {e}")
        self.path = path
        self._db = {name: self.env.open_db(name.encode()) for name in CHAIN_DBS}

    closed = False

    def close(self):
        self.closed = True
        self.env.close()

    # -- meta ---------------------------------------------------------
    def meta(self, name, default=None):
        value = self._decoded("meta", name.encode())
        return default if value is None else value

    def set_meta(self, **values):
        self._head = None
        with self.env.begin(write=True, db=self._db["meta"]) as t:
            for k, v in values.items():
                t.put(k.encode(), _dumps(v))

    def is_empty(self):
        return self.meta("format_version") is None

    _head = None  # cached: this Store is the data_dir's only writer

    def head(self):
        """(height, hash) of the head block, or None before genesis."""
        if self._head is None:
            h = self.meta("head")
            self._head = None if h is None else tuple(h)
        return self._head

    # -- state entries --------------------------------------------------
    def state_reader(self):
        """A read transaction on the state table (for state.StateView)."""
        return self.env.begin(db=self._db["state"])

    state_get = staticmethod(_state_get)

    def entry(self, ns, key):
        with self.env.begin(db=self._db["state"]) as t:
            raw = self.state_get(t, ns, key)
        return None if raw is None else _loads(raw)

    def entries(self, ns):
        """Every (key, value) of a namespace, in key order."""
        prefix = f"{ns}/".encode()
        with self.env.begin(db=self._db["state"]) as t:
            cur = t.cursor()
            rows = itertools.takewhile(lambda kv: kv[0].startswith(prefix), cur) if cur.set_range(prefix) else ()
            records = [tuple(_loads(v)) for _, v in rows]
        return sorted(records, key=lambda kv: kv[0])

    def count_entries(self):
        return self._stat("state")

    def _stat(self, name):
        with self.env.begin() as t:
            return t.stat(self._db[name])["entries"]

    # -- blocks and transactions ---------------------------------------
    def _decoded(self, name, key):
        """The CBOR value under key in table name, or None."""
        with self.env.begin(db=self._db[name]) as t:
            raw = t.get(key)
        return None if raw is None else _loads(raw)

    def block_by_hash(self, block_hash):
        return self._decoded("blocks", block_hash.encode())

    def hash_at(self, height):
        with self.env.begin(db=self._db["heights"]) as t:
            raw = t.get(_height_key(height))
        return None if raw is None else raw.decode()

    def block_at(self, height):
        h = self.hash_at(height)
        return None if h is None else self.block_by_hash(h)

    def tx_record(self, tx_hash):
        return self._decoded("txs", tx_hash.encode())

    def has_tx(self, tx_hash):
        with self.env.begin(db=self._db["txs"]) as t:
            return t.get(tx_hash.encode()) is not None

    def history(self, address, limit=50, before=None):
        """Hashes of included transactions touching address, newest first.

        before: (height, index) to page from (exclusive).
        """
        prefix = address.encode() + b"/"
        start = prefix + (struct.pack(">QI", *before) if before else b"\xff" * 12)
        out = []
        with self.env.begin(db=self._db["history"]) as t:
            cur = t.cursor()
            if not cur.set_range(start):
                if not cur.last():
                    return out
            # set_range lands on the first key >= start: step back past it.
            while True:
                key = cur.key()
                if key.startswith(prefix) and key < start:
                    out.append(cur.value().decode())
                    if len(out) >= limit:
                        break
                elif key < prefix:
                    break
                if not cur.prev():
                    break
        return out

    def state_at(self, height, tree=True):
        """(overlay, base): the state at a recent height as the entries that
        differ from the head's ({(ns, key): raw bytes or None}) and its tree
        (a TreeBase), worked out from undo data without writing anything.
        A StateView over them reads that height's state (see Chain.reorganise);
        tree=False: no base (None), for reads only, the tree may be pruned."""
        self._check_undo(height)
        overlay = {}
        with self.env.begin() as t:
            head = _loads(t.get(b"head", db=self._db["meta"]))[0]
            for h in range(head, height, -1):
                undo = _loads(t.get(_height_key(h), db=self._db["undo"]))
                for ns, key, old in undo["entries"]:
                    overlay[(ns, key)] = old
            base = TreeBase(height, treestore.root_ref(t, self._db, height)) if tree else None
        return overlay, base
