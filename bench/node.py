"""twistd children for the benchmarks: the synchronous driver of aitnode.launch.

A child runs in its own session (so stopping it also ends the node's
verifier workers), and a thread reads its output line by line as it is
written, stamping each line with the time it arrived.
"""

import http.client
import json
import subprocess
import tempfile
import threading
import time

from aitnode import launch

from bench.common import CHAIN_ID, Block, http_get, now


class Twistd:
    """``twistd -n APP ...`` in ``directory``; ``start()`` returns once every
    service named in ``wait_for`` logged that it listens (``ports``).

    JSON log lines ([log] format = json) are decoded: block_proposed events
    go to ``blocks`` (:class:`bench.common.Block`), block_imported events
    to ``imported`` (height -> (log time, txs, latency_ms)), every other
    event to ``events`` as (log time, name, the event).  Warnings, errors
    and text lines are kept in ``tail``.
    """

    def __init__(self, directory, args, wait_for=("rpc",), profile=None, name=None):
        self.dir = directory
        self.args = args
        self.name = name or args[0]
        self.wait_for = tuple(wait_for)
        self.profile = profile
        self.ports = {}
        self.blocks = []
        self.imported = {}
        self.events = []
        self.tail = []
        self.cleanup = []  # run by stop(), first
        self.proc = None
        self._ready = threading.Event()

    def start(self, timeout=60):
        self.proc = subprocess.Popen(launch.twistd_argv(self.args, self.profile), cwd=self.dir,
                                     env=launch.child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self._listening():
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(self.tail[-20:]))
        return self

    def _listening(self):
        return all(n in self.ports for n in self.wait_for)

    def _read(self):
        for raw in self.proc.stdout:
            t = now()
            m = launch.LISTENING.search(raw)
            if m:
                self.ports[m.group(1).decode()] = int(m.group(3))
            line = raw.decode("utf-8", "replace").rstrip()
            ev = None
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = None
            if ev is None:
                self.tail.append(line)
            else:
                self._event(ev, line, t)
            del self.tail[:-200]
            if self._listening():
                self._ready.set()
        self._ready.set()

    def _event(self, ev, line, arrival):
        name = ev.get("event")
        if name == "block_proposed":
            self.blocks.append(Block(arrival, ev["height"], ev["txs"], ev.get("latency_ms", float("nan")), ev["time"]))
        elif name == "block_imported":
            self.imported[ev["height"]] = (ev["time"], ev.get("txs"), ev.get("latency_ms", float("nan")))
        else:
            self.events.append((ev.get("time"), name, ev))
            if ev.get("level") in ("warn", "error", "critical") or "traceback" in ev:
                self.tail.append(line[:2000])

    @property
    def pid(self):
        return self.proc.pid

    def check_alive(self):
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n" + "\n".join(self.tail[-20:]))

    def wait_event(self, name, timeout=30):
        """The log time of the first ``name`` event, waiting for it."""
        deadline = now() + timeout
        while now() < deadline:
            for t, n, _ in list(self.events):
                if n == name:
                    return t
            self.check_alive()
            time.sleep(0.005)
        raise RuntimeError(f"no {name} event from {self.name} in {timeout} s:\n" + "\n".join(self.tail[-20:]))

    def errors(self):
        return [e for e in self.tail if '"level": "error"' in e or "Traceback" in e or '"traceback"' in e]

    def stop(self):
        for fn in self.cleanup:
            fn()
        self.cleanup = []
        launch.stop_popen(self.proc, grace=20)


class BenchNode(Twistd):
    """``twistd -n aitnode`` on a folder of its own (:class:`aitnode.launch.NodeFolder`)
    under ``root``, with JSON logs, [verifier] workers = 2, a large mempool
    and a 1 s proposer interval unless ``sections`` say otherwise;
    ``p2p=True`` (or ``peers``) listens for peers on an ephemeral loopback port.
    """

    def __init__(self, root, name, doc, key=None, sections=None, p2p=False, peers=(), profile=None):
        defaults = {
            "proposer": {"interval": "1.0"},
            "mempool": {"max_size": "200000", "max_per_sender": "1024"},
            "verifier": {"workers": "2"},
            "log": {"format": "json"},
        }
        self.folder = launch.NodeFolder(tempfile.mkdtemp(prefix=f"{name}-", dir=root), doc, key=key,
                                        sections=launch.merge(defaults, sections), p2p=p2p, peers=peers,
                                        chain_id=CHAIN_ID)
        self.data_dir = self.folder.data_dir
        super().__init__(self.folder.basedir, self.folder.args, profile=profile, name=name,
                         wait_for=("rpc", "p2p") if self.folder.p2p_listens else ("rpc",))

    @property
    def port(self):
        return self.ports["rpc"]

    @property
    def p2p_url(self):
        return f"ws://127.0.0.1:{self.ports['p2p']}/p2p/ws"

    def head(self, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            status, body = http_get(c, "/rpc/getHead")
        finally:
            if conn is None:
                c.close()
        assert status == 200, body
        return body["height"]

    def blocks_since(self, t0):
        return [b for b in list(self.blocks) if b.arrival >= t0]

    def wait_committed(self, t0, count, timeout):
        """Arrival time of the block that brought the transactions committed
        in blocks arriving since ``t0`` to ``count``."""
        deadline = now() + timeout
        while now() < deadline:
            total = 0
            for b in self.blocks_since(t0):
                total += b.txs
                if total >= count:
                    return b.arrival
            self.check_alive()
            time.sleep(0.01)
        got = sum(b.txs for b in self.blocks_since(t0))
        raise RuntimeError(f"only {got} of {count} transactions committed in {timeout}s")

    def wait_block(self, index, timeout=30, with_txs=False):
        """(position, block) of the first block logged at list position >=
        ``index`` (holding transactions, if asked)."""
        deadline = now() + timeout
        while now() < deadline:
            blocks = self.blocks
            for i in range(index, len(blocks)):
                if not with_txs or blocks[i].txs:
                    return i, blocks[i]
            self.check_alive()
            time.sleep(0.002)
        raise RuntimeError(f"no block from {self.name} in {timeout} s:\n" + "\n".join(self.tail[-20:]))
