#!/usr/bin/env python3
"""aitnode benchmark: one command, one Markdown table.

    python bench/run.py               # the full run (about 3-5 minutes)
    python bench/run.py --quick       # a smaller run (about a minute)
    python bench/run.py --only sendtx,block
    python bench/run.py --only sendtx --profile   # + where the node spends its time

Benchmarks (names for --only):

  sendtx   one-by-one POST /rpc/sendTx over real HTTP to a real node process
           (started as ``python -m twisted aitnode --config ...``), from a
           separate load process with several keep-alive connections;
           admitted tx/s (HTTP 200) and committed tx/s end to end.
  sendtxs  POST /rpc/sendTxs with JSON lists; committed tx/s from the first
           send until the last transaction is in a block.  Runs with
           [verifier] workers = 2 and (full run) workers = 0.
  gethead  GET /rpc/getHead every 20 ms while the sendtxs load runs:
           latency p50 / p99 / max (measured as part of sendtxs).
  block    build + apply + commit (Node.propose) of blocks of 1,000 and
           5,000 transfers, in process.
  state    Node.propose of 1,000-transfer blocks with 10,000 and with
           1,000,000 accounts in the state (--quick: 100,000).
  sigonce  ed25519 verify calls counted while every transaction is
           submitted, resubmitted (one by one and in batches) and included.

Transactions are signed before any clock starts.  Commit times come from
the node's own "block proposed ... txs=N" log lines, read as they are
written; the included state of a sample of transactions is checked over
RPC afterwards.  The machine note says what shared the CPU.
"""

import argparse
import asyncio
import contextlib
import cProfile
import http.client
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import cbor2  # noqa: E402
import hashlib  # noqa: E402
import nacl.signing  # noqa: E402

from aitnode import crypto  # noqa: E402
from aitnode import verifier as verifier_mod  # noqa: E402
from aitnode.chain import Chain, Genesis, make_genesis  # noqa: E402
from aitnode.crypto import KeyPair  # noqa: E402
from aitnode.encoding import canonical_unchecked  # noqa: E402
from aitnode.mempool import Mempool  # noqa: E402
from aitnode.node import Node  # noqa: E402
from aitnode.state import ACC_MOD, Store, leaf_hash  # noqa: E402
from aitnode.tx import sign_tx  # noqa: E402
from aitnode.verifier import InlineVerifier  # noqa: E402

CHAIN_ID = "ait-bench"
FEE = 1000
BALANCE = 10**12
PROFILE_DIR = None
now = time.perf_counter  # CLOCK_MONOTONIC: comparable across processes on Linux


# -- the machine ---------------------------------------------------------------

def machine_info():
    model = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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
        if pid in mine or ppid in mine:
            continue
        if pcpu >= 20.0:
            n += 1
    return n


# -- addresses and signing -----------------------------------------------------

class FastAddresses:
    """Valid bech32 ``ait1...`` addresses of random 20-byte values, quickly.

    The BIP-173 polymod is linear over GF(2) in its inputs, so the checksum
    of 32 data groups is a XOR of per-position table entries.  Checked
    against aitnode.crypto.check_address before use.
    """

    def __init__(self, seed=1):
        hrp = crypto._hrp_expand(crypto.HRP)
        length = 32 + 6
        base = crypto._polymod(hrp + [0] * length)
        self.base = base
        self.table = [
            [crypto._polymod(hrp + [0] * i + [v] + [0] * (length - 1 - i)) ^ base for v in range(32)]
            for i in range(32)
        ]
        self.rng = random.Random(seed)
        self.prefix = crypto.HRP + "1"

    def make(self):
        bits = self.rng.getrandbits(160)
        cs = crypto._CHARSET
        table = self.table
        pm = self.base
        chars = []
        for i in range(32):
            d = (bits >> (155 - 5 * i)) & 31
            pm ^= table[i][d]
            chars.append(cs[d])
        pm ^= 1
        for j in range(6):
            chars.append(cs[(pm >> (5 * (5 - j))) & 31])
        return self.prefix + "".join(chars)

    def many(self, n):
        out = [self.make() for _ in range(n)]
        for a in out[:200]:
            crypto.check_address(a)
        return out


def bench_key(i):
    """A fixed key per index (benchmark keys only, never real secrets)."""
    return KeyPair(hashlib.sha256(b"aitnode-bench-%d" % i).digest())


def _sign_sender(args):
    """Sign a sender's run of transfers; [(wire JSON bytes, txHash)] in nonce order."""
    seed, address, pubkey_hex, items = args
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
    return out


