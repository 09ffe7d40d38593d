"""Block sync: asking peers for blocks and importing them (serve answers
a peer's get_blocks; held keeps gossiped blocks from the future).

A node behind a peer asks it for blocks from a locator of its own chain
(``get_blocks``); the answer's blocks are imported in order through the
block pipeline.  An answer that forks below the head is held until the
branch it starts is longer than the node's chain (asking for the rest
with ``{from, limit}``); then the pipeline verifies the whole branch and
switches to it at once (chain.reorganise_steps).  Fork choice compares
blocks this node verified, never a height a peer claimed.
"""

from twisted.internet import defer
from twisted.logger import Logger

from aitnode.encoding import is_hex
from aitnode.errors import AitError
from aitnode.p2p.held import HeldBlocks
from aitnode.p2p.wire import PeerError, is_u64

SYNC_BATCH = 64
SYNC_TIMEOUT = 30  # seconds to wait for a get_blocks answer
# A competing branch is held (parsed, in memory) while it is fetched, until
# it is longer than the node's chain; the answers that brought it may add
# up to this many bytes on the wire.  One branch is held at a time.
MAX_BRANCH_BYTES = 64 * 1024 * 1024


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
        self.refused = RefusedTips()  # tips of branches fork choice refused
        self.early = HeldBlocks(reactor, self.pipeline.now, self.on_block)  # gossiped blocks from the future
        self._retry = None  # asks again once a block from the future is due

    @property
    def held(self):
        return self.early.blocks

    def stop(self):
        self._cancel_timer()
        self.early.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- blocks from the future ----------------------------------------------
    def _until_due(self, conn, entries):
        """The entries before the first one stamped too far ahead; for that
        one, ask conn again when it is due.  (entries, whether cut)."""
        for n, entry in enumerate(entries):
            wait = self.early.too_early(entry["block"]["header"])
            if wait:
                if self._retry is not None and self._retry.active():
                    self._retry.cancel()
                self._retry = self.reactor.callLater(wait, lambda: conn in self.p2p.conns and self.maybe_sync(conn))
                return entries[:n], True
        return entries, False

    # -- asking --------------------------------------------------------------
    def maybe_sync(self, conn):
        """Ask conn for blocks if no sync runs and its head may win fork
        choice (worth_asking; fork choice decides once it is checked)."""
        if self.syncing is not None or not conn.ready or not worth_asking(self.chain, conn, self.refused):
            return
        if self._branch is not None and self._branch[0] is conn:
            last = self._branch[2][-1][0]["header"]["height"]
            self._ask(conn, {"from": last + 1, "limit": self.sync_batch})
        else:
            self._branch = None
            self._ask(conn, {"locator": locator(self.chain), "limit": self.sync_batch})

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

    # -- importing -------------------------------------------------------------
    def on_blocks(self, conn, d):
        if type(d) is not dict or type(d.get("blocks")) is not list or not is_u64(d.get("height")):
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
            self.maybe_sync(conn)  # off our chain, its branch may be better
            return
        wait = self.early.too_early(header)
        if wait:
            try:
                self.chain.check_signed_header(entry["block"])  # only an authority's block is worth holding
            except AitError as e:
                self.p2p.penalize(conn, "bad_block", e.message)
                return
            self.early.hold(conn, entry, wait, conn.frame_bytes)
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
        entries, error = checked_headers(self.chain, entries)
        if error is not None:
            self.p2p.penalize(conn, "bad_block", error.message)
        if entries:  # these headers count as verified (the sync lag metric); their blocks are checked in full next
            self.pipeline.header_verified(entries[-1]["block"]["header"]["height"])
        progressed = await self._import_entries(conn, entries)
        return progressed and not cut  # after a cut, ask again when the block is due

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
                # An authority this node does not know yet (added on the
                # branch) is checked with the whole branch, not here.
                self.chain.check_signed_header(entry["block"], unknown_ok=True)
                txs = block_txs(self.chain, self.mempool, entry["block"], entry["txs"])
            except AitError as e:
                self._branch = None
                self.p2p.penalize(conn, "bad_block", e.message)
                return False
            self.pipeline.header_verified(header["height"])  # it links to our chain through the branch
            # With ours at its height by one proposer, evidence (a clone's, say).
            self.p2p.node.ballot.seen_header(header, entry["block"].get("sig"))
            branch.append((entry["block"], txs))
        if cut:
            return False  # asked again when the held block is due
        tip = branch[-1][0]["header"]["height"] if branch else fork_height
        if entries and fork_height + len(branch) <= self.chain.head()[0] and tip < conn.remote_height:
            return True  # not longer than ours, and the peer has more: ask for more
        self._branch = None
        if not branch:
            return False
        try:
            committed = await self.pipeline.reorganise(fork_height, branch, self.pause, now=self.pipeline.now())
        except AitError as e:
            if e.code == "head_moved":
                return True
            if e.code in ("branch_not_better", "fork_below_finalized"):
                self.refused.add(branch[-1][0]["hash"])  # fork choice, no offence: not asked for again
                self._log.info("branch from {peer} not taken: {message}", peer=conn.addr, message=e.message,
                               code=e.code, component="p2p", event="branch_refused")
            elif e.code != "block_in_future":  # the clock went back meanwhile: no one's fault
                self.p2p.penalize(conn, "bad_block", e.message)
            return False
        for block in committed:
            self.p2p.seen_block.add(block["hash"])
        return True

    async def _import_entries(self, conn, entries):
        imported = 0
        for entry in entries:
            block = entry["block"]
            if on_chain(self.chain.store, block["hash"]):
                continue
            try:
                txs = block_txs(self.chain, self.mempool, block, entry["txs"])
                self.p2p.importing_from = conn
                try:
                    await self.pipeline.import_block_async(block, txs, now=self.pipeline.now())
                finally:
                    self.p2p.importing_from = None
            except AitError as e:
                if e.code not in ("block_in_future", "head_moved"):  # held, or asked again: no offence
                    self.p2p.penalize(conn, "bad_block", e.message)
                return imported > 0
            self.p2p.seen_block.add(block["hash"])
            imported += 1
            # Let the reactor breathe between blocks.
            await self.pause()
        return imported > 0


