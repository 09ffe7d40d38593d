"""Block production: the authorities' turn schedule, on a timer that no
exception can stop."""

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


class ProposerService(service.Service):
    """Every ``interval`` seconds, propose a block if it is this node's turn.

    An exception in one round is logged and the next round runs as usual.
    """

    _log = Logger()

    def __init__(self, pipeline, clock, interval, pause=None):
        """pause: an awaitable factory (cooperate.pause_for) to let the
        reactor run between slices of block building; None builds in one
        go (tests drive the loop with a Clock)."""
        self.pause = pause
        self.pipeline = pipeline
        self.clock = clock
        self.interval = interval
        self._loop = None
        self.failures = 0

    def due(self):
        """Whether this authority should propose now: its turn has come.

        For height h the non-jailed authority at index h mod n of the set
        in effect is in turn once ``block_interval_ms`` has passed since the
        parent's timestamp; the others back it up in rotation order, the
        r-th after ``block_interval_ms * (1 + 2r)`` (consensus.AuthoritySet;
        the same rule every node enforces on import).  What peers claim
        (their height) never delays a turn: an authority that is behind
        syncs meanwhile, and fork choice settles two blocks at one height.
        """
        pipeline = self.pipeline
        if pipeline.key is None or pipeline.signing_stopped:
            return False
        chain = pipeline.chain
        parent = chain.head_header()
        earliest = chain.authority_set().earliest(
            pipeline.key.address, parent["height"] + 1, parent["timestamp"], chain.params()["block_interval_ms"])
        return earliest is not None and pipeline.now() >= earliest

    def tick(self):
        try:
            if not self.due():
                return None
            if self.pause is None:
                return self.pipeline.propose()
            d = Deferred.fromCoroutine(self.pipeline.propose_async(self.pause))
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
        # interval: how often to look whether the turn has come (the turns
        # themselves are the chain's block_interval_ms).
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
