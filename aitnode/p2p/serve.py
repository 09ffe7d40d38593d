"""Answering get_blocks, within bounds.

The answer to ``get_blocks`` holds at most ``limit`` (1 to MAX_LIMIT)
blocks and at most ANSWER_BYTES of encoded block entries (one block
always goes, whatever its size).  A peer is served one request at a
time: while more than wire.SEND_LOW of what the node sent it is unread,
a request waits (watch.Watch answers it once the output drained); one
may wait so, and another meanwhile is a protocol violation.
"""

import collections

import cbor2

from aitnode.encoding import is_hex
from aitnode.p2p import wire
from aitnode.p2p.wire import PeerError, is_u64

MAX_LIMIT = 512
# Encoded block entries kept for answering again (many peers syncing, or a
# flood asking for the same blocks, cost a lookup rather than reading and
# encoding every block again in one reactor turn).
CACHE_BYTES = 32 * 1024 * 1024
ANSWER_BYTES = 4 * 1024 * 1024
MAX_LOCATOR = 64


class BlockServer:
    def __init__(self, chain, default_limit):
        self.chain = chain
        self.default_limit = default_limit
        self._cache = collections.OrderedDict()  # block hash -> encoded entry
        self._cached = 0

    def on_get_blocks(self, conn, d):
        """Answer at once, or once the peer has read what it was sent before."""
        request = self.check_request(d)
        if conn.waiting_request is not None:
            raise PeerError("protocol", "get_blocks while another waits for the peer to read")
        if conn.pending_output() > wire.SEND_LOW:
            conn.waiting_request = request
            return
        self.answer(conn, request)

    def check_request(self, d):
        """(locator or None, from or None, limit) of a well-formed get_blocks."""
        if type(d) is not dict:
            raise PeerError("protocol", "get_blocks malformed")
        limit = d.get("limit", self.default_limit)
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise PeerError("protocol", f"get_blocks limit must be 1..{MAX_LIMIT}")
        if "locator" in d:
            loc = d["locator"]
            if type(loc) is not list or len(loc) > MAX_LOCATOR:
                raise PeerError("protocol", f"locator must be a list of at most {MAX_LOCATOR} hashes")
            return loc, None, limit
        start = d.get("from")
        if not is_u64(start):
            raise PeerError("protocol", "get_blocks from must be a height")
        return None, start, limit

    def answer(self, conn, request):
        """Send conn the blocks it asked for, at most ANSWER_BYTES of them
        as encoded (at least one block when there is any)."""
        loc, start, limit = request
        store = self.chain.store
        if loc is not None:
            start = 1
            for h in loc:
                block = store.block_by_hash(h) if is_hex(h, 32) else None
                if block is not None and store.hash_at(block["header"]["height"]) == h:
                    start = block["header"]["height"] + 1
                    break
        start = max(start, 1)  # every node has the genesis block: it is never sent
        height = self.chain.head()[0]
        parts, size = [], 0
        for h in range(start, min(height, start + limit - 1) + 1):
            raw = self._entry(h)
            if parts and size + len(raw) > ANSWER_BYTES:
                break
            parts.append(raw)
            size += len(raw)
        conn.send_frame(wire.blocks_frame(parts, height))

    def _entry(self, height):
        """The encoded block entry at height on this node's chain (cached by
        block hash: a block's entry never changes)."""
        block_hash = self.chain.store.hash_at(height)
        raw = self._cache.get(block_hash)
        if raw is not None:
            self._cache.move_to_end(block_hash)
            return raw
        raw = cbor2.dumps(self.chain.block_entry(height), canonical=True)
        self._cache[block_hash] = raw
        self._cached += len(raw)
        while self._cached > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)
        return raw