def presign(keys, per_sender, recipients, first_nonce=1, procs=2):
    """{sender index: [(wire bytes, hash)] for nonces first_nonce...}, signed in a process pool."""
    rng = random.Random(7)
    jobs = []
    for k in keys:
        items = [(first_nonce + j, rng.choice(recipients), 1 + rng.randrange(1000)) for j in range(per_sender)]
        jobs.append((k.seed, k.address, k.public_key.hex(), items))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        signed = pool.map(_sign_sender, jobs, chunksize=max(1, len(jobs) // (procs * 8)))
    # the node must compute the same hash: check one transaction with the node's own parser
    from aitnode.tx import parse_tx
    wire, h = signed[0][0]
    assert parse_tx(json.loads(wire), CHAIN_ID).hash == h, "bench signing disagrees with aitnode.tx"
    return signed


# -- a real node process -------------------------------------------------------

_LISTEN = re.compile(r"rpc listening on http://127\.0\.0\.1:(\d+)")
_BLOCK = re.compile(r"block proposed height=(\d+) txs=(\d+) latency_ms=([\d.]+)")


_PROFILED_NODE = """
import cProfile, sys, time
import twisted.application.twist._twist as T
T._exitWithSignal = lambda sig: None
prof = cProfile.Profile(time.process_time)  # CPU time: other jobs on the machine do not count
try:
    prof.runcall(T.Twist.main, ["twist"] + sys.argv[2:])
finally:
    prof.dump_stats(sys.argv[1])
"""


class NodeProcess:
    """``python -m twisted aitnode --config X`` in a temp dir, its log read as it comes."""

    def __init__(self, root, genesis_doc, authority, workers=2, interval=0.5, profile=None):
        self.dir = tempfile.mkdtemp(prefix="node-", dir=root)
        self.workers = workers
        self.profile = profile
        with open(os.path.join(self.dir, "genesis.json"), "w") as f:
            json.dump(genesis_doc, f)
        authority.save(os.path.join(self.dir, "authority.key.json"))
        with open(os.path.join(self.dir, "node.ini"), "w") as f:
            f.write(
                "[node]\nchain_id = %s\ndata_dir = data\ngenesis = genesis.json\nkey = authority.key.json\n"
                "[rpc]\nlisten = tcp:0:interface=127.0.0.1\n"
                "[proposer]\ninterval = %s\n"
                "[mempool]\nmax_size = 200000\nmax_per_sender = 1024\n"
                "[verifier]\nworkers = %d\n"
                "[log]\nformat = text\nlevel = info\n" % (CHAIN_ID, interval, workers)
            )
        self.blocks = []  # (arrival time, height, txs, latency_ms)
        self.cleanup = []
        self.port = None
        self.tail = []
        self._ready = threading.Event()

    def start(self, timeout=60):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        for name in list(env):
            if name.startswith("AITNODE_"):
                del env[name]
        args = ["--log-format=text", "aitnode", "--config", os.path.join(self.dir, "node.ini")]
        if self.profile:
            # twist re-raises SIGTERM after a clean stop, which would kill cProfile's dump: skip that
            cmd = [sys.executable, "-c", _PROFILED_NODE, self.profile] + args
        else:
            cmd = [sys.executable, "-m", "twisted"] + args
        self.proc = subprocess.Popen(
            cmd, cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("node did not start:\n" + "\n".join(self.tail[-20:]))
        return self

    def _read(self):
        for raw in self.proc.stdout:
            t = now()
            line = raw.decode("utf-8", "replace").rstrip()
            m = _BLOCK.search(line)
            if m:
                self.blocks.append((t, int(m.group(1)), int(m.group(2)), float(m.group(3))))
                continue
            self.tail.append(line)
            del self.tail[:-200]
            m = _LISTEN.search(line)
            if m:
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def committed_since(self, t0):
        return sum(b[2] for b in self.blocks if b[0] >= t0)

    def wait_committed(self, t0, count, timeout):
        """Arrival time of the block that brought the count since t0 to ``count``."""
        deadline = now() + timeout
        while now() < deadline:
            total = 0
            for b in list(self.blocks):
                if b[0] >= t0:
                    total += b[2]
                    if total >= count:
                        return b[0]
            if self.proc.poll() is not None:
                raise RuntimeError("node exited:\n" + "\n".join(self.tail[-20:]))
            time.sleep(0.01)
        raise RuntimeError(f"only {self.committed_since(t0)} of {count} transactions committed in {timeout}s")

    def stop(self):
        for fn in self.cleanup:
            fn()
        self.cleanup = []
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: node, forkserver, workers
            proc.wait()


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


def http_get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


# -- the load generator (a separate process) ---------------------------------

async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return status, b"".join(parts)
    return status, (await reader.readexactly(length) if length else b"")


async def _connection(port, requests, kind, stats):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for req in requests:
            status, body = await _read_response_after(writer, reader, req)
            stats["last"] = now()
            if kind == "one":
                if status == 200:
                    stats["ok"] += 1
                else:
                    stats["err"] += 1
                    if len(stats["samples"]) < 5:
                        stats["samples"].append(body[:300].decode("utf-8", "replace"))
            else:
                if status != 200:
                    stats["err"] += req.count(b'"sig"')
                    if len(stats["samples"]) < 5:
                        stats["samples"].append(body[:300].decode("utf-8", "replace"))
                    continue
                ok = body.count(b'"txHash"')
                stats["ok"] += ok
                bad = body.count(b'"error"')
                stats["err"] += bad
                if bad and len(stats["samples"]) < 5:
                    i = body.find(b'"error"')
                    stats["samples"].append(body[i:i + 300].decode("utf-8", "replace"))
    finally:
        writer.close()


async def _read_response_after(writer, reader, req):
    writer.write(req)
    return await _read_response(reader)


def _loader(port, per_conn, kind, pipe):
    """Child process: wait for 'go', send everything, report counts and times."""
    stats = {"ok": 0, "err": 0, "samples": [], "first": None, "last": None}

    async def main():
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        stats["first"] = now()
        await asyncio.gather(*(_connection(port, reqs, kind, stats) for reqs in per_conn))

    try:
        asyncio.run(main())
    except Exception as e:  # report, never hang the parent
        stats["samples"].append(f"loader failed: {e!r}")
    pipe.send(stats)


def http_request(path, body):
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def build_requests(signed, per_sender, first, count_per_sender, conns, batch=None):
    """Per connection: requests for its own senders, each sender's nonces in order.

    A connection sends its next request only after the answer to the last,
    so no sender's transactions overtake each other.
    """
    groups = [list(range(c, len(signed), conns)) for c in range(conns)]
    out, hashes = [], []
    for group in groups:
        wires = []
        for j in range(first, first + count_per_sender):
            for s in group:
                wire, h = signed[s][j]
                wires.append(wire)
                hashes.append(h)
        if batch is None:
            out.append([http_request(b"/rpc/sendTx", w) for w in wires])
        else:
            out.append([
                http_request(b"/rpc/sendTxs", b"[" + b",".join(wires[i:i + batch]) + b"]")
                for i in range(0, len(wires), batch)
            ])
    return out, hashes


class HeadPoller(threading.Thread):
    """GET /rpc/getHead every ``period`` seconds over one keep-alive connection."""

    def __init__(self, port, period=0.02):
        super().__init__(daemon=True)
        self.port = port
        self.period = period
        self.samples = []  # (time, latency seconds)
        self.errors = 0
        self.recording = False
        self._halt = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        nxt = now()
        while not self._halt.is_set():
            t = now()
            try:
                status, _ = http_get(conn, "/rpc/getHead")
                if status != 200:
                    self.errors += 1
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            lat = now() - t
            if self.recording:
                self.samples.append((t, lat))
            nxt += self.period
            delay = nxt - now()
            if delay > 0:
                self._halt.wait(delay)
            else:
                nxt = now()
        conn.close()

    def stop(self):
        self._halt.set()
        self.join(5)


def run_http_load(node, per_conn, kind, expect, poller=None, timeout=300):
    """One timed run: returns dict of rates and times."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_loader, args=(node.port, per_conn, kind, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("load generator did not start")
        t_go = now()
        cpu0 = session_cpu(node.proc.pid)
        if poller is not None:
            poller.recording = True
        parent.send("go")
        if not parent.poll(timeout):
            raise RuntimeError("load generator did not finish")
        stats = parent.recv()
        committed_at = node.wait_committed(t_go, stats["ok"], timeout) if stats["ok"] else None
        cpu1 = session_cpu(node.proc.pid)
        if poller is not None:
            poller.recording = False
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    t0 = stats["first"]
    blocks = [b for b in node.blocks if b[0] >= t_go]
    return {
        "ok": stats["ok"], "err": stats["err"], "samples": stats["samples"], "expect": expect,
        "admit_s": stats["last"] - t0, "commit_s": (committed_at - t0) if committed_at else None,
        "admit_rate": stats["ok"] / (stats["last"] - t0) if stats["ok"] else 0.0,
        "commit_rate": stats["ok"] / (committed_at - t0) if committed_at else 0.0,
        "blocks": blocks, "t0": t0, "t_end": committed_at or stats["last"],
        "cpu_node": cpu1[0] - cpu0[0], "cpu_all": cpu1[1] - cpu0[1],
    }


def cpu_note(results):
    """CPU the node spent per committed tx: robust to other jobs slowing the clock."""
    n = sum(r["ok"] for r in results)
    if not n:
        return ""
    node = sum(r["cpu_node"] for r in results) / n * 1e6
    allp = sum(r["cpu_all"] for r in results) / n * 1e6
    busy = sum(r["cpu_node"] for r in results) / sum((r["t_end"] - r["t0"]) for r in results)
    return (f"node CPU {node:,.0f} us/tx in the reactor process ({busy:.0%} of a core while running; "
            f"{allp:,.0f} us/tx with verify workers) -> the reactor alone caps at about {1e6 / node:,.0f} tx/s on a free core")


def check_included(port, hashes, senders, expect_nonce, sample=150):
    """Spot check over RPC: a sample of txs is included, sample senders' nonces moved."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rng = random.Random(3)
    bad = 0
    for h in rng.sample(hashes, min(sample, len(hashes))):
        status, out = http_get(conn, "/rpc/getTx/" + h)
        if status != 200 or out.get("status") != "included":
            bad += 1
    for k in rng.sample(senders, min(50, len(senders))):
        status, out = http_get(conn, "/rpc/getBalance/" + k.address)
        if status != 200 or out.get("nonce") != expect_nonce:
            bad += 1
    conn.close()
    return bad


N_WARM = 100


def http_genesis(n_senders):
    """(authority, senders, warm-up senders, genesis doc)."""
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    warm = [bench_key(1_000_000 + i) for i in range(N_WARM)]
    doc = make_genesis(CHAIN_ID, [authority], [(k.address, BALANCE) for k in senders + warm], {"faucet": True}, timestamp=1_700_000_000)
    return authority, senders, warm, doc


def warm_up(node, warm_signed, batch):
    """Untimed first calls (route compilation; the verifier pool starts its
    processes on the first batch): seconds spent, and the commit waited for."""
    wires = [run[0][0] for run in warm_signed]
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
    t = now()
    if batch:
        conn.request("POST", "/rpc/sendTxs", b"[" + b",".join(wires) + b"]", {"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        ok = body.count(b'"txHash"')
    else:
        ok = 0
        for w in wires:
            conn.request("POST", "/rpc/sendTx", w, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            ok += r.status == 200
    first = now() - t
    conn.close()
    try:
        node.wait_committed(t, ok, 30)
    except RuntimeError:
        if node.blocks:
            raise
        # no "block proposed ... txs=N" log lines (their format changed?): watch blocks over RPC instead
        node.watcher = BlockWatcher(node)
        node.watcher.start()
        node.cleanup.append(node.watcher.stop)
    return first


class BlockWatcher(threading.Thread):
    """Fallback commit clock: poll getHead, fetch each new block's tx list."""

    def __init__(self, node, period=0.05):
        super().__init__(daemon=True)
        self.node = node
        self.period = period
        self._halt = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=60)
        last = http_get(conn, "/rpc/getHead")[1]["height"]
        while not self._halt.wait(self.period):
            try:
                height = http_get(conn, "/rpc/getHead")[1]["height"]
                t = now()
                for h in range(last + 1, height + 1):
                    status, block = http_get(conn, f"/rpc/getBlock/{h}")
                    self.node.blocks.append((t, h, len(block["txs"]), float("nan")))
                last = height
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=60)
        conn.close()

    def stop(self):
        self._halt.set()
        self.join(5)


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


def block_note(results):
    blocks = [b for r in results for b in r["blocks"] if b[2]]
    if not blocks:
        return ""
    big = max(b[2] for b in blocks)
    lats = [b[3] for b in blocks if b[3] == b[3]]
    if not lats:
        return f"blocks under load: up to {big:,} txs (seen over RPC)"
    return (f"blocks under load: up to {big:,} txs, propose median {statistics.median(lats):.0f} ms, "
            f"max {max(lats):.0f} ms (node log)")


def new_profile():
    return cProfile.Profile(time.process_time)  # CPU time, not wall time


def profile_report(path, title, limit=22):
    if not path or not os.path.exists(path):
        return ""
    if PROFILE_DIR:
        shutil.copy(path, PROFILE_DIR)
    buf = io.StringIO()
    st = pstats.Stats(path, stream=buf)
    st.strip_dirs().sort_stats("tottime").print_stats(limit)
    buf.write("\n")
    st.sort_stats("cumulative").print_stats(limit)
    return f"\n### profile: {title}\n\n```\n{buf.getvalue().strip()}\n```\n"


# -- benchmark 1: sendTx one by one -------------------------------------------

def bench_sendtx(ctx):
    q = ctx.quick
    n_senders, per_run, runs, conns = (1000, 2, 1, 8) if q else (2000, 3, 3, 8)
    authority, senders, warm, doc = http_genesis(n_senders)
    signed = presign(senders, per_run * runs, [k.address for k in senders])
    warm_signed = presign(warm, 1, [k.address for k in senders])
    prof = os.path.join(ctx.tmp, "sendtx.prof") if ctx.profile else None
    node = NodeProcess(ctx.tmp, doc, authority, workers=2, profile=prof).start()
    ctx.cleanup.append(node.stop)
    warm_s = warm_up(node, warm_signed, batch=False)
    poller = HeadPoller(node.port)
    poller.start()
    results = []
    try:
        for r in range(runs):
            per_conn, hashes = build_requests(signed, per_run * runs, r * per_run, per_run, conns)
            res = run_http_load(node, per_conn, "one", len(hashes), poller)
            res["bad"] = check_included(node.port, hashes, senders, (r + 1) * per_run)
            results.append(res)
    finally:
        poller.stop()
        node.stop()
    ctx.profiles.append(profile_report(prof, "node process during sendTx one-by-one"))
    n = results[0]["expect"]
    errs = sum(r["err"] for r in results)
    bad = sum(r["bad"] for r in results)
    note = (f"{n:,} txs/run from {n_senders:,} senders, {conns} keep-alive conns from 1 asyncio process "
            f"sharing the {ctx.machine['nproc']} cores with the node; workers=2 (unused by sendTx: it verifies inline); "
            f"untimed warm-up of {N_WARM} sendTx took {warm_s * 1000:,.0f} ms")
    if errs or bad:
        note += f"; {errs} refused, {bad} spot checks failed: {results[0]['samples'][:1]}"
    if prof:
        note += "; NODE RUN UNDER cProfile (slower)"
    note += "; " + cpu_note(results)
    lat = [s[1] * 1000 for s in poller.samples]
    admitted = [r["admit_rate"] for r in results]
    committed = [r["commit_rate"] for r in results]
    rows = [
        ("sendTx one-by-one over HTTP: admitted", fmt_rate(admitted),
         target(">= 2,000 tx/s", statistics.median(admitted) >= 2000), note),
        ("sendTx one-by-one over HTTP: committed (end to end)", fmt_rate(committed),
         target(">= 2,000 tx/s", statistics.median(committed) >= 2000), block_note(results) + "; proposer interval 0.5 s"),
    ]
    if lat:
        p99 = percentile(lat, 99)
        rows.append(("getHead latency during sendTx load",
                     f"p50 {percentile(lat, 50):.1f} ms, p99 {p99:.1f} ms, max {max(lat):.1f} ms",
                     target("p99 <= 100 ms", p99 <= 100), f"{len(lat):,} polls every 20 ms"))
    return rows


# -- benchmarks 2 and 3: sendTxs batches, getHead under load -------------------

def bench_sendtxs(ctx):
    q = ctx.quick
    n_senders, per_run, runs, conns, batch = (1000, 10, 1, 4, 2000) if q else (2000, 10, 3, 4, 2000)
    workers_list = [2] if q else [2, 0]
    authority, senders, warm, doc = http_genesis(n_senders)
    signed = presign(senders, per_run * runs, [k.address for k in senders])
    warm_signed = presign(warm, 1, [k.address for k in senders])
    rows = []
    for workers in workers_list:
        prof = os.path.join(ctx.tmp, f"sendtxs-w{workers}.prof") if ctx.profile else None
        node = NodeProcess(ctx.tmp, doc, authority, workers=workers, profile=prof).start()
        ctx.cleanup.append(node.stop)
        warm_s = warm_up(node, warm_signed, batch=True)
        poller = HeadPoller(node.port)
        poller.start()
        results = []
        try:
            for r in range(runs):
                per_conn, hashes = build_requests(signed, per_run * runs, r * per_run, per_run, conns, batch)
                res = run_http_load(node, per_conn, "batch", len(hashes), poller)
                res["bad"] = check_included(node.port, hashes, senders, (r + 1) * per_run)
                results.append(res)
        finally:
            poller.stop()
            node.stop()
        ctx.profiles.append(profile_report(prof, f"node process during sendTxs batches (workers={workers})"))
        n = results[0]["expect"]
        errs = sum(r["err"] for r in results)
        bad = sum(r["bad"] for r in results)
        note = (f"{n:,} txs/run in lists of {batch:,} over {conns} conns, {n_senders:,} senders; [verifier] workers={workers}; "
                f"untimed warm-up: the first sendTxs of {N_WARM} took {warm_s * 1000:,.0f} ms")
        if errs or bad:
            note += f"; {errs} refused, {bad} spot checks failed: {results[0]['samples'][:1]}"
        if prof:
            note += "; NODE RUN UNDER cProfile (slower)"
        note += "; " + cpu_note(results)
        committed = [r["commit_rate"] for r in results]
        rows.append((f"sendTxs batches over HTTP, workers={workers}: committed",
                     fmt_rate(committed), target(">= 10,000 tx/s", statistics.median(committed) >= 10000),
                     note + "; admitted " + fmt_rate([r["admit_rate"] for r in results]) + "; " + block_note(results)))
        lat = [s[1] * 1000 for s in poller.samples]
        if lat:
            p99 = percentile(lat, 99)
            rows.append((f"getHead latency under sendTxs load, workers={workers}",
                         f"p50 {percentile(lat, 50):.1f} ms, p99 {p99:.1f} ms, max {max(lat):.1f} ms",
                         target("p99 <= 100 ms", p99 <= 100),
                         f"{len(lat):,} polls every 20 ms from the bench process (its own scheduling delay included)"))
    return rows


# -- in-process helpers --------------------------------------------------------

def inproc_node(tmp, doc, authority, verifier=None):
    store = Store(tempfile.mkdtemp(prefix="store-", dir=tmp), map_size=1 << 34)
    chain = Chain(store, Genesis(doc))
    node = Node(chain, Mempool(max_size=1_000_000, max_per_sender=1024), verifier or InlineVerifier(), key=authority)
    return node, store


def timed_propose(node):
    """Node.propose() with its build and commit parts timed.

    Returns ((total, build, commit) wall seconds, (total, commit) CPU seconds, block).
    CPU time leaves out waiting for the disk (fsync), and other jobs on the machine.
    """
    chain = node.chain
    parts = {}
    build, commit = chain.build_block, chain.commit
    cpu = time.process_time

    def tb(*a, **kw):
        t = now()
        try:
            return build(*a, **kw)
        finally:
            parts["build"] = now() - t

    def tc(*a, **kw):
        t, c = now(), cpu()
        try:
            return commit(*a, **kw)
        finally:
            parts["commit"] = now() - t
            parts["commit_cpu"] = cpu() - c

    chain.build_block, chain.commit = tb, tc
    try:
        t, c = now(), cpu()
        block = node.propose()
        total, total_cpu = now() - t, cpu() - c
    finally:
        del chain.build_block, chain.commit
    return (total, parts["build"], parts["commit"]), (total_cpu, parts["commit_cpu"]), block


def admit(node, txs):
    """Into the mempool through the node's admission rules (signatures checked at signing)."""
    for tx in txs:
        node._admit(tx)


def ms(v):
    return f"{v * 1000:,.1f} ms"


# -- benchmark 4: block build + apply + commit ---------------------------------

def bench_block(ctx):
    runs = 3 if ctx.quick else 5
    sizes = (1000, 5000)
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, max(sizes) + 1)]
    doc = make_genesis(CHAIN_ID, [authority], [(k.address, BALANCE) for k in senders], {"faucet": True}, timestamp=1_700_000_000)
    node, store = inproc_node(ctx.tmp, doc, authority)
    rng = random.Random(11)
    addrs = [k.address for k in senders]
    nonce = {k.address: 0 for k in senders}
    plan = []  # (size, [Transaction]) signed before timing
    for r in range(runs + (1 if ctx.profile else 0)):
        for size in sizes:
            txs = []
            for k in senders[:size]:
                nonce[k.address] += 1
                txs.append(sign_tx(k, CHAIN_ID, "TRANSFER", nonce[k.address], FEE, {"to": rng.choice(addrs), "amount": 1 + rng.randrange(1000)}))
            plan.append((size, txs))
    times = {s: [] for s in sizes}
    prof = new_profile() if ctx.profile else None
    try:
        for i, (size, txs) in enumerate(plan):
            admit(node, txs)
            extra = i >= runs * len(sizes)  # the profiled round is not timed
            if extra and size == max(sizes):
                prof.enable()
            wall, cpu, block = timed_propose(node)
            if extra:
                prof.disable()
            assert len(block["txs"]) == size, (len(block["txs"]), size)
            if not extra:
                times[size].append(wall + cpu)
    finally:
        store.close()
    if prof is not None:
        path = os.path.join(ctx.tmp, "block.prof")
        prof.dump_stats(path)
        ctx.profiles.append(profile_report(path, "Node.propose() of 5,000-transfer blocks, in process"))
    rows = []
    for size in sizes:
        t = times[size]
        total = statistics.median(x[0] for x in t)
        rows.append((
            f"block of {size:,} transfers: build + apply + commit",
            f"{ms(total)} median of {len(t)} ({size / total:,.0f} tx/s); CPU {ms(statistics.median(x[3] for x in t))}",
            "- (reported)",
            f"in process, 1 thread, {size:,} distinct senders; build {ms(statistics.median(x[1] for x in t))}, "
            f"commit {ms(statistics.median(x[2] for x in t))} (CPU {ms(statistics.median(x[4] for x in t))}; "
            f"the rest is waiting: fsync, or other jobs holding the CPU)",
        ))
    return rows


# -- benchmark 5: commit time vs state size ------------------------------------

def pad_state(store, genesis, addresses, balance=1000):
    """Add funded accounts to the state at genesis, through Store.commit_block.

    Rewrites block 0 (same header, same hash) with the extra entries, and
    the accumulator updated for each, as if the genesis had listed them.
    (Building a 1M-account genesis.json through Genesis() costs minutes of
    bech32 checks in Python; this is the same state, written directly.)
    """
    block = store.block_by_hash(genesis.hash)
    acc = store.accumulator()
    value = canonical_unchecked([balance, 0])
    changes = {}
    for a in sorted(addresses):
        changes[("acct", a)] = (None, value)
        acc += leaf_hash("acct", a, [balance, 0])
    store.commit_block(block, [], changes, acc % ACC_MOD)


def bench_state(ctx):
    runs = 3 if ctx.quick else 5
    big = 100_000 if ctx.quick else 1_000_000
    sizes = (10_000, big)
    n_senders, per_block = 1000, 1000
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    fast = FastAddresses(seed=5)
    doc = make_genesis(CHAIN_ID, [authority], [(k.address, BALANCE) for k in senders], {"faucet": True}, timestamp=1_700_000_000)
    results = {}
    prof_path = None
    for total_accounts in sizes:
        t_setup = now()
        node, store = inproc_node(ctx.tmp, doc, authority)
        try:
            pad = fast.many(total_accounts - n_senders - 1)
            pad_state(store, node.chain.genesis, pad)
            entries = store.count_entries()
            setup = now() - t_setup
            rng = random.Random(13)
            plan = []
            extra = 1 if (ctx.profile and total_accounts == big) else 0
            for r in range(runs + 1 + extra):  # the first block warms up, the extra one is profiled
                plan.append([
                    sign_tx(k, CHAIN_ID, "TRANSFER", r + 1, FEE, {"to": rng.choice(pad), "amount": 1 + rng.randrange(1000)})
                    for k in senders[:per_block]
                ])
            t = []
            prof = new_profile() if (ctx.profile and total_accounts == big) else None
            for i, txs in enumerate(plan):
                admit(node, txs)
                profiled = prof is not None and i == runs + 1
                if profiled:
                    prof.enable()
                wall, cpu, block = timed_propose(node)
                if profiled:
                    prof.disable()
                assert len(block["txs"]) == per_block
                if 0 < i <= runs:
                    t.append(wall + cpu)
            if prof is not None:
                prof_path = os.path.join(ctx.tmp, "state.prof")
                prof.dump_stats(prof_path)
            results[total_accounts] = (t, entries, setup)
        finally:
            store.close()
            shutil.rmtree(store.path, ignore_errors=True)
    if prof_path:
        ctx.profiles.append(profile_report(prof_path, f"Node.propose() of 1,000 transfers with {big:,} accounts"))
    rows = []
    med = {}
    for n in sizes:
        t, entries, setup = results[n]
        med[n] = [statistics.median(x[i] for x in t) for i in range(5)]
        rows.append((
            f"block of 1,000 transfers with {n:,} accounts: propose",
            f"{ms(med[n][0])} median of {len(t)}; commit part {ms(med[n][2])} (CPU {ms(med[n][4])})",
            "-",
            f"{entries:,} state entries, padded at genesis via Store.commit_block in {setup:.0f} s (setup, not timed); "
            f"recipients random existing accounts",
        ))
    small, large = sizes
    ratio = [med[large][i] / med[small][i] for i in range(5)]
    rows.append((
        f"block commit time ratio, {large:,} / {small:,} accounts",
        f"{ratio[0]:.2f}x propose (build+apply+commit); commit part {ratio[2]:.2f}x wall, {ratio[4]:.2f}x CPU; "
        f"propose CPU {ratio[3]:.2f}x",
        target("<= 1.5x", ratio[0] <= 1.5) + ("" if large == 1_000_000 else " (target is at 1M; --quick uses 100k)"),
        "the state root costs per touched entry; what grows with the state is LMDB: more distinct "
        "B-tree pages dirtied and fsynced per block, and deeper lookups",
    ))
    return rows


# -- benchmark 6: no signature checked twice -----------------------------------

class HeldVerifier:
    """Like a PoolVerifier: answers later, so two batches can be in flight at once."""

    def __init__(self):
        self.pending = []

    def verify_many(self, items):
        from twisted.internet import defer
        d = defer.Deferred()
        self.pending.append((d, items))
        return d

    def release(self):
        pending, self.pending = self.pending, []
        for d, items in pending:
            d.callback(verifier_mod.verify_chunk(items))


def bench_sigonce(ctx):
    from twisted.internet import defer

    from aitnode.errors import AitError

    n_senders, per_sender = 50, 4
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    doc = make_genesis(CHAIN_ID, [authority], [(k.address, BALANCE) for k in senders], {"faucet": True}, timestamp=1_700_000_000)
    calls = [0]
    real = crypto.verify

    def counting(pk, sig, msg):
        calls[0] += 1
        return real(pk, sig, msg)

    def wires(first, count):
        out = []
        for j in range(first, first + count):
            for k in senders:
                tx = sign_tx(k, CHAIN_ID, "TRANSFER", j, FEE, {"to": senders[0].address, "amount": 1})
                w = tx.to_wire()
                del w["chain_id"]
                out.append(w)
        return out

    def many(node, objs):
        box = []
        Deferred = defer.Deferred
        d = Deferred.fromCoroutine(node.submit_many(objs))
        d.addBoth(box.append)
        return d, box

    def submit_all(node, objs):
        for o in objs:
            try:
                node.submit(o)
            except AitError:
                pass

    steps = []
    crypto.verify, verifier_mod.verify = counting, counting
    try:
        # A: one by one, resubmitted while pending, again in a batch, included, then resubmitted again
        node, store = inproc_node(ctx.tmp, doc, authority)
        a = wires(1, per_sender)
        b = wires(1 + per_sender, per_sender)
        c0 = calls[0]
        submit_all(node, a)
        submit_all(node, a)  # duplicates while pending
        d, box = many(node, a)  # duplicates in a batch
        node.propose()
        submit_all(node, a)  # duplicates after inclusion
        many(node, a)
        steps.append(("sendTx x2, sendTxs, include, resend", len(a), calls[0] - c0))
        # B: a batch, the same batch again, a duplicate within one batch, included, resent
        c0 = calls[0]
        many(node, b)
        many(node, b)
        node.propose()
        many(node, b + b)
        submit_all(node, b)
        steps.append(("sendTxs x2, include, resend (one by one and as a batch)", len(b), calls[0] - c0))
        store.close()

        # C: one list holding each new transaction twice
        node, store = inproc_node(ctx.tmp, doc, authority)
        c = wires(1, per_sender)
        c0 = calls[0]
        many(node, c + c)
        steps.append(("one sendTxs list with every tx twice", len(c), calls[0] - c0))
        store.close()

        # D: two overlapping sendTxs in flight at once (pool verifier answering later)
        held = HeldVerifier()
        node, store = inproc_node(ctx.tmp, doc, authority, verifier=held)
        dd = wires(1, per_sender)
        c0 = calls[0]
        many(node, dd)
        many(node, dd)
        for o in dd[:len(dd) // 2]:  # and one-by-one sendTx of half of them meanwhile
            try:
                node.submit(o)
            except AitError:
                pass
        held.release()
        steps.append(("2 overlapping sendTxs in flight + sendTx meanwhile", len(dd), calls[0] - c0))
        store.close()
    finally:
        crypto.verify, verifier_mod.verify = real, real
    distinct = sum(s[1] for s in steps)
    checked = sum(s[2] for s in steps)
    detail = "; ".join(f"{name}: {n} distinct, {v} checks" for name, n, v in steps)
    ok = all(v == n for _, n, v in steps)
    return [(
        "signature checks per distinct transaction",
        f"{checked} checks for {distinct} distinct txs ({checked / distinct:.2f} per tx)",
        target("1.00 per tx", ok),
        "in process, crypto.verify counted; " + detail,
    )]


# -- main ------------------------------------------------------------------------

BENCHES = {
    "sendtx": bench_sendtx,
    "sendtxs": bench_sendtxs,
    "block": bench_block,
    "state": bench_state,
    "sigonce": bench_sigonce,
}
ALIASES = {"gethead": "sendtxs"}


class Ctx:
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    ap.add_argument("--only", default="", help="comma-separated: " + ", ".join(list(BENCHES) + list(ALIASES)))
    ap.add_argument("--profile", action="store_true", help="profile the node / propose and print the hot spots")
    ap.add_argument("--profile-dir", help="with --profile: also keep the .prof files here")
    args = ap.parse_args(argv)
    global PROFILE_DIR
    PROFILE_DIR = args.profile_dir
    if PROFILE_DIR:
        os.makedirs(PROFILE_DIR, exist_ok=True)
    names = list(BENCHES)
    if args.only:
        names = []
        for n in args.only.split(","):
            n = ALIASES.get(n.strip(), n.strip())
            if n not in BENCHES:
                ap.error(f"unknown benchmark {n!r}; choose from {', '.join(list(BENCHES) + list(ALIASES))}")
            if n not in names:
                names.append(n)
    ctx = Ctx()
    ctx.quick, ctx.profile = args.quick, args.profile
    ctx.machine = machine_info()
    ctx.cleanup, ctx.profiles = [], []
    ctx.tmp = tempfile.mkdtemp(prefix="aitnode-bench-")
    m = ctx.machine
    others = busy_others()
    print(f"# aitnode benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"- machine: {m['cpu']}, {m['nproc']} cores (nproc), Python {m['python']}, {m['platform']}")
    print(f"- load average at start: {loadavg()}; other busy processes (>=20% CPU): {others if others is not None else '?'}")
    print("- the node, its verify workers and the load generator share these cores; other jobs on the "
          "machine (e.g. test runs) make the figures lower and noisier\n", flush=True)
    rows = []
    started = now()
    try:
        for name in names:
            t = now()
            try:
                rows += BENCHES[name](ctx)
            except Exception as e:
                rows.append((name, f"FAILED: {e!r}"[:300], "", ""))
            print(f"<!-- {name}: {now() - t:.0f} s, load average {loadavg()} -->", file=sys.stderr, flush=True)
    finally:
        for fn in ctx.cleanup:
            with contextlib.suppress(Exception):
                fn()
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    print("| benchmark | result | target | machine note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    print(f"\nTotal {now() - started:.0f} s; load average at end: {loadavg()}.")
    for p in ctx.profiles:
        if p:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
