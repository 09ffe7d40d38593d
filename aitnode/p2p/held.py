"""Blocks from the future, held until their time.

A node refuses a block stamped more than chain.MAX_FUTURE_DRIFT ms
after its own clock.  A gossiped one (whose header an authority signed)
is held instead and handed back when it is due: at most HELD_BLOCKS of
them, of at most HELD_BYTES of frames in all, none more than HOLD_AHEAD
seconds early; others are dropped, which is no peer's offence.
"""

from twisted.logger import Logger

from aitnode.chain import MAX_FUTURE_DRIFT

HELD_BLOCKS = 16
HELD_BYTES = 16 * 1024 * 1024
HOLD_AHEAD = 60


class HeldBlocks:
    """clock: callLater; now(): the node's time in ms (as block
    timestamps); release(conn, entry): called with a held block when due."""

    _log = Logger()

    def __init__(self, clock, now, release):
        self.clock = clock
        self.now = now
        self.release = release
        self.blocks = {}  # hash -> (conn, entry, size, timer)
        self._bytes = 0

    def too_early(self, header):
        """Seconds until a block with this header may be imported (0: now)."""
        ts = header.get("timestamp")
        if type(ts) is not int:
            return 0  # verification refuses it
        return max(0, ts - MAX_FUTURE_DRIFT - self.now()) / 1000  # seconds, for callLater

    def hold(self, conn, entry, wait, size):
        block = entry["block"]
        if block["hash"] in self.blocks:
            return
        if wait > HOLD_AHEAD or len(self.blocks) >= HELD_BLOCKS or self._bytes + size > HELD_BYTES:
            self._log.warn("block {hash} is {s} s ahead of this node's clock; not held", hash=block["hash"],
                           s=wait + MAX_FUTURE_DRIFT / 1000, component="p2p", event="block_too_far_ahead")
            return
        timer = self.clock.callLater(wait, self._due, block["hash"])
        self.blocks[block["hash"]] = (conn, entry, size, timer)
        self._bytes += size

    def _due(self, block_hash):
        conn, entry, size, _ = self.blocks.pop(block_hash)
        self._bytes -= size
        self.release(conn, entry)

    def stop(self):
        for _, _, _, timer in self.blocks.values():
            if timer.active():
                timer.cancel()
        self.blocks.clear()
        self._bytes = 0
