"""A node leaves no process behind: its signature-checking workers and its
tree worker end with it, whether it is stopped (SIGTERM) or killed (SIGKILL).

The process tree is read from /proc/<pid>/stat (Linux).  A process is
named by (pid, start time), so a recycled pid never passes for one of
ours; a zombie counts as gone (it has exited; whoever inherited it reaps
it).  Every wait is bounded.
"""

import os
import signal
import sys

from twisted.trial import unittest

from aitnode.verifier import PoolVerifier
from tests.common import ALICE, BOB, transfer, wire
from tests.procs import NodeProcess, inline, wait_for

WORKERS = 2
SKIP = None if sys.platform.startswith("linux") else "reads the process tree from /proc"


def _stat(pid):
    """(ppid, state, start time) of pid, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[1]), fields[0].decode(), int(fields[19])


def descendants(root):
    """{(pid, start time)} of every live descendant of root."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[1] != "Z":
                children.setdefault(st[0], []).append((int(name), st[2]))
    found, todo = set(), [root]
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            found.add((pid, start))
            todo.append(pid)
    return found


def alive(procs):
    """The members of procs still running (not gone, not a zombie)."""
    left = set()
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            left.add((pid, start))
    return left


def describe(procs):
    out = []
    for pid, _ in sorted(procs):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{pid}: {cmd[:200]}")
        except OSError:
            out.append(f"{pid}: (gone)")
    return "\n".join(out)


class NodeLeavesNoProcessTests(unittest.TestCase):
    skip = SKIP
    timeout = 120

    @inline
    async def _leaves_nothing(self, sig):
        node = NodeProcess(self, sections={"verifier": {"workers": str(WORKERS)}})
        await node.start()
        pid = node.proto.transport.pid
        root = {(pid, _stat(pid)[2])}
        # A batch large enough to go through the pool: the workers are in use.
        txs = [wire(transfer(ALICE, n, BOB, 1)) for n in range(1, 201)]
        status, body = await node.post("/rpc/sendTxs", txs)
        self.assertEqual(status, 200, body)
        self.assertTrue(all("txHash" in r for r in body["results"]), body)
        # Two verifier workers, at least, and the tree worker run under the node.
        helpers = await wait_for(lambda: (lambda d: d if len(d) >= WORKERS + 1 else None)(descendants(pid)),
                                 timeout=20, message="the node's verifier workers and tree worker to start")
        self.assertIn("aitnode.treeworker", describe(helpers))
        # Whatever this test leaves running, it ends itself (helpers hold
        # the node's stdout, so the node's protocol ends only after them).
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p, _ in alive(helpers)])
        node.proto.transport.signalProcess(sig)
        await wait_for(lambda: not alive(root), timeout=30, message="the node to exit")
        await wait_for(lambda: not alive(helpers), timeout=15,
                       message=lambda: "the node's helpers to exit; still running:\n" + describe(alive(helpers)))
        await wait_for(lambda: node.proto.done, timeout=15, message="the node's output to close")
        if sig == signal.SIGTERM:
            # A clean stop (twistd ends by re-raising the signal it got).
            self.assertIn("node stopped", node.output)
            self.assertNotIn("Traceback", node.output)

    def test_sigterm_ends_every_helper(self):
        return self._leaves_nothing(signal.SIGTERM)

    def test_sigkill_helpers_exit_by_themselves(self):
        return self._leaves_nothing(signal.SIGKILL)


class PoolVerifierStopTests(unittest.TestCase):
    """In process: stop() ends every process start() began, before it returns."""

    skip = SKIP

    def test_stop_joins_every_process(self):
        from twisted.internet import reactor
        before = descendants(os.getpid())
        verifier = PoolVerifier(reactor, workers=WORKERS)
        verifier.start()
        self.addCleanup(verifier.stop)
        items = [(t.pubkey, t.sig, t.sign_hash) for t in (transfer(ALICE, n, BOB, 1) for n in range(1, 130))]
        items[5] = (items[5][0], items[5][1], b"not what was signed")

        def check(oks):
            self.assertEqual(oks, [i != 5 for i in range(len(items))])
            started = descendants(os.getpid()) - before
            self.assertGreaterEqual(len(started), WORKERS)
            verifier.stop()
            self.assertEqual(alive(started), set(), describe(alive(started)))
            # Stopping twice is harmless; a stopped pool checks in process.
            verifier.stop()
            self.assertEqual(self.successResultOf(verifier.verify_many(items[:100])),
                             [i != 5 for i in range(100)])

        return verifier.verify_many(items).addCallback(check)
