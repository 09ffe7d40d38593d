"""What the benchmarks share: keys and genesis, pre-signing, the in-process
node, the getHead poller, timing and table helpers, and the machine note."""

import contextlib
import cProfile
import hashlib
import http.client
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import namedtuple

import cbor2
import lmdb
import nacl.signing

from twisted.internet.task import Clock

from aitnode.crypto import KeyPair
from aitnode.genesis import Genesis, make_genesis
from aitnode.mempool import Mempool
from aitnode.node import compose
from aitnode.tx import parse_tx

CHAIN_ID = "ait-bench"
FEE = 1000
BALANCE = 10**12
now = time.perf_counter  # CLOCK_MONOTONIC: comparable across processes on Linux

# A block the node logged (block_proposed): when its line arrived here
# (perf_counter), and the event's own fields (``time`` is its wall clock).
Block = namedtuple("Block", "arrival height txs latency_ms time")


class Ctx:
    """One benchmark run: options, the temp folder, cleanups and profiles."""

    def __init__(self, quick=False, profile=False, profile_dir=None):
        self.quick, self.profile, self.profile_dir = quick, profile, profile_dir
        self.machine = machine_info()
        self.tmp = tempfile.mkdtemp(prefix="aitnode-bench-")
        self.cleanup = []  # callables run at the end, whatever happened
        self.profiles = []  # Markdown sections printed after the table

    def store_dir(self):
        """A new empty folder for an in-process node's store."""
        return tempfile.mkdtemp(prefix="store-", dir=self.tmp)

    def profile_path(self, name):
        """Where a profiled child dumps its stats (None unless --profile)."""
        return os.path.join(self.tmp, f"{name}.prof") if self.profile else None

    def add_profile(self, path, title, limit=22):
        """The top functions of a dumped profile, for after the table."""
        if not path or not os.path.exists(path):
            return
        if self.profile_dir:
            shutil.copy(path, self.profile_dir)
        buf = io.StringIO()
        st = pstats.Stats(path, stream=buf)
        st.strip_dirs().sort_stats("tottime").print_stats(limit)
        buf.write("\n")
        st.sort_stats("cumulative").print_stats(limit)
        self.profiles.append(f"\n### profile: {title}\n\n```\n{buf.getvalue().strip()}\n```\n")

    def close(self):
        for fn in self.cleanup:
            with contextlib.suppress(Exception):
                fn()
        shutil.rmtree(self.tmp, ignore_errors=True)


def reap(proc, timeout=10):
    """Wait for a multiprocessing child to end; kill it past ``timeout`` seconds."""
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()


def new_profile():
    return cProfile.Profile(time.process_time)  # CPU time, not wall time


# -- keys, genesis, signing ----------------------------------------------------

def bench_key(i):
    """A fixed key per index (benchmark keys only, never real secrets)."""
    return KeyPair(hashlib.sha256(b"aitnode-bench-%d" % i).digest())


def bench_genesis(authority, funded, **params):
    """A genesis document: ``authority`` proposes, each address in
    ``funded`` holds BALANCE, the faucet is on; ``params`` add to it.

    Turns are 10 ms apart, so a single authority proposes at each look of
    its [proposer] interval: the pace each benchmark sets there."""
    return make_genesis(CHAIN_ID, [authority], [(a, BALANCE) for a in funded],
                        {"faucet": True, "block_interval_ms": 10, **params}, timestamp=1_700_000_000)


def _sign_sender(args):
    """Child process: sign one sender's run of transfers, in nonce order;
    [(wire JSON bytes, txHash)], or parsed Transactions."""
    seed, address, pubkey_hex, items, as_tx = args
    sk = nacl.signing.SigningKey(seed)
    dumps = cbor2.dumps
    out = []
    for nonce, to, amount in items:
        body = {
            "chain_id": CHAIN_ID, "type": "TRANSFER", "sender": address,
            "nonce": nonce, "fee": FEE, "payload": {"to": to, "amount": amount},
        }
        sig = sk.sign(hashlib.sha256(dumps(body, canonical=True)).digest()).signature
        body["pubkey"] = pubkey_hex
        body["sig"] = sig.hex()
        tx_hash = hashlib.sha256(dumps(body, canonical=True)).hexdigest()
        del body["chain_id"]
        out.append((json.dumps(body, separators=(",", ":")).encode(), tx_hash))
    if as_tx:
        return [parse_tx(json.loads(wire), CHAIN_ID) for wire, _ in out]
    return out


