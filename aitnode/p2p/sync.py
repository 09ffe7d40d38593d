"""Block sync: asking peers for blocks, importing them, and answering them.

A node behind a peer asks it for blocks from a locator of its own chain
(``get_blocks``); the answer's blocks are imported in order through the
block pipeline.  An answer that forks below the head is held until the
branch it starts is longer than the node's chain (asking for the rest
with ``{from, limit}``); then the pipeline verifies the whole branch and
switches to it at once (chain.reorganise_steps).  Fork choice compares
blocks this node verified, never a height a peer claimed.
"""

import cbor2
from twisted.internet import defer
from twisted.logger import Logger

from aitnode.chain import MAX_FUTURE_DRIFT
from aitnode.encoding import is_hex
from aitnode.errors import AitError
from aitnode.p2p import wire
from aitnode.p2p.wire import PeerError

SYNC_BATCH = 64
SYNC_TIMEOUT = 30  # seconds to wait for a get_blocks answer
MAX_LIMIT = 512  # blocks one get_blocks may ask for
ANSWER_BYTES = 4 * 1024 * 1024  # encoded blocks in one answer (one block always goes, whatever its size)
# A competing branch is held (parsed, in memory) while it is fetched, until
# it is longer than the node's chain; the answers that brought it may add
# up to this many bytes on the wire.  One branch is held at a time.
MAX_BRANCH_BYTES = 64 * 1024 * 1024
# Gossiped blocks stamped ahead of this node's clock (more than
# chain.MAX_FUTURE_DRIFT) are held until their time: at most this many, of
# at most HELD_BYTES in all, and none more than HOLD_AHEAD seconds early.
HELD_BLOCKS = 16
HELD_BYTES = 16 * 1024 * 1024
HOLD_AHEAD = 60


