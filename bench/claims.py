"""claims: RECEIPT_CLAIMs through POST /rpc/submitReceipt, with twistd
aitcoordinator behind a proxy that delays every request to it."""

import asyncio
import contextlib
import hashlib
import http.client
import json
import multiprocessing
import os
import random
import tempfile
from types import SimpleNamespace

from aitnode.params import SPEC
from aitnode.receipts import CLAIM, sign_claim
from aitnode.tx import sign_tx

from bench.common import (
    CHAIN_ID, FEE, HeadPoller, bench_genesis, bench_key, http_get, latency_row, now, post_json, reap, session_cpu,
)
from bench.load import Load, http_request
from bench.node import BenchNode, Twistd


def _proxy_main(upstream_port, delay_ms, pipe):
    """Child process: a TCP proxy that holds every chunk going to the
    coordinator for delay_ms (a shared value) before passing it on."""

    async def pipe_plain(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
        finally:
            writer.close()

    async def pipe_delayed(reader, writer, loop):
        queue = asyncio.Queue()

        async def read():
            while True:
                data = await reader.read(65536)
                queue.put_nowait((loop.time(), data))
                if not data:
                    return

        task = asyncio.ensure_future(read())
        try:
            while True:
                t, data = await queue.get()
                wait = t + delay_ms.value / 1000.0 - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
        finally:
            task.cancel()
            writer.close()

    async def handle(creader, cwriter):
        loop = asyncio.get_running_loop()
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe_delayed(creader, uwriter, loop), pipe_plain(ureader, cwriter),
                             return_exceptions=True)

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pipe.send(server.sockets[0].getsockname()[1])
        try:
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until the parent says stop
        except EOFError:
            pass
        os._exit(0)  # no teardown: the open connections just close

    asyncio.run(main())


class DelayProxy:
    """The delaying proxy in a child process; ``delay_ms`` can change between runs."""

    def __init__(self, upstream_port):
        mp = multiprocessing.get_context("fork")
        self._delay = mp.Value("d", 0.0, lock=False)
        self.pipe, child = mp.Pipe()
        self.proc = mp.Process(target=_proxy_main, args=(upstream_port, self._delay, child), daemon=True)
        self.proc.start()
        if not self.pipe.poll(30):
            self.stop()
            raise RuntimeError("delay proxy did not start")
        self.port = self.pipe.recv()

    def set_delay(self, ms):
        self._delay.value = float(ms)

    def stop(self):
        with contextlib.suppress(Exception):
            self.pipe.send("stop")
        reap(self.proc, 5)


