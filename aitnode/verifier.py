"""Ed25519 checks for batches, off the reactor thread.

``InlineVerifier`` checks in the calling thread (tests, small loads).
``PoolVerifier`` spreads a batch over worker processes, so a large batch
neither freezes the reactor nor is limited to one core.  Both answer a
Deferred firing with one boolean per (pubkey, sig, message).

The pool leaves nothing behind.  Its workers are forked straight from
the node (no forkserver, and fork-context queues need no resource
tracker), once, when the pool starts; ``stop()`` shuts the pool down and
joins every worker.  A node that is killed cannot do that, so each worker
watches its parent and exits once it is gone.
"""

import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time

from twisted.internet import defer
from twisted.python.failure import Failure

from aitnode.crypto import verify


def verify_chunk(items):
    return [verify(pk, sig, msg) for pk, sig, msg in items]


# How often a worker checks that the node is still there (seconds).
WATCH_INTERVAL = 0.5


def _watch_parent(parent, interval):
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(0)  # the node is gone (orphans are reparented): nobody to answer


def _worker_init(parent, interval=WATCH_INTERVAL):
    """Run once in each worker, before its first chunk.

    A forked worker inherits the node's signal handlers (Twisted's), which
    would only schedule a stop of a reactor that does not run here: put the
    defaults back, so SIGTERM ends a worker, and ignore SIGINT (a Ctrl-C on
    the node's terminal reaches the whole group; the node stops the pool).
    Then start the watchdog that ends this worker when the node is gone.
    """
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent, interval), name="watch-parent", daemon=True).start()


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
            # "fork": the workers are the node's only helpers.  A fork
            # pool forks all its workers on the first submit, before it
            # starts any thread of its own; the node starts the verifier
            # before anything else, so nothing else runs while it forks.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"),
                initializer=_worker_init, initargs=(os.getpid(),),
            )
            # Start the workers now, at node start, not on the first batch.
            for _ in range(self.workers):
                self._pool.submit(verify_chunk, [])

    def stop(self):
        """End every worker before returning (pending chunks are cancelled)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

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


class VerifyOnce:
    """Signature verdicts for transactions, each checked once: a transaction
    that another batch is checking right now waits for that verdict
    instead of being checked again (two overlapping sendTxs carrying the
    same transactions, or a sendTx while a batch holds it)."""

    def __init__(self, verifier):
        self.verifier = verifier
        self._checking = {}  # txHash -> Deferreds waiting for its verdict

    def checking(self, tx):
        return tx.hash in self._checking

    async def __call__(self, txs):
        verdict, waiting, mine = {}, {}, []
        for tx in txs:
            if tx.hash in verdict or tx.hash in waiting:
                continue
            waiters = self._checking.get(tx.hash)
            if waiters is not None:
                waiting[tx.hash] = d = defer.Deferred()
                waiters.append(d)
            else:
                self._checking[tx.hash] = []
                verdict[tx.hash] = None
                mine.append(tx)
        try:
            oks = await self.verifier.verify_many([(tx.pubkey, tx.sig, tx.sign_hash) for tx in mine]) if mine else []
        except BaseException:
            failure = Failure()
            for tx in mine:
                for d in self._checking.pop(tx.hash):
                    d.errback(failure)
            raise
        for tx, ok in zip(mine, oks):
            verdict[tx.hash] = ok
            for d in self._checking.pop(tx.hash):
                d.callback(ok)
        for h, d in waiting.items():
            verdict[h] = await d
        return [verdict[tx.hash] for tx in txs]