class BlockSync:
    _log = Logger()

    def __init__(self, p2p, node, reactor, pause, sync_batch=SYNC_BATCH):
        self.p2p = p2p
        self.chain = node.chain
        self.mempool = node.mempool
        self.pipeline = node.pipeline
        self.reactor = reactor
        self.pause = pause
        self.sync_batch = sync_batch
        self.syncing = None  # the connection a sync is running with
        self._timer = None  # the pending get_blocks request's timeout
        self._branch = None  # (conn, fork height, [(block, txs)]) of a fork being fetched
        self._branch_bytes = 0
        self.importing = defer.DeferredLock()
        self.held = {}  # hash -> (conn, entry, size, timer) of gossiped blocks from the future
        self._held_bytes = 0
        self._retry = None  # asks again once a block from the future is due

    def stop(self):
        self._cancel_timer()
        for _, _, _, timer in self.held.values():
            if timer.active():
                timer.cancel()
        self.held.clear()
        self._held_bytes = 0
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- blocks from the future ----------------------------------------------
    def too_early(self, header):
        """Seconds until a block with this header may be imported (0: now)."""
        ts = header.get("timestamp")
        if type(ts) is not int:
            return 0  # verification refuses it
        return max(0, ts - MAX_FUTURE_DRIFT - self.pipeline.now()) / 1000

    def _hold(self, conn, entry, wait):
        block = entry["block"]
        if block["hash"] in self.held:
            return
        size = conn.frame_bytes
        if wait > HOLD_AHEAD or len(self.held) >= HELD_BLOCKS or self._held_bytes + size > HELD_BYTES:
            self._log.warn("block {hash} is {s} s ahead of this node's clock; not held", hash=block["hash"],
                           s=wait + MAX_FUTURE_DRIFT / 1000, component="p2p", event="block_too_far_ahead")
            return
        timer = self.reactor.callLater(wait, self._release, block["hash"])
        self.held[block["hash"]] = (conn, entry, size, timer)
        self._held_bytes += size

    def _release(self, block_hash):
        conn, entry, size, _ = self.held.pop(block_hash)
        self._held_bytes -= size
        self.on_block(conn, entry)

    def _until_due(self, conn, entries):
        """The entries before the first one stamped too far ahead; for that
        one, ask conn again when it is due.  (entries, whether cut)."""
        for n, entry in enumerate(entries):
            wait = self.too_early(entry["block"]["header"])
            if wait:
                if self._retry is not None and self._retry.active():
                    self._retry.cancel()
                self._retry = self.reactor.callLater(wait, self._retry_sync, conn)
                return entries[:n], True
        return entries, False

    def _retry_sync(self, conn):
        self._retry = None
        if conn in self.p2p.conns:
            self.maybe_sync(conn)

    # -- asking --------------------------------------------------------------
    def maybe_sync(self, conn):
        """Ask conn for blocks if it is ahead and no sync is running."""
        height = self.chain.head()[0]
        if self.syncing is not None or conn.remote_height <= height or not conn.ready:
            return
        if self._branch is not None and self._branch[0] is conn:
            last = self._branch[2][-1][0]["header"]["height"]
            self._ask(conn, {"from": last + 1, "limit": self.sync_batch})
        else:
            self._branch = None
            self._ask(conn, {"locator": self.locator(), "limit": self.sync_batch})

    def _ask(self, conn, request):
        self.syncing = conn
        conn.send("get_blocks", request)
        # A peer that never answers must not stall sync for ever; the
        # timer belongs to this request and is cancelled by its answer.
        self._cancel_timer()
        self._timer = self.reactor.callLater(SYNC_TIMEOUT, self._timeout, conn)

    def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timeout(self, conn):
        self._timer = None
        if self.syncing is conn:
            self.syncing = None
            if self._branch is not None and self._branch[0] is conn:
                self._branch = None  # a silent peer's branch is not held for ever
            self._log.warn("peer {peer} did not answer get_blocks; asking again", peer=conn.addr,
                           component="p2p", event="sync_timeout")
            for other in list(self.p2p.conns):
                self.maybe_sync(other)
                if self.syncing is not None:
                    break

    def disconnected(self, conn):
        if self.syncing is conn:
            self.syncing = None
            self._cancel_timer()
        if self._branch is not None and self._branch[0] is conn:
            self._branch = None

    def locator(self):
        """Hashes of our chain at heights h, h-1, h-2, h-4, ... 0."""
        store = self.chain.store
        height = self.chain.head()[0]
        out, step, h = [], 1, height
        while h > 0 and len(out) < 63:
            out.append(store.hash_at(h))
            if len(out) > 8:
                step *= 2
            h -= step
        out.append(store.hash_at(0))
        return out

    # -- answering -------------------------------------------------------------
    def on_get_blocks(self, conn, d):
        """Answer at once, or once the peer has read what it was sent
        before: one request waits at most (P2P._watch answers it when the
        output drains); another one meanwhile is a protocol violation."""
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
        limit = d.get("limit", self.sync_batch)
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise PeerError("protocol", f"get_blocks limit must be 1..{MAX_LIMIT}")
        if "locator" in d:
            loc = d["locator"]
            if type(loc) is not list or len(loc) > 64:
                raise PeerError("protocol", "locator must be a list of at most 64 hashes")
            return loc, None, limit
        start = d.get("from")
        if type(start) is not int or start < 0:
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
        height = self.chain.head()[0]
        parts, size = [], 0
        for h in range(start, min(height, start + limit - 1) + 1):
            raw = cbor2.dumps(self.chain.block_entry(h), canonical=True)
            if parts and size + len(raw) > ANSWER_BYTES:
                break
            parts.append(raw)
            size += len(raw)
        conn.send_frame(wire.blocks_frame(parts, height))

    # -- importing -------------------------------------------------------------
    def on_blocks(self, conn, d):
        if type(d) is not dict or type(d.get("blocks")) is not list or type(d.get("height")) is not int:
            raise PeerError("protocol", "blocks malformed")
        entries = [check_entry(e) for e in d["blocks"]]
        conn.remote_height = max(conn.remote_height, d["height"])
        if self.syncing is not conn:
            return
        self._cancel_timer()
        dd = self.importing.run(self._sync_entries, conn, entries, conn.frame_bytes)

        def done(progressed):
            self.syncing = None
            if progressed:
                self.maybe_sync(conn)

        def broke(f):
            # _sync_entries runs outside onMessage: its PeerErrors land here.
            f.trap(PeerError)
            self.syncing = None
            self.p2p.misbehaved(conn, f.value.kind, str(f.value))

        dd.addCallback(done)
        dd.addErrback(broke)
        dd.addErrback(lambda f: (setattr(self, "syncing", None),
                                 self._log.failure("sync failed", f, component="p2p", event="sync_error")))

    def on_block(self, conn, entry):
        """A block a peer announced: import it if it extends the head (or
        hold it until its time if it is stamped too far ahead)."""
        header = entry["block"]["header"]
        height, head = self.chain.head()
        if header["height"] <= height:
            return
        wait = self.too_early(header)
        if wait:
            try:
                self.chain.check_signed_header(entry["block"])  # only an authority's block is worth holding
            except AitError as e:
                self.p2p.penalize(conn, "bad_block", e.message)
                return
            self._hold(conn, entry, wait)
        elif header["parent"] == head and header["height"] == height + 1:
            d = self.importing.run(self._import_announced, conn, entry)
            d.addErrback(lambda f: self._log.failure("block import failed", f, component="p2p", event="import_error"))
        else:
            self.maybe_sync(conn)

    def _import_announced(self, conn, entry):
        # The lock may have been held by a sync: if the head moved since the
        # block was announced it no longer applies, which is no fault of the peer.
        height, head = self.chain.head()
        header = entry["block"]["header"]
        if header["parent"] != head or header["height"] != height + 1:
            return False
        return self._import_entries(conn, [entry])

    async def _sync_entries(self, conn, entries, size=0):
        """Import a run of blocks from conn, or hold and then switch to the
        branch it starts.  Fork choice: the verified chain with the greater
        height wins; at equal height the current head stays.  size: the
        bytes of the answer, counted against MAX_BRANCH_BYTES when held."""
        store = self.chain.store
        entries, cut = self._until_due(conn, entries)
        if self._branch is not None and self._branch[0] is conn:
            return await self._extend_branch(conn, entries, size, cut)
        # Blocks we already hold (an answer that started lower than it had
        # to, e.g. because blocks arrived by gossip meanwhile) are skipped:
        # they are no fork.
        while entries and store.hash_at(entries[0]["block"]["header"]["height"]) == entries[0]["block"]["hash"]:
            entries = entries[1:]
        if not entries:
            return not cut and self.chain.head()[0] < conn.remote_height
        first = entries[0]["block"]["header"]
        fork_height = first["height"] - 1
        if store.hash_at(fork_height) != first["parent"]:
            raise PeerError("bad_block", "sync answer does not start on our chain")
        if fork_height < self.chain.head()[0]:
            if self.chain.head()[0] - fork_height > store.undo_depth():
                self._log.warn("fork deeper than undo data; ignoring peer {peer}", peer=conn.addr,
                               component="p2p", event="fork_too_deep")
                return False
            self._branch = (conn, fork_height, [])
            self._branch_bytes = 0
            return await self._extend_branch(conn, entries, size, cut)
        entries = self._checked_headers(conn, entries)
        progressed = await self._import_entries(conn, entries)
        return progressed and not cut  # after a cut, ask again when the block is due

    def _checked_headers(self, conn, entries):
        """The run of entries, up to the first whose header does not follow
        the one before it or lacks its proposer's signature (that one is
        bad_block).  The headers that passed count as verified (the sync
        lag metric); their blocks are verified in full as they are imported."""
        prev = None
        for n, entry in enumerate(entries):
            block = entry["block"]
            header = block["header"]
            try:
                if prev is not None and (header["parent"] != prev["hash"] or header["height"] != prev["header"]["height"] + 1):
                    raise AitError("bad_block", "sync answer blocks are not in order")
                self.chain.check_signed_header(block)
            except AitError as e:
                self.p2p.penalize(conn, "bad_block", e.message)
                entries = entries[:n]
                break
            prev = block
        if entries:
            self.pipeline.header_verified(entries[-1]["block"]["header"]["height"])
        return entries

    async def _extend_branch(self, conn, entries, size, cut=False):
        _, fork_height, branch = self._branch
        self._branch_bytes += size
        if self._branch_bytes > MAX_BRANCH_BYTES:
            self._branch = None
            self._log.warn("branch from {peer} too large to hold; ignoring it", peer=conn.addr,
                           component="p2p", event="fork_too_large")
            return False
        for n, entry in enumerate(entries):
            if n:
                await self.pause()  # parsing a block's transactions takes a while: let the reactor run
            header = entry["block"]["header"]
            prev = branch[-1][0] if branch else None
            want = (prev["header"]["height"] + 1) if prev else fork_height + 1
            if header["height"] != want or (prev is not None and header["parent"] != prev["hash"]):
                self._branch = None
                raise PeerError("bad_block", "branch blocks are not in order")
            try:
                self.chain.check_signed_header(entry["block"])
                txs = self.block_txs(entry["block"], entry["txs"])
            except AitError as e:
                self._branch = None
                self.p2p.penalize(conn, "bad_block", e.message)
                return False
            self.pipeline.header_verified(header["height"])  # it links to our chain through the branch
            # A branch header and ours at its height by one proposer are evidence
            # (as for gossiped headers): say, an authority's clone that signed
            # its own blocks before it met the others.
            self.p2p.node.ballot.seen_header(header, entry["block"].get("sig"))
            branch.append((entry["block"], txs))
        if not entries and not cut:
            self._branch = None
            return False  # the peer has nothing more: its branch is not longer
        if fork_height + len(branch) <= self.chain.head()[0]:
            return not cut  # not longer than ours yet: ask for more (after a cut, when the block is due)
        self._branch = None
        try:
            committed = await self.pipeline.reorganise(fork_height, branch, self.pause, now=self.pipeline.now())
        except AitError as e:
            if e.code == "head_moved":
                return True
            if e.code != "block_in_future":  # the clock went back meanwhile: no one's fault
                self.p2p.penalize(conn, "bad_block", e.message)
            return False
        for block in committed:
            self.p2p.seen_block.add(block["hash"])
        return True

    async def _import_entries(self, conn, entries):
        imported = 0
        for entry in entries:
            block = entry["block"]
            if self.p2p.store_has(block["hash"]):
                continue
            try:
                txs = self.block_txs(block, entry["txs"])
                self.p2p.importing_from = conn
                try:
                    await self.pipeline.import_block_async(block, txs, now=self.pipeline.now())
                finally:
                    self.p2p.importing_from = None
            except AitError as e:
                if e.code != "block_in_future":  # stamped ahead: held or asked again, no offence
                    self.p2p.penalize(conn, "bad_block", e.message)
                return imported > 0
            self.p2p.seen_block.add(block["hash"])
            imported += 1
            # Let the reactor breathe between blocks.
            await self.pause()
        return imported > 0

    def block_txs(self, block, wires):
        """The block's transactions: those already in the mempool (parsed and
        checked on arrival) are taken from it, by the hashes the block
        commits to; only the others are parsed from the wire."""
        hashes = block.get("txs")
        if type(hashes) is not list or len(hashes) != len(wires):
            raise AitError("bad_block", "block transaction list does not match")
        out = []
        for h, w in zip(hashes, wires):
            tx = self.mempool.get(h) if type(h) is str else None
            out.append(tx if tx is not None else self.chain.parse_stored_tx(w))
        return out


def check_entry(e):
    if type(e) is not dict or type(e.get("block")) is not dict or type(e.get("txs")) is not list:
        raise PeerError("protocol", "block entry malformed")
    b = e["block"]
    if type(b.get("header")) is not dict or not is_hex(b.get("hash"), 32) or type(b.get("txs")) is not list:
        raise PeerError("protocol", "block malformed")
    h = b["header"]
    if type(h.get("height")) is not int or not is_hex(h.get("parent"), 32):
        raise PeerError("protocol", "block header malformed")
    return e
