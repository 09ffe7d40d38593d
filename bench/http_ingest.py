"""sendtx, sendtxs and gethead: pre-signed transfers over real HTTP to a real
node process, getHead polled meanwhile."""

import http.client
import random
import statistics
import threading
from types import SimpleNamespace

from bench.common import (
    Block, HeadPoller, bench_genesis, bench_key, fmt_rate, http_get, latency_row, now, presign, session_cpu, target,
)
from bench.load import Load, build_requests
from bench.node import BenchNode

N_WARM = 100


def _signed(n_senders, per_sender):
    """Keys, genesis and every transfer, signed before any clock starts."""
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    warm = [bench_key(1_000_000 + i) for i in range(N_WARM)]
    doc = bench_genesis(authority, [k.address for k in senders + warm])
    addrs = [k.address for k in senders]
    return SimpleNamespace(authority=authority, senders=senders, doc=doc, n_senders=n_senders,
                           signed=presign(senders, per_sender, addrs), warm=presign(warm, 1, addrs))


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
                    self.node.blocks.append(Block(t, h, len(block["txs"]), float("nan"), float("nan")))
                last = height
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=60)
        conn.close()

    def stop(self):
        self._halt.set()
        self.join(5)


def warm_up(node, warm_signed, batch):
    """Untimed first calls (route compilation; the verifier pool starts its
    processes on the first batch): seconds spent, and the commit waited for."""
    wires = [run[0][0] for run in warm_signed]
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
    t = now()
    if batch:
        conn.request("POST", "/rpc/sendTxs", b"[" + b",".join(wires) + b"]", {"Content-Type": "application/json"})
        ok = conn.getresponse().read().count(b'"txHash"')
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
        # no block_proposed log events (their format changed?): watch blocks over RPC instead
        watcher = BlockWatcher(node)
        watcher.start()
        node.cleanup.append(watcher.stop)
    return first


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


def run_http_load(node, per_conn, kind, poller, timeout=300):
    """One timed run: rates, times and the node's CPU."""
    with Load(node.port, per_conn, kind) as load:
        t_go = now()
        cpu0 = session_cpu(node.pid)
        poller.recording = True
        stats = load.go(timeout)
        committed_at = node.wait_committed(t_go, stats["ok"], timeout) if stats["ok"] else None
        cpu1 = session_cpu(node.pid)
        poller.recording = False
    t0 = stats["first"]
    return {
        "ok": stats["ok"], "err": stats["err"], "samples": stats["samples"],
        "admit_rate": stats["ok"] / (stats["last"] - t0) if stats["ok"] else 0.0,
        "commit_rate": stats["ok"] / (committed_at - t0) if committed_at else 0.0,
        "blocks": node.blocks_since(t_go), "t0": t0, "t_end": committed_at or stats["last"],
        "cpu_node": cpu1[0] - cpu0[0], "cpu_all": cpu1[1] - cpu0[1],
    }


def _node_runs(ctx, s, workers, per_run, runs, conns, batch, title):
    """A node with [verifier] workers = ``workers``, warmed up, then ``runs``
    timed loads; (results, getHead latencies in ms, warm-up seconds, what
    the note says about them)."""
    prof = ctx.profile_path(f"{'sendtxs' if batch else 'sendtx'}-w{workers}")
    node = BenchNode(ctx.tmp, "ingest", s.doc, key=s.authority, profile=prof,
                     sections={"proposer": {"interval": "0.5"}, "verifier": {"workers": str(workers)}})
    ctx.cleanup.append(node.stop)
    node.start()
    warm_s = warm_up(node, s.warm, batch)
    poller = HeadPoller(node.port)
    poller.start()
    results = []
    try:
        for r in range(runs):
            per_conn, hashes = build_requests(s.signed, r * per_run, per_run, conns, batch)
            res = run_http_load(node, per_conn, "batch" if batch else "one", poller)
            res["expect"] = len(hashes)
            res["bad"] = check_included(node.port, hashes, s.senders, (r + 1) * per_run)
            results.append(res)
    finally:
        poller.stop()
        node.stop()
    ctx.add_profile(prof, f"node process during {title} (workers={workers})")
    note = ""
    errs, bad = sum(r["err"] for r in results), sum(r["bad"] for r in results)
    if errs or bad:
        note += f"; {errs} refused, {bad} spot checks failed: {results[0]['samples'][:1]}"
    if prof:
        note += "; NODE RUN UNDER cProfile (slower)"
    return results, poller.latencies_ms(), warm_s, note + "; " + cpu_note(results)


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


