"""The tree worker (aitnode.treeworker): the proposer's state-tree updates
computed in a child process, off the reactor, with exactly the result the
node computes itself; a worker that dies costs nothing but time (the
update is done in process), and stopping the node ends the child."""

import os
import signal

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from aitnode import jmt, treeworker
from aitnode.errors import AitError
from aitnode.genesis import Genesis
from aitnode.node import compose
from aitnode.treeworker import TreeWorker

from tests.common import ALICE, AUTHORITY, BOB, genesis_doc, key, make_node, transfer
from tests.procs import inline, wait_for


def pause():
    return deferLater(reactor, 0, lambda: None)


class TreeWorkerTests(TestCase):
    timeout = 60

    def setUp(self):
        self.patch(jmt.TreeJob, "OFFLOAD_MIN", 0)  # every update to the worker, however small
        self.path = self.mktemp()
        self.worker = TreeWorker(reactor, self.path)
        self.node = compose(self.path, Genesis(genesis_doc()), reactor, key=AUTHORITY, tree_worker=self.worker)
        self.addCleanup(self.node.store.close)
        self.addCleanup(self.node.pruner.stop)  # (cleanups run last first: before the store closes)
        self.worker.start()
        self.addCleanup(self.stop)
        self.follower = make_node(self, key=None)

    @inline
    async def stop(self):
        self.worker.stop()
        await wait_for(lambda: not self.worker.running, 10, message="the tree worker to end")

    async def propose(self, *txs):
        for tx in txs:
            self.node.admission.submit(tx.to_wire())
        block = await self.node.pipeline.propose_async(pause)
        entry = self.node.chain.block_entry(block["header"]["height"])
        self.follower.pipeline.import_block(entry["block"], [self.follower.admission.parse(w) for w in entry["txs"]])
        self.assertEqual(self.follower.chain.head(), self.node.chain.head())
        self.assertEqual(self.follower.store.state_root(), block["header"]["state_root"])
        return block

    @inline
    async def test_blocks_rooted_by_the_worker_verify_everywhere(self):
        """Every block's root came from the worker, and a node computing
        its own (the follower, in process) agrees, new accounts, emptied
        accounts and all; the tree the node wrote proves its entries."""
        poor = key(501)
        await self.propose(transfer(ALICE, 1, poor, 2000))
        await self.propose(*[transfer(ALICE, n, key(600 + n), 5) for n in range(2, 40)])
        await self.propose(transfer(poor, 1, BOB, 1000, fee=1000))  # poor's balance is spent to 0
        await self.propose(transfer(BOB, 1, ALICE, 3))
        self.assertEqual(self.worker.jobs, 4)
        height = self.node.chain.head()[0]
        raw, proof = self.node.store.proof("acct", key(610).address, height)
        self.assertIsNotNone(raw)

    @inline
    async def test_a_small_update_stays_in_process(self):
        """A round trip to the worker costs more than a few entries' update."""
        self.patch(jmt.TreeJob, "OFFLOAD_MIN", 256)
        await self.propose(transfer(ALICE, 1, BOB, 5))
        self.assertEqual(self.worker.jobs, 0)
        self.patch(jmt.TreeJob, "OFFLOAD_MIN", 20)
        await self.propose(*[transfer(ALICE, n, key(800 + n), 5) for n in range(2, 22)])
        self.assertEqual(self.worker.jobs, 1)

    @inline
    async def test_a_dead_worker_costs_only_time(self):
        await self.propose(transfer(ALICE, 1, BOB, 5))
        os.kill(self.worker.transport.pid, signal.SIGKILL)
        await wait_for(lambda: not self.worker.running, 10, message="the killed worker to be noticed")
        await self.propose(transfer(ALICE, 2, BOB, 5))  # in process
        self.assertEqual(self.worker.jobs, 1)
        # It is started again on a later block, once RESTART_AFTER has passed.
        self.patch(treeworker, "RESTART_AFTER", 0)
        await self.propose(transfer(ALICE, 3, BOB, 5))
        self.assertTrue(self.worker.running)
        self.assertEqual(self.worker.jobs, 2)

    @inline
    async def test_stopping_ends_the_child(self):
        pid = self.worker.transport.pid
        await self.stop()
        await wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10,
                       message="the child process to exit")
        # And a job after stop is done in process.
        await self.propose(transfer(ALICE, 1, BOB, 5))
        self.assertEqual(self.worker.jobs, 0)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class ImportTests(TestCase):
    timeout = 60

    def setUp(self):
        self.patch(jmt.TreeJob, "OFFLOAD_MIN", 0)
        self.source = make_node(self)
        for n in range(1, 3):
            self.source.admission.submit(transfer(ALICE, n, key(700 + n), 5).to_wire())
            self.source.clock.advance(1)
            self.source.pipeline.propose()
        self.path = self.mktemp()
        self.worker = TreeWorker(reactor, self.path)
        self.node = compose(self.path, Genesis(genesis_doc()), reactor, key=None, tree_worker=self.worker)
        self.addCleanup(self.node.store.close)
        self.addCleanup(self.node.pruner.stop)
        self.worker.start()
        self.addCleanup(lambda: (self.worker.stop(), wait_for(lambda: not self.worker.running, 10))[1])

    def entry(self, height):
        e = self.source.chain.block_entry(height)
        return e["block"], [self.node.admission.parse(w) for w in e["txs"]]

    @inline
    async def test_imported_blocks_are_checked_by_the_worker(self):
        for h in (1, 2):
            await self.node.pipeline.import_block_async(*self.entry(h))
        self.assertEqual(self.node.chain.head(), self.source.chain.head())
        self.assertEqual(self.worker.jobs, 2)

    @inline
    async def test_a_head_that_moved_meanwhile_is_reported_not_committed_twice(self):
        await self.node.pipeline.import_block_async(*self.entry(1))
        real = self.node.pipeline.tree_jobs

        def meanwhile(job):
            self.node.pipeline.import_block(*self.entry(2))  # another path committed it first
            return real(job)
        self.node.pipeline.tree_jobs = meanwhile
        with self.assertRaises(AitError) as caught:
            await self.node.pipeline.import_block_async(*self.entry(2))
        self.assertEqual(caught.exception.code, "head_moved")
        self.assertEqual(self.node.chain.head(), self.source.chain.head())
