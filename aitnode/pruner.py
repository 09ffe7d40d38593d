"""Pruning the state tree, in slices, after blocks commit.

The tree keeps every height from ``[node] state_history`` blocks below
the finalized one (proofs at those heights); what only older heights
need is deleted here, never inside a block's write transaction (pruning
is no part of consensus, and a block's commit stays short) and never in
one long run (each slice deletes at most SLICE nodes, then the reactor
runs before the next).
"""

from twisted.logger import Logger

from aitnode.chain import prune_tree

SLICE = 2000  # nodes per write transaction: a few milliseconds


class Pruner:
    _log = Logger()

    def __init__(self, chain, clock, slice_size=SLICE):
        self.chain = chain
        self.clock = clock
        self.slice_size = slice_size
        self._call = None
        self.stopped = False

    def on_block(self, block):
        """A block listener (BlockPipeline.block_listeners)."""
        if self._call is None and not self.stopped:
            self._call = self.clock.callLater(0, self._slice)

    def _slice(self):
        self._call = None
        if self.stopped:
            return
        try:
            more = prune_tree(self.chain, self.slice_size)
        except Exception:
            self._log.failure("pruning the state tree failed", component="chain", event="prune_failed")
            return
        if more:
            self._call = self.clock.callLater(0, self._slice)

    def stop(self):
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
