"""Chain storage in LMDB, and the state root.

The state is a set of entries ``(namespace, key) -> value`` (accounts,
params, authorities, supply counters, and from the receipts issue on,
receipts and spent payments).  Its root is an additive multiset hash
over all entries, so committing a block costs time in proportion to the
entries the block touches, not to the size of the state:

    leaf(e)    = int(shake_256(canonical([ns, key, value])), 256 bytes)
    acc        = sum of leaf(e) over every entry, mod 2**2048
    state_root = sha256(acc as 256 big-endian bytes)

Everything a block changes is written in one LMDB write transaction, so
after a crash the store holds the last whole block and nothing of the
next one.  This module knows nothing of HTTP or peers.
"""

import hashlib
import os
import struct

import cbor2
import lmdb

from aitnode.encoding import canonical_unchecked
from aitnode.errors import ConfigError

FORMAT_VERSION = 1
ACC_BITS = 2048
ACC_BYTES = ACC_BITS // 8
ACC_MOD = 1 << ACC_BITS
DBS = ("meta", "state", "blocks", "heights", "txs", "undo", "mempool", "failed", "peers", "history")
_ADDR_FIELDS = ("to", "client_addr", "miner_addr")


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
UNDO_KEEP = 1000  # recent blocks whose undo data is kept for reorgs


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


def _ekey(ns, key):
    return f"{ns}/{key}".encode()


def _height_key(height):
    return struct.pack(">Q", height)


_dumps = cbor2.dumps
_loads = cbor2.loads


