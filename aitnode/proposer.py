"""Block production on a timer that no exception can stop."""

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


class ProposerService(service.Service):
    """Every ``interval`` seconds, ask the node for a block.

    An exception in one round is logged and the next round runs as usual.
    """

    _log = Logger()

    def __init__(self, node, clock, interval, pause=None):
        """pause: an awaitable factory (e.g. a zero-delay deferLater) to let
        the reactor run between slices of block building; None builds in
        one go (tests drive the loop with a Clock)."""
        self.pause = pause
        self.node = node
        self.clock = clock
        self.interval = interval
        self._loop = None
        self.failures = 0

    def tick(self):
        try:
            if not self.node.propose_due(self.interval):
                return None
            if self.pause is None:
                return self.node.propose()
            d = Deferred.fromCoroutine(self.node.propose_async(self.pause))
        except Exception:
            self._failed(Failure())
            return None
        # The LoopingCall waits for this Deferred, so rounds never overlap;
        # a failure is logged and swallowed so the loop goes on.
        return d.addErrback(self._failed)

    def _failed(self, failure):
        self.failures += 1
        self._log.failure("block proposal failed; trying again next round", failure,
                          component="proposer", event="propose_failed")
        return None

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        # With several authorities, look more often so a silent in-turn
        # authority is backed up soon after its slot.
        several = len(self.node.chain.authority_list) > 1
        self._loop.start(self.interval / 4 if several else self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