def check_entry(e):
    if type(e) is not dict or type(e.get("block")) is not dict or type(e.get("txs")) is not list:
        raise PeerError("protocol", "block entry malformed")
    b = e["block"]
    if type(b.get("header")) is not dict or not is_hex(b.get("hash"), 32) or type(b.get("txs")) is not list:
        raise PeerError("protocol", "block malformed")
    h = b["header"]
    if not is_u64(h.get("height")) or h["height"] == 0 or not is_hex(h.get("parent"), 32):
        raise PeerError("protocol", "block header malformed (genesis never travels)")
    return e


def locator(chain):
    """Hashes of the chain at heights h, h-1, h-2, ..., h-8, then gaps
    doubling, at most 63 of them, and the genesis hash last."""
    store = chain.store
    height = chain.head()[0]
    out, step, h = [], 1, height
    while h > 0 and len(out) < 63:
        out.append(store.hash_at(h))
        if len(out) > 8:
            step *= 2
        h -= step
    out.append(store.hash_at(0))
    return out


def checked_headers(chain, entries):
    """(the run of entries up to the first whose header does not follow the
    one before it or lacks its proposer's signature, that one's AitError
    or None)."""
    prev = None
    for n, entry in enumerate(entries):
        block = entry["block"]
        header = block["header"]
        try:
            if prev is not None and (header["parent"] != prev["hash"] or header["height"] != prev["header"]["height"] + 1):
                raise AitError("bad_block", "sync answer blocks are not in order")
            chain.check_signed_header(block)
        except AitError as e:
            return entries[:n], e
        prev = block
    return entries, None


def block_txs(chain, mempool, block, wires):
    """The block's transactions: those already in the mempool (parsed and
    checked on arrival) are taken from it, by the hashes the block commits
    to; only the others are parsed from the wire."""
    hashes = block.get("txs")
    if type(hashes) is not list or len(hashes) != len(wires):
        raise AitError("bad_block", "block transaction list does not match")
    out = []
    for h, w in zip(hashes, wires):
        tx = mempool.get(h) if type(h) is str else None
        out.append(tx if tx is not None else chain.parse_stored_tx(w))
    return out


def worth_asking(chain, conn, refused):
    """Whether conn's claimed head may win fork choice: higher than ours,
    or another head (not refused before) above our finalized block, even
    lower: the higher justified block comes first, so a shorter branch
    may win."""
    height, head = chain.head()
    if conn.remote_height > height:
        return True
    if conn.remote_head in (None, head, *refused) or on_chain(chain.store, conn.remote_head):
        return False
    return conn.remote_height > chain.finality().finalized.height


def note_head(chain, conn, block):
    """What a gossiped block says of its sender's head (a claim).  A peer
    sends each block it commits, so one off our chain, even lower than
    what it claimed before, is its head now."""
    if block["header"]["height"] >= conn.remote_height or not on_chain(chain.store, block["hash"]):
        conn.remote_height, conn.remote_head = block["header"]["height"], block["hash"]


def on_chain(store, block_hash):
    """Whether the block is on this node's chain (not only stored)."""
    block = store.block_by_hash(block_hash)
    return block is not None and store.hash_at(block["header"]["height"]) == block_hash


class RefusedTips:
    """The last few hundred branch tips fork choice refused (bounded)."""

    SIZE = 256

    def __init__(self):
        self._tips = {}

    def add(self, block_hash):
        self._tips[block_hash] = None
        if len(self._tips) > self.SIZE:
            del self._tips[next(iter(self._tips))]

    def __iter__(self):
        return iter(self._tips)