def run_steps(steps):
    """Drive a generator of work slices to its end; its return value."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


async def run_steps_async(steps, pause):
    """The same, awaiting pause() between slices (to let the reactor run)."""
    try:
        while True:
            next(steps)
            await pause()
    except StopIteration as done:
        return done.value


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


class Store:
    """The node's LMDB environment: one per data_dir."""

    def __init__(self, path, map_size=1 << 34):
        os.makedirs(path, exist_ok=True)
        try:
            self.env = lmdb.open(
                path, map_size=map_size, max_dbs=len(DBS) + 2, subdir=True,
            )
        except lmdb.Error as e:
            raise ConfigError(f"cannot open data_dir {path}: {e}")
        self.path = path
        self._db = {name: self.env.open_db(name.encode()) for name in DBS}

    def close(self):
        self.env.close()

    # -- meta ---------------------------------------------------------
    def meta(self, name, default=None):
        with self.env.begin(db=self._db["meta"]) as t:
            raw = t.get(name.encode())
        return default if raw is None else _loads(raw)

    def set_meta(self, **values):
        with self.env.begin(write=True, db=self._db["meta"]) as t:
            for k, v in values.items():
                t.put(k.encode(), _dumps(v))

    def is_empty(self):
        return self.meta("format_version") is None

    def head(self):
        """(height, hash) of the head block, or None before genesis."""
        h = self.meta("head")
        return None if h is None else tuple(h)

    def accumulator(self):
        with self.env.begin(db=self._db["meta"]) as t:
            raw = t.get(b"acc")
        return 0 if raw is None else int.from_bytes(raw, "big")

    # -- state entries --------------------------------------------------
    def entry(self, ns, key):
        with self.env.begin(db=self._db["state"]) as t:
            raw = t.get(_ekey(ns, key))
        return None if raw is None else _loads(raw)

    def entries(self, ns):
        """Every (key, value) of a namespace, in key order."""
        prefix = f"{ns}/".encode()
        out = []
        with self.env.begin(db=self._db["state"]) as t:
            cur = t.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out.append((k[len(prefix):].decode(), _loads(v)))
        return out

    def count_entries(self):
        return self._stat("state")

    def _stat(self, name):
        with self.env.begin() as t:
            return t.stat(self._db[name])["entries"]

    # -- blocks and transactions ---------------------------------------
    def block_by_hash(self, block_hash):
        with self.env.begin(db=self._db["blocks"]) as t:
            raw = t.get(block_hash.encode())
        return None if raw is None else _loads(raw)

    def hash_at(self, height):
        with self.env.begin(db=self._db["heights"]) as t:
            raw = t.get(_height_key(height))
        return None if raw is None else raw.decode()

    def block_at(self, height):
        h = self.hash_at(height)
        return None if h is None else self.block_by_hash(h)

    def tx_record(self, tx_hash):
        with self.env.begin(db=self._db["txs"]) as t:
            raw = t.get(tx_hash.encode())
        return None if raw is None else _loads(raw)

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

    def failed_record(self, tx_hash):
        with self.env.begin(db=self._db["failed"]) as t:
            raw = t.get(tx_hash.encode())
        return None if raw is None else _loads(raw)

    def record_failed(self, records):
        """Remember transactions dropped as invalid: {hash: {"tx", "error"}}."""
        if not records:
            return
        with self.env.begin(write=True, db=self._db["failed"]) as t:
            for h, rec in records.items():
                t.put(h.encode(), _dumps(rec))

    # -- committing ----------------------------------------------------
    def commit_block(self, block, tx_records, changes, acc, genesis_hash=None):
        """Write one whole block in one LMDB transaction.

        block: the block record {"header", "hash", "sig", "txs"};
        tx_records: [(tx_hash, record)] (records may come from
        encode_tx_records, already encoded); changes: {(ns, key): (old, new)}
        (raw CBOR bytes)
        as gathered by StateView.finish; acc: the accumulator after the block.
        """
        header = block["header"]
        height = header["height"]
        undo = []
        with self.env.begin(write=True) as t:
            prev_acc = t.get(b"acc", db=self._db["meta"]) or bytes(ACC_BYTES)
            sdb = self._db["state"]
            for (ns, key), (old, new) in changes.items():
                k = _ekey(ns, key)
                if new is None:
                    t.delete(k, db=sdb)
                else:
                    t.put(k, new, db=sdb)
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
            t.put(_height_key(height), _dumps({"acc": prev_acc, "entries": undo, "txs": [h for h, _ in tx_records]}), db=udb)
            if height >= UNDO_KEEP:
                t.delete(_height_key(height - UNDO_KEEP), db=udb)
            meta = self._db["meta"]
            t.put(b"head", _dumps([height, block["hash"]]), db=meta)
            t.put(b"acc", acc.to_bytes(ACC_BYTES, "big"), db=meta)
            if genesis_hash is not None:
                t.put(b"format_version", _dumps(FORMAT_VERSION), db=meta)
                t.put(b"genesis_hash", _dumps(genesis_hash), db=meta)
                t.put(b"chain_id", _dumps(header["chain_id"]), db=meta)

    def undo_depth(self):
        """How many blocks back from the head can be rolled back."""
        height = self.head()[0]
        return min(height, UNDO_KEEP - 1)

    def rollback_to(self, height):
        """Undo every block above height, in one write transaction.

        Returns the wire transactions of the undone blocks, oldest first,
        so the caller can offer them to the mempool again.
        """
        head = self.head()[0]
        if head - height > self.undo_depth():
            raise ValueError(f"cannot roll back {head - height} blocks; undo data covers {self.undo_depth()}")
        dropped = []
        with self.env.begin(write=True) as t:
            sdb, udb, txdb = self._db["state"], self._db["undo"], self._db["txs"]
            acc = None
            for h in range(head, height, -1):
                undo = _loads(t.get(_height_key(h), db=udb))
                for ns, key, old in undo["entries"]:
                    if old is None:
                        t.delete(_ekey(ns, key), db=sdb)
                    else:
                        t.put(_ekey(ns, key), old, db=sdb)
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
                acc = undo["acc"]
            if acc is not None:
                parent = t.get(_height_key(height), db=self._db["heights"]).decode()
                t.put(b"head", _dumps([height, parent]), db=self._db["meta"])
                t.put(b"acc", acc, db=self._db["meta"])
        return dropped

    # -- peers ------------------------------------------------------------
    def put_peer(self, node_id, record):
        with self.env.begin(write=True, db=self._db["peers"]) as t:
            t.put(node_id.encode(), _dumps(record))

    def peers(self):
        with self.env.begin(db=self._db["peers"]) as t:
            return {k.decode(): _loads(v) for k, v in t.cursor()}

    # -- mempool snapshot ---------------------------------------------
    def save_mempool(self, wire_txs):
        with self.env.begin(write=True, db=self._db["mempool"]) as t:
            t.drop(self._db["mempool"], delete=False)
            for i, wire in enumerate(wire_txs):
                t.put(struct.pack(">Q", i), _dumps(wire))

    def load_mempool(self):
        with self.env.begin(db=self._db["mempool"]) as t:
            return [_loads(v) for _, v in t.cursor()]

    def clear_mempool(self):
        with self.env.begin(write=True) as t:
            t.drop(self._db["mempool"], delete=False)


class StateView:
    """The state at the head plus uncommitted changes.

    Reads fall through to the store (through one read transaction, kept
    until ``release``); writes stay in memory.  ``finish`` folds them into
    the accumulator once per touched entry, however often a block wrote
    it, and encodes each new value once: those bytes are both what LMDB
    stores and the tail of the entry's leaf.  Nothing reaches LMDB until
    Store.commit_block.
    """

    def __init__(self, store, acc=None):
        self.store = store
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
        if self._txn is None:
            self._txn = self.store.env.begin(db=self.store._db["state"])
        raw = self._txn.get(_ekey(*ident))
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
        for (ns, key), new in self._new.items():
            if ns == "param":
                if new is None:
                    out.pop(key, None)
                else:
                    out[key] = new
        return out
