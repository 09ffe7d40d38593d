"""Node-local tables: what one node keeps for itself, outside consensus.

The peer table, the mempool snapshot taken at shutdown, and the records of
transactions dropped as invalid live in the same LMDB environment as the
chain (store.Store) but are no part of the state: two honest nodes may
hold different ones.
"""

import struct

import cbor2

from aitnode.store import LOCAL_DBS

_dumps = cbor2.dumps
_loads = cbor2.loads


class LocalStore:
    """Peers, the mempool snapshot and failed records, on a Store's env."""

    def __init__(self, store):
        self.env = store.env
        self._db = {name: self.env.open_db(name.encode()) for name in LOCAL_DBS}

    # -- what this node signed ------------------------------------------
    def signed(self, name):
        """A record of what this node's authority key signed last ("vote":
        finality.Record json; "proposal": the height of its last header),
        or None.  Written before what it records is sent (see signing)."""
        with self.env.begin(db=self._db["signing"]) as t:
            raw = t.get(name.encode())
        return None if raw is None else _loads(raw)

    def put_signed(self, name, value):
        self.put_signed_many({name: value})

    def put_signed_many(self, records):
        """Several records in one write transaction (one fsync)."""
        with self.env.begin(write=True, db=self._db["signing"]) as t:
            for name, value in records.items():
                t.put(name.encode(), _dumps(value))

    # -- failed transactions --------------------------------------------
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

    # -- peers ------------------------------------------------------------
    def put_peer(self, node_id, record):
        with self.env.begin(write=True, db=self._db["peers"]) as t:
            t.put(node_id.encode(), _dumps(record))

    def peers(self):
        with self.env.begin(db=self._db["peers"]) as t:
            return {k.decode(): _loads(v) for k, v in t.cursor()}

    def peer_count(self):
        with self.env.begin() as t:
            return t.stat(self._db["peers"])["entries"]

    def drop_peers(self, node_ids):
        with self.env.begin(write=True, db=self._db["peers"]) as t:
            for node_id in node_ids:
                t.delete(node_id.encode())

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