def presign(keys, per_sender, recipients, first_nonce=1, procs=2, as_tx=False):
    """Transfers signed in a process pool, before any clock starts: for each
    key in order, its ``per_sender`` transfers (nonces first_nonce...) to
    random ``recipients``, as (wire bytes, hash) pairs or (``as_tx``)
    Transaction objects."""
    rng = random.Random(7)
    jobs = []
    for k in keys:
        items = [(first_nonce + j, rng.choice(recipients), 1 + rng.randrange(1000)) for j in range(per_sender)]
        jobs.append((k.seed, k.address, k.public_key.hex(), items, as_tx))
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        signed = pool.map(_sign_sender, jobs, chunksize=max(1, len(jobs) // (procs * 8)))
    # the node must compute the same hash: check one transaction with the node's own parser
    first = signed[0][0]
    wire, h = (json.dumps(first.to_wire()).encode(), first.hash) if as_tx else first
    assert parse_tx(json.loads(wire), CHAIN_ID).hash == h, "bench signing disagrees with aitnode.tx"
    return signed


# -- the node in process ---------------------------------------------------------

def inprocess_node(doc, authority, data_dir, verifier=None, genesis=None):
    """A node in this process on ``data_dir``, built by aitnode.node.compose
    as twistd builds it (from genesis, a Genesis, if given); (node, store)."""
    node = compose(data_dir, genesis or Genesis(doc), Clock(), key=authority, verifier=verifier,
                   mempool=Mempool(max_size=1_000_000, max_per_sender=1024))
    return node, node.store


@contextlib.contextmanager
def no_fsync():
    """LMDB environments opened meanwhile do not fsync (for setup only)."""
    real = lmdb.open

    def open_nosync(*a, **kw):
        return real(*a, sync=False, metasync=False, **kw)

    lmdb.open = open_nosync
    try:
        yield
    finally:
        lmdb.open = real


def admit(node, txs):
    """Into the mempool through the node's admission rules (signatures checked at signing)."""
    admitted = node.admission.readmit([(tx, None) for tx in txs])
    assert admitted == len(txs), f"{len(txs) - admitted} transactions refused"


# -- talking to a node process ---------------------------------------------------

def http_get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def post_json(conn, path, body):
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


class HeadPoller(threading.Thread):
    """GET /rpc/getHead every ``period`` seconds over one keep-alive connection.

    While ``recording``, each poll's (start time, latency) goes to
    ``samples``; always, ``seen`` keeps the wall time each height was first
    seen (when the answer arrived: an upper bound, within period + RTT).
    """

    def __init__(self, port, period=0.02):
        super().__init__(daemon=True)
        self.port = port
        self.period = period
        self.samples = []
        self.recording = False
        self.seen = {}
        self.height = -1
        self.polls = 0
        self.errors = 0
        self._halt = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        nxt = now()
        while not self._halt.is_set():
            t = now()
            body = None
            try:
                status, body = http_get(conn, "/rpc/getHead")
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            lat = now() - t
            if self.recording:
                self.samples.append((t, lat))
            if body is None or status != 200:
                self.errors += 1
            else:
                self.polls += 1
                wall = time.time()
                for x in range(self.height + 1, body["height"] + 1):
                    self.seen.setdefault(x, wall)
                self.height = max(self.height, body["height"])
            nxt += self.period
            delay = nxt - now()
            if delay > 0:
                self._halt.wait(delay)
            else:
                nxt = now()
        conn.close()

    def latencies_ms(self):
        return [s[1] * 1000 for s in self.samples]

    def wait_height(self, height, timeout=30):
        """The wall time ``height`` was first seen, waiting for it."""
        deadline = now() + timeout
        while now() < deadline:
            if self.height >= height:
                return self.seen[height]
            time.sleep(0.001)
        raise RuntimeError(f"follower did not reach height {height} in {timeout} s (at {self.height})")

    def stop(self):
        self._halt.set()
        self.join(5)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def session_cpu(sid):
    """(CPU seconds of process sid, CPU seconds of its whole session): node, forkserver, workers."""
    own = total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) != sid:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        total += cpu
        if int(name) == sid:
            own = cpu
    return own, total


# -- figures and table cells -------------------------------------------------------

def target(text, ok):
    return f"{text}: {'met' if ok else 'MISSED'}"


def fmt_rate(values, unit="tx/s"):
    m = statistics.median(values)
    spread = f" (runs: {', '.join(f'{v:,.0f}' for v in values)})" if len(values) > 1 else ""
    return f"{m:,.0f} {unit}{spread}"


def percentile(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    i = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[i]


def quantiles(values):
    return percentile(values, 50), percentile(values, 99), max(values)


def ms(v):
    return f"{v * 1000:,.1f} ms"


def latency_row(title, lat, note):
    """A table row for getHead latencies (ms) measured under load."""
    p50, p99, worst = quantiles(lat)
    return (title, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms", target("p99 <= 100 ms", p99 <= 100), note)


# -- the machine -------------------------------------------------------------------

def machine_info():
    model = "unknown cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def busy_others():
    """Processes not ours that used CPU recently (a hint that numbers are shared)."""
    mine = {os.getpid()}
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,comm"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    n = 0
    for line in out.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        pid, ppid, pcpu = int(parts[0]), int(parts[1]), float(parts[2])
        if pid not in mine and ppid not in mine and pcpu >= 20.0:
            n += 1
    return n
