"""The state tree's update, computed in a process of its own.

A block's tree update (jmt.TreeJob) is CPU work in Python: tens of
milliseconds for a block of a thousand transfers, more for big blocks.  In
the reactor it would hold RPC and peers up for that long, and use the
reactor's core; here a child process does it while the reactor serves.

The child is ``python -m aitnode.treeworker DATA_DIR``: a fresh
interpreter (never a fork of the node, so it holds no copy of the node's
LMDB environment) that opens the data_dir read-only and answers jobs on
its stdin with results on its stdout, each a frame: 4 bytes big-endian
length, then a pickle (the node and its own child trust each other).  A
job reads only nodes committed before it was sent.  The child ends when
its stdin closes: when the node stops, or dies.

``TreeWorker`` is the node's side: ``run(job)`` returns a Deferred firing
with the finished jmt.TreeUpdate; it fails when the child is not there
(the driver then computes the update in process, steps.run_steps_async).
"""

import os
import pickle
import struct
import sys

from twisted.internet import defer, protocol
from twisted.logger import Logger

_len = struct.Struct(">I")
RESTART_AFTER = 10.0  # seconds before a child that ended is started again


# -- the child ------------------------------------------------------------------

def _read_exactly(stream, n):
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def main(argv):
    import lmdb
    from aitnode import jmt

    path = argv[1]
    env = db = None
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exactly(stdin, 4)
        if head is None:
            return 0  # the node closed our stdin: it stopped (or died)
        version, root, updates = pickle.loads(_read_exactly(stdin, _len.unpack(head)[0]))
        try:
            if env is None:
                env = lmdb.open(path, readonly=True, lock=True, max_dbs=32, subdir=True)
                db = env.open_db(b"tree", create=False)
            with env.begin() as t:
                tree = jmt.TreeJob(version, root, updates).run(lambda key: t.get(key, db=db))
            out = ("ok", tree.version, tree.root, tree.nodes, tree.stale, tree.hashes)
        except Exception as e:  # reported; the node computes this one itself
            out = ("error", f"{type(e).__name__}: {e}")
        data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_len.pack(len(data)) + data)
        stdout.flush()


# -- the node's side --------------------------------------------------------------

class TreeWorkerError(Exception):
    pass


class TreeWorker(protocol.ProcessProtocol):
    _log = Logger()

    def __init__(self, reactor, data_dir):
        self.reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self._buf = bytearray()
        self._waiting = []  # Deferreds of the jobs sent, in order
        self._ended_at = None
        self.running = False
        self.stopping = False
        self.jobs = 0

    def start(self):
        if self.running or self.stopping:
            return
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.reactor.spawnProcess(self, sys.executable, [sys.executable, "-m", "aitnode.treeworker", self.data_dir],
                                  env=env)
        self.running = True

    def run(self, job):
        """A Deferred firing with the TreeUpdate of job (a jmt.TreeJob)."""
        if not self.running:
            if not self.stopping and (self._ended_at is None or
                                      self.reactor.seconds() - self._ended_at >= RESTART_AFTER):
                self.start()
            if not self.running:
                return defer.fail(TreeWorkerError("the tree worker is not running"))
        data = pickle.dumps((job.version, job.root, job.updates), protocol=pickle.HIGHEST_PROTOCOL)
        d = defer.Deferred()
        self._waiting.append(d)
        self.transport.write(_len.pack(len(data)) + data)
        return d

    def childDataReceived(self, fd, data):
        if fd == 2:
            for line in data.decode("utf-8", "replace").splitlines():
                self._log.warn("tree worker: {line}", line=line, component="chain", event="tree_worker_stderr")
            return
        self._buf += data
        while len(self._buf) >= 4:
            n = _len.unpack_from(self._buf)[0]
            if len(self._buf) < 4 + n:
                return
            frame = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            self._answer(pickle.loads(frame))

    def _answer(self, out):
        from aitnode.jmt import TreeUpdate

        d = self._waiting.pop(0)
        if out[0] != "ok":
            d.errback(TreeWorkerError(out[1]))
            return
        _, version, root, nodes, stale, hashes = out
        tree = TreeUpdate(None, version)
        tree.read = None
        tree.root, tree.nodes, tree.stale, tree.hashes = root, nodes, stale, hashes
        self.jobs += 1
        d.callback(tree)

    def processEnded(self, reason):
        self.running = False
        self._ended_at = self.reactor.seconds()
        self._buf.clear()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(TreeWorkerError("the tree worker ended"))
        if not self.stopping:
            self._log.warn("the tree worker ended ({reason}); tree updates run in the node until it is back",
                           reason=reason.getErrorMessage(), component="chain", event="tree_worker_ended")

    def stop(self):
        """Close the child's stdin: it ends after the job it is on."""
        self.stopping = True
        if self.running:
            self.transport.closeStdin()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