def _sign(total, per_client, price, units):
    """Signed before any clock: payments (client -> escrow), then one claim
    per payment, each from its own miner (nonce 1), job_1.., distinct
    receipts.  (genesis, payments, [(request, txHash, receipt id)])."""
    authority = bench_key(0)
    coordinator = bench_key(900_001)
    escrow = bench_key(900_002).address
    clients = [bench_key(800_000 + i) for i in range(-(-total // per_client))]
    doc = bench_genesis(authority, [k.address for k in clients], escrow=escrow,
                        coordinator={"address": coordinator.address, "public_key": coordinator.public_key.hex()})
    payments = [sign_tx(clients[i // per_client], CHAIN_ID, "TRANSFER", i % per_client + 1, FEE,
                        {"to": escrow, "amount": price}) for i in range(total)]
    claims = []
    base_fee, per_byte = SPEC["base_fee"][0], SPEC["fee_per_byte"][0]
    for i, pay in enumerate(payments):
        miner = bench_key(700_000 + i)
        payload = sign_claim(miner, CHAIN_ID, receipt_id=f"rcpt-bench-{i + 1}", job_id=f"job_{i + 1}",
                             client_addr=pay.sender, miner_addr=miner.address, compute_units=units, price=price,
                             output_hash="sha256:" + hashlib.sha256(b"out%d" % i).hexdigest(),
                             client_payment_tx=pay.hash)
        probe = sign_tx(miner, CHAIN_ID, CLAIM, 1, 0, payload)
        tx = sign_tx(miner, CHAIN_ID, CLAIM, 1, base_fee + per_byte * probe.payload_size + 100, payload)
        w = tx.to_wire()
        del w["chain_id"]
        claims.append((http_request(b"/rpc/submitReceipt", json.dumps(w, separators=(",", ":")).encode()),
                       tx.hash, payload["receipt_id"]))
    return authority, coordinator, doc, payments, claims


def _pay(node, conn, payments):
    """Untimed setup: every payment included; the seconds it took."""
    t = now()
    for i in range(0, len(payments), 1000):
        wires = []
        for tx in payments[i:i + 1000]:
            w = tx.to_wire()
            del w["chain_id"]
            wires.append(w)
        status, out = post_json(conn, "/rpc/sendTxs", json.dumps(wires).encode())
        bad = [x for x in out.get("results", []) if "error" in x]
        if status != 200 or bad:
            raise RuntimeError(f"payments refused: {status} {str(bad or out)[:300]}")
    node.wait_committed(t, len(payments), 120)
    return now() - t


def _round(node, coord, poller, batch, conns, retry_ms):
    """One run of claims: the loader's stats, the blocks, when the last claim
    was committed, and the CPU node and coordinator spent."""
    with Load(node.port, [c[0] for c in batch], "one", conns=conns, retry_ms=retry_ms) as load:
        poller.samples = []
        t = now()
        cpu0, cs0 = session_cpu(node.pid), session_cpu(coord.pid)
        poller.recording = True
        stats = load.go(600)
        done_at = node.wait_committed(t, stats["ok"], 120)
        poller.recording = False
        cpu1, cs1 = session_cpu(node.pid), session_cpu(coord.pid)
    secs = done_at - (stats["first"] or t)
    n = max(1, stats["ok"])
    return {"stats": stats, "blocks": node.blocks_since(t), "secs": secs,
            "rate": stats["ok"] / secs if secs > 0 else 0.0,
            "node_us": (cpu1[0] - cpu0[0]) / n * 1e6, "node_busy": (cpu1[0] - cpu0[0]) / secs,
            "coord_us": (cs1[0] - cs0[0]) / n * 1e6}


def bench_claims(ctx):
    delays = [0, 20, 100]
    n_claims = 300 if ctx.quick else 1000
    # conns = max_in_flight: no call is refused for the limit; then one more
    # run with twice as many connections as the limit, to show what it does
    cfg = SimpleNamespace(conns=32, max_in_flight=32, interval=0.2, retry_ms=20)
    runs = [(d, cfg.conns) for d in delays] + [(100, 64)]
    n_warm = 32
    total = n_warm + n_claims * len(runs)
    authority, coordinator, doc, payments, claims = _sign(total, 500, price=5000, units=10)

    cdir = tempfile.mkdtemp(prefix="coordinator-", dir=ctx.tmp)
    coordinator.save(os.path.join(cdir, "coordinator.key.json"))
    coord = Twistd(cdir, ["aitcoordinator", "--listen", "tcp:0:interface=127.0.0.1",
                          "--key", os.path.join(cdir, "coordinator.key.json"), "--chain-id", CHAIN_ID],
                   wait_for=("coordinator",))
    ctx.cleanup.append(coord.stop)
    coord.start()
    proxy = DelayProxy(coord.ports["coordinator"])
    ctx.cleanup.append(proxy.stop)
    cfg.prof = ctx.profile_path("claims-node")
    node = BenchNode(ctx.tmp, "claims-node", doc, key=authority, profile=cfg.prof, sections={
        "proposer": {"interval": str(cfg.interval)},
        "coordinator": {"url": f"http://127.0.0.1:{proxy.port}", "allow": "127.0.0.1", "timeout": "10",
                        "max_in_flight": str(cfg.max_in_flight)},
    })
    ctx.cleanup.append(node.stop)
    node.start()
    rows = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
        setup_s = _pay(node, conn, payments)
        # a first untimed round of n_warm claims: routes, attestor pool and proxy connections warm
        plan = [(None, cfg.conns, claims[:n_warm])] + [
            (d, c, claims[n_warm + i * n_claims:n_warm + (i + 1) * n_claims]) for i, (d, c) in enumerate(runs)]
        poller = HeadPoller(node.port)
        poller.start()
        try:
            for delay_ms, n_conns, batch in plan:
                proxy.set_delay(delay_ms or 0)
                r = _round(node, coord, poller, batch, n_conns, cfg.retry_ms)
                if delay_ms is not None:  # not the warm-up round
                    rows += _rows(r, conn, batch, delay_ms, n_conns, cfg, poller.latencies_ms())
        finally:
            poller.stop()
        conn.close()
        errors = node.errors() + coord.errors()
        if errors:
            rows.append(("claims: node/coordinator log errors", str(len(errors)), "", errors[0][:300]))
        rows[0] = rows[0][:3] + (rows[0][3] + f"; setup (untimed): {total:,} escrow payments included in {setup_s:.1f} s",)
    finally:
        node.stop()
        proxy.stop()
        coord.stop()
    ctx.add_profile(cfg.prof, "node process during receipt claims (all three delays)")
    return rows


def _rows(r, conn, batch, delay_ms, n_conns, cfg, lat):
    """The table rows for one run of claims."""
    stats, blocks = r["stats"], r["blocks"]
    # spot check: receipts included
    rng = random.Random(delay_ms)
    missing = 0
    for _, h, rid in rng.sample(batch, min(40, len(batch))):
        status, out = http_get(conn, f"/rpc/getReceipt/{rid}")
        if status != 200 or out.get("status") != "included" or out["claim"]["payload"]["receipt_id"] != rid:
            missing += 1
    gaps = [(b2.time - b1.time) * 1000 for b1, b2 in zip(blocks, blocks[1:])]
    note = (f"{stats['ok']:,} of {len(batch):,} claims committed over {n_conns} keep-alive connections "
            f"(POST /rpc/submitReceipt, 1 asyncio process), distinct miners (nonce 1), job_N and payments; "
            f"coordinator = twistd aitcoordinator behind a proxy adding {delay_ms:.0f} ms before each request "
            f"reaches it; [coordinator] max_in_flight = {cfg.max_in_flight}: {stats['busy']:,} answers 429 "
            f"coordinator_busy (each retried after {cfg.retry_ms:.0f} ms)")
    if stats["err"]:
        note += f"; {stats['err']} other refusals {stats['codes']}: {stats['samples'][:1]}"
    if missing:
        note += f"; {missing} of 40 sampled receipts NOT included"
    note += (f"; node CPU {r['node_us']:,.0f} us/claim ({r['node_busy']:.0%} of a core), coordinator "
             f"{r['coord_us']:,.0f} us/claim; {len(blocks)} blocks, gaps max {max(gaps) if gaps else 0:.0f} ms "
             f"(interval {cfg.interval * 1000:.0f} ms)")
    if cfg.prof:
        note += "; NODE RUN UNDER cProfile (slower)"
    label = f"attestation +{delay_ms:.0f} ms" + (f", {n_conns} connections" if n_conns != cfg.conns else "")
    rows = [(f"receipt claims committed, {label}", f"{r['rate']:,.0f} claims/s ({r['secs']:.2f} s)", "- (reported)", note)]
    if lat:
        rows.append(latency_row(f"getHead latency during claims, {label}", lat,
                                f"{len(lat):,} polls every 20 ms while the claims ran"))
    return rows
