"""Ed25519 checks for batches, off the reactor thread.

``InlineVerifier`` checks in the calling thread (tests, small loads).
``PoolVerifier`` spreads a batch over worker processes, so a large batch
neither freezes the reactor nor is limited to one core.  Both answer a
Deferred firing with one boolean per (pubkey, sig, message).
"""

import concurrent.futures
import multiprocessing

from twisted.internet import defer

from aitnode.crypto import verify


def verify_chunk(items):
    return [verify(pk, sig, msg) for pk, sig, msg in items]


class InlineVerifier:
    def verify_many(self, items):
        return defer.succeed(verify_chunk(items))

    def start(self):
        pass

    def stop(self):
        pass


class PoolVerifier:
    """A process pool of ``workers`` processes; chunks of ``chunk`` items."""

    def __init__(self, reactor, workers=2, chunk=512):
        self.reactor = reactor
        self.workers = workers
        self.chunk = chunk
        self._pool = None

    def start(self):
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx)
            # Start the workers now, at node start, not on the first batch.
            for _ in range(self.workers):
                self._pool.submit(verify_chunk, [])

    def stop(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _submit(self, items):
        d = defer.Deferred()

        def done(future):
            try:
                result = future.result()
            except BaseException as e:  # a dead worker: check here instead
                self.reactor.callFromThread(d.errback, e)
            else:
                self.reactor.callFromThread(d.callback, result)

        self._pool.submit(verify_chunk, items).add_done_callback(done)
        return d

    def verify_many(self, items):
        if self._pool is None or len(items) < 64:
            return defer.succeed(verify_chunk(items))
        size = max(32, min(self.chunk, -(-len(items) // (self.workers * 2))))
        parts = [self._submit(items[i:i + size]) for i in range(0, len(items), size)]
        d = defer.gatherResults(parts, consumeErrors=True)
        d.addCallback(lambda chunks: [ok for c in chunks for ok in c])
        return d