def block_note(results):
    blocks = [b for r in results for b in r["blocks"] if b.txs]
    if not blocks:
        return ""
    big = max(b.txs for b in blocks)
    lats = [b.latency_ms for b in blocks if b.latency_ms == b.latency_ms]
    if not lats:
        return f"blocks under load: up to {big:,} txs (seen over RPC)"
    return (f"blocks under load: up to {big:,} txs, propose median {statistics.median(lats):.0f} ms, "
            f"max {max(lats):.0f} ms (node log)")


def bench_sendtx(ctx):
    n_senders, per_run, runs, conns = (1000, 2, 1, 8) if ctx.quick else (2000, 3, 3, 8)
    s = _signed(n_senders, per_run * runs)
    results, lat, warm_s, more = _node_runs(ctx, s, 2, per_run, runs, conns, None, "sendTx one-by-one")
    note = (f"{results[0]['expect']:,} txs/run from {n_senders:,} senders, {conns} keep-alive conns from 1 asyncio "
            f"process sharing the {ctx.machine['nproc']} cores with the node; workers=2 (unused by sendTx: it verifies "
            f"inline); untimed warm-up of {N_WARM} sendTx took {warm_s * 1000:,.0f} ms" + more)
    admitted = [r["admit_rate"] for r in results]
    committed = [r["commit_rate"] for r in results]
    rows = [
        ("sendTx one-by-one over HTTP: admitted", fmt_rate(admitted),
         target(">= 2,000 tx/s", statistics.median(admitted) >= 2000), note),
        ("sendTx one-by-one over HTTP: committed (end to end)", fmt_rate(committed),
         target(">= 2,000 tx/s", statistics.median(committed) >= 2000), block_note(results) + "; proposer interval 0.5 s"),
    ]
    if lat:
        rows.append(latency_row("getHead latency during sendTx load", lat, f"{len(lat):,} polls every 20 ms"))
    return rows


def bench_sendtxs(ctx):
    n_senders, per_run, runs, conns, batch = (1000, 10, 1, 4, 2000) if ctx.quick else (2000, 10, 3, 4, 2000)
    s = _signed(n_senders, per_run * runs)
    rows = []
    for workers in [2] if ctx.quick else [2, 0]:
        results, lat, warm_s, more = _node_runs(ctx, s, workers, per_run, runs, conns, batch, "sendTxs batches")
        note = (f"{results[0]['expect']:,} txs/run in lists of {batch:,} over {conns} conns, {n_senders:,} senders; "
                f"[verifier] workers={workers}; untimed warm-up: the first sendTxs of {N_WARM} took "
                f"{warm_s * 1000:,.0f} ms" + more)
        committed = [r["commit_rate"] for r in results]
        rows.append((f"sendTxs batches over HTTP, workers={workers}: committed",
                     fmt_rate(committed), target(">= 10,000 tx/s", statistics.median(committed) >= 10000),
                     note + "; admitted " + fmt_rate([r["admit_rate"] for r in results]) + "; " + block_note(results)))
        if lat:
            rows.append(latency_row(f"getHead latency under sendTxs load, workers={workers}", lat,
                                    f"{len(lat):,} polls every 20 ms from the bench process (its own scheduling "
                                    f"delay included)"))
    return rows
