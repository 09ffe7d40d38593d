"""relay and catchup: two node processes peered over p2p on loopback."""

import http.client
import re
import shutil
import statistics
import time

from aitnode.p2p import encode as p2p_encode
from aitnode.tx import parse_tx

from bench.common import (
    CHAIN_ID, HeadPoller, admit, bench_genesis, bench_key, http_get, inprocess_node, no_fsync, now, percentile,
    post_json, presign, quantiles, session_cpu, target,
)
from bench.node import BenchNode


# -- relay -------------------------------------------------------------------------

def _relay_rounds(a, f, signed, rounds, n_txs):
    """Per round, right after an empty block reached the follower, n_txs
    transfers in one sendTxs; what each round measured (round 0 untimed)."""
    poller = HeadPoller(f.port, period=0.002)
    poller.start()
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
    mconn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
    m = {"relays": [], "polled": [], "import_ms": [], "sizes": [], "admit": [], "gossip": []}
    try:
        for r in range(rounds + 1):
            # the follower is level with the authority, and a (empty) block was
            # just proposed: the whole batch has most of an interval to arrive
            poller.wait_height(a.head(conn), timeout=30)
            _, blk = a.wait_block(len(a.blocks), timeout=30)
            poller.wait_height(blk.height, timeout=30)
            if r == 1:
                m["cpu0"] = (session_cpu(a.pid), session_cpu(f.pid), now())
            index = len(a.blocks)
            body = b"[" + b",".join(signed[s][r][0] for s in range(n_txs)) + b"]"
            t = now()
            status, out = post_json(conn, "/rpc/sendTxs", body)
            m["admit"].append(now() - t)
            ok = sum(1 for x in out["results"] if "txHash" in x) if status == 200 else 0
            if ok != n_txs:
                raise RuntimeError(f"sendTxs admitted {ok} of {n_txs}: {str(out)[:300]}")
            # until the block: watch the gossiped transactions fill the follower's mempool
            got = None
            while len(a.blocks) == index and got is None:
                mconn.request("GET", "/rpc/metrics")
                size = re.search(rb"^aitnode_mempool_size (\S+)", mconn.getresponse().read(), re.M)
                if size and float(size.group(1)) >= n_txs:
                    got = now() - t
                else:
                    time.sleep(0.01)
            _, b = a.wait_block(index, timeout=30, with_txs=True)
            t_seen = poller.wait_height(b.height, timeout=30)
            if r == 0:
                continue  # warm-up
            deadline = now() + 5
            while b.height not in f.imported and now() < deadline:
                time.sleep(0.001)
            m["gossip"].append(got)
            m["polled"].append(t_seen - b.time)
            imp = f.imported.get(b.height)
            if imp is not None:
                m["relays"].append(imp[0] - b.time)
                m["import_ms"].append(imp[2])
            m["sizes"].append(b.txs)
        m["cpu1"] = (session_cpu(a.pid), session_cpu(f.pid), now())
        m["empty"] = [poller.seen[b.height] - b.time for b in a.blocks
                      if not b.txs and b.height in poller.seen and b.height > 1]
    finally:
        conn.close()
        mconn.close()
        poller.stop()
    m["polls"] = poller.polls
    return m


def _import_costs(ctx, data_dir, doc, authority, n_txs):
    """In process, on the authority's chain after the run: per n_txs-tx block,
    the follower's parse, verify_block and commit (into a new store), and
    the authority's block_entry + CBOR encode; medians in ms."""
    parts = {"entry": [], "parse": [], "verify": [], "commit": []}
    source, astore = inprocess_node(doc, authority, data_dir)
    try:
        node, fstore = inprocess_node(doc, authority, ctx.store_dir())
        try:
            for h in range(1, astore.head()[0] + 1):
                t0 = now()
                entry = source.chain.block_entry(h)
                p2p_encode("block", entry)
                t1 = now()
                txs = [parse_tx(w, CHAIN_ID) for w in entry["txs"]]
                t2 = now()
                checked, records, view = node.chain.verify_block(entry["block"], txs)
                t3 = now()
                node.chain.commit(checked, records, view)
                t4 = now()
                if len(txs) == n_txs:
                    for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        parts[k].append(v)
        finally:
            fstore.close()
    finally:
        astore.close()
    return {k: statistics.median(v) * 1000 if v else float("nan") for k, v in parts.items()}


def bench_relay(ctx):
    rounds = 5 if ctx.quick else 20
    n_txs, interval = 1000, 1.0
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_txs + 1)]
    doc = bench_genesis(authority, [k.address for k in senders])
    signed = presign(senders, rounds + 1, [k.address for k in senders])  # + 1 warm-up round
    prof = ctx.profile_path("relay-follower")
    a = BenchNode(ctx.tmp, "relay-authority", doc, key=authority, p2p=True,
                  sections={"proposer": {"interval": str(interval)}})
    ctx.cleanup.append(a.stop)
    a.start()
    f = BenchNode(ctx.tmp, "relay-follower", doc, peers=[a.p2p_url], profile=prof)
    ctx.cleanup.append(f.stop)
    f.start()
    f.wait_event("peer_joined")
    try:
        m = _relay_rounds(a, f, signed, rounds, n_txs)
    finally:
        f.stop()
        a.stop()
    ctx.add_profile(prof, "follower process while it imports relayed 1,000-transfer blocks")
    errors = a.errors() + f.errors()
    med = _import_costs(ctx, a.data_dir, doc, authority, n_txs)
    # the follower's block_imported log time when it logs one (aitnode >= b334ef4), else the poll
    relays, polled, sizes = m["relays"], m["polled"], m["sizes"]
    source = "block_imported" if len(relays) == len(polled) else "getHead poll"
    if source != "block_imported":
        relays = polled
    p50, p99, worst = quantiles([x * 1000 for x in relays])
    pp50, pp99, _ = quantiles([x * 1000 for x in polled])
    short = sum(1 for n in sizes if n != n_txs)
    sizes_txt = f"{n_txs:,}" if not short else f"{min(sizes):,}-{max(sizes):,} ({short} NOT of {n_txs:,})"
    had = [g for g in m["gossip"] if g is not None]
    gossip_note = (f"before the block in {len(had)} of {len(m['gossip'])} rounds, median "
                   f"{statistics.median(had) * 1000:,.0f} ms after sendTxs was sent" if had else "before the block in NO round")
    cpu0, cpu1 = m["cpu0"], m["cpu1"]
    span = cpu1[2] - cpu0[2]
    note = (f"authority + follower (twistd, JSON logs, [verifier] workers=2 each) peered over p2p on loopback; "
            f"{len(relays)} blocks of {sizes_txt} transfers (1 untimed warm-up block), proposer interval "
            f"{interval:.0f} s, each batch sent by one sendTxs ({statistics.median(m['admit']) * 1000:,.0f} ms median) right "
            f"after an empty block reached the follower; the txs reach the follower by gossip first, so its import "
            f"checks no signature (all {n_txs:,} in its mempool {gossip_note}). From the authority's block_proposed "
            f"log time to the follower's {source} log time (both wall clock, ms)"
            + (f", of which the follower's own import_block (its latency_ms: verify_block + commit + after-commit, "
               f"which re-broadcasts the block) median {statistics.median(m['import_ms']):.0f} ms" if m["import_ms"] else "")
            + f"; cross-check, the follower's getHead polled every 2 ms first shows the height after p50 {pp50:.1f} ms, "
            f"p99 {pp99:.1f} ms; empty blocks in between: p50 "
            f"{percentile([x * 1000 for x in m['empty']], 50):.1f} ms. In process, per {n_txs:,}-tx block: follower parse "
            f"{med['parse']:.0f} ms + verify_block {med['verify']:.0f} ms + commit {med['commit']:.0f} ms; authority "
            f"block_entry + CBOR encode {med['entry']:.0f} ms (before its log line, not in the figure). "
            f"CPU while relaying: authority {(cpu1[0][1] - cpu0[0][1]) / span:.0%}, follower "
            f"{(cpu1[1][1] - cpu0[1][1]) / span:.0%} of a core; follower polled {m['polls']:,} times")
    if errors:
        note += f"; ERRORS in the node logs: {errors[0][:200]}"
    if prof:
        note += "; FOLLOWER RUN UNDER cProfile (slower)"
    return [(f"block relay, {n_txs:,}-transfer blocks, authority -> follower",
             f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms", target("p50 < 50 ms", p50 < 50), note)]


# -- catchup -------------------------------------------------------------------------

def build_chain(data_dir, doc, authority, txs, per_block):
    """Commit blocks of per_block transactions (in order) straight into data_dir.

    LMDB is opened without fsync while building (one sync at the end): this
    is setup, the follower under test syncs as configured.
    """
    with no_fsync():
        node, store = inprocess_node(doc, authority, data_dir)
    try:
        for i in range(0, len(txs), per_block):
            part = txs[i:i + per_block]
            admit(node, part)
            block = node.pipeline.propose()
            assert len(block["txs"]) == len(part), (len(block["txs"]), len(part))
        store.env.sync(True)
        return store.head()[0]
    finally:
        store.close()


def _watch_sync(f, height, t0):
    """Poll the follower's head every 10 ms until it reaches ``height``.

    A stretch of >= 1 s without a new best height is a stall, the head
    going down a rollback; 60 s without progress ends the watch."""
    w = {"stalls": [], "stalled": 0.0, "stuck": None, "first_bad": None}
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=60)
    best, last_t, h_prev = -1, time.time(), -1
    while True:
        h = f.head(conn)
        t = time.time()
        if h >= height:
            break
        if h < h_prev and w["first_bad"] is None:
            w["first_bad"] = (t - t0, best)
        h_prev = h
        if h > best:
            if t - last_t >= 1.0 and best >= 0:
                w["stalls"].append((best, t - last_t))
                w["stalled"] += t - last_t
                if w["first_bad"] is None:
                    w["first_bad"] = (last_t - t0, best)
            best, last_t = h, t
        elif t - last_t > 60:
            w["stuck"] = best
            break
        f.check_alive()
        time.sleep(0.01)
    w["t_end"] = t
    status, blk = http_get(conn, f"/rpc/getBlock/{height}")
    w["hash"] = blk.get("hash") if status == 200 else None
    conn.close()
    return w


def _catchup_note(r, height, per_block, n_txs, build_s, sign_s, workers, want, other):
    note = (f"{height:,} blocks x {per_block} transfers = {n_txs:,} txs, built in process into the "
            f"authority's data_dir in {build_s:.0f} s (+ {sign_s:.0f} s signing, shared; setup, untimed); "
            f"follower (empty data_dir, [verifier] workers={workers}) from its peer_joined log time until its "
            f"getHead shows height {height:,}: {r['secs']:.1f} s; follower CPU {r['cpu']:,.0f} us/tx in "
            f"the reactor process ({r['busy']:.0%} of a core), {r['cpu_all']:,.0f} us/tx with its verify "
            f"workers; the authority serving get_blocks: {r['auth']:,.0f} us/tx ({r['auth_busy']:.0%} of a core); "
            f"block {height:,} hash "
            + ("matches" if r["hash"] == want else "DIFFERS" if r["hash"] else "NOT FOUND right after (rolled back again?)"))
    if r["stalls"]:
        note += (f"; sync STALLED {len(r['stalls'])} time(s) for >= 1 s ({r['stalled']:.1f} s in all, at heights "
                 f"{', '.join(f'{h:,}' for h, _ in r['stalls'][:5])})")
    if r["reorgs"]:
        back = [ev.get("height") for ev in r["reorgs"]]
        note += (f"; the follower ROLLED BACK {len(r['reorgs'])} time(s) on a linear chain (reorg log events, "
                 f"to heights {', '.join(f'{h:,}' for h in back[:6] if h is not None)}...)")
    if r["penalties"]:
        note += f"; {r['penalties']} peer_penalized events on the follower"
    if r["first_bad"] is not None:
        t_bad, h_bad = r["first_bad"]
        if t_bad > 0 and h_bad > 0:
            note += (f"; before the first stall/rollback ({t_bad:.0f} s in, at height {h_bad:,}): "
                     f"{n_txs * h_bad // height / t_bad:,.0f} tx/s, {h_bad / t_bad:,.0f} blocks/s")
    if r["stuck"] is not None:
        note += f"; GAVE UP: no progress for 60 s at height {r['stuck']:,} (rates are up to there)"
    if workers == 2 and other is not None:
        note += f"; workers=2 vs 0: {r['tps'] / other['tps']:.2f}x"
    if workers == 2 and per_block < 64:
        note += ("; the pool is idle here: sync verifies block by block, and PoolVerifier.verify_many "
                 "checks batches under 64 items inline")
    if r["errors"]:
        note += f"; ERRORS in the follower log: {r['errors'][0][:200]}"
    return note


def _follow(ctx, a, doc, height, n_txs, per_block, workers):
    """A follower with an empty data_dir syncing from ``a``: its figures."""
    prof = ctx.profile_path(f"catchup-{per_block}-w{workers}")
    f = BenchNode(ctx.tmp, "catchup-follower", doc, peers=[a.p2p_url], profile=prof,
                  sections={"verifier": {"workers": str(workers)}})
    ctx.cleanup.append(f.stop)
    f.start()
    try:
        t0 = f.wait_event("peer_joined", timeout=60)
        cpu0, acpu0 = session_cpu(f.pid), session_cpu(a.pid)
        r = _watch_sync(f, height, t0)
        cpu1, acpu1 = session_cpu(f.pid), session_cpu(a.pid)
    finally:
        f.stop()
        shutil.rmtree(f.dir, ignore_errors=True)
    ctx.add_profile(prof, f"follower catching up {height:,} blocks of {per_block} transfers (workers={workers})")
    secs = r["t_end"] - t0
    done = height if r["stuck"] is None else r["stuck"]
    n_done = max(1, n_txs * done // height)
    r.update(secs=secs, bps=done / secs, tps=n_done / secs, errors=f.errors(), profiled=bool(prof),
             cpu=(cpu1[0] - cpu0[0]) / n_done * 1e6, cpu_all=(cpu1[1] - cpu0[1]) / n_done * 1e6,
             busy=(cpu1[0] - cpu0[0]) / secs, auth=(acpu1[1] - acpu0[1]) / n_done * 1e6,
             auth_busy=(acpu1[1] - acpu0[1]) / secs, reorgs=[ev for _, n, ev in f.events if n == "reorg"],
             penalties=sum(1 for _, n, _ in f.events if n == "peer_penalized"))
    return r


def bench_catchup(ctx):
    # (blocks, transfers per block, [verifier] workers settings): the issue's
    # 10,000 blocks, and fewer, larger blocks (>= 64 txs, the size at which the
    # verifier pool is used).  The full run leaves out workers=0 for the
    # 10,000 small blocks (the quick run compares both).
    shapes = [(1000, 10, [2, 0]), (100, 100, [2, 0])] if ctx.quick else [(10_000, 10, [2]), (1000, 100, [2, 0])]
    n_senders = 1000
    total = max(b * t for b, t, _ in shapes)
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    doc = bench_genesis(authority, [k.address for k in senders])
    t = now()
    per_sender = presign(senders, -(-total // n_senders), [k.address for k in senders], as_tx=True)
    ordered = [per_sender[s][j] for j in range(len(per_sender[0])) for s in range(n_senders)][:total]
    sign_s = now() - t
    rows = []
    for n_blocks, per_block, workers_list in shapes:
        txs = ordered[:n_blocks * per_block]
        # The authority keeps the default 2 s proposer interval: its (empty)
        # block announcements are also what restarts a sync that stopped
        # (see the stall count in the note).
        a = BenchNode(ctx.tmp, "catchup-authority", doc, key=authority, p2p=True,
                      sections={"proposer": {"interval": "2"}, "verifier": {"workers": "0"}})
        t = now()
        height = build_chain(a.data_dir, doc, authority, txs, per_block)
        build_s = now() - t
        ctx.cleanup.append(a.stop)
        a.start()
        try:
            results = {w: _follow(ctx, a, doc, height, len(txs), per_block, w) for w in workers_list}
            aconn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            want = http_get(aconn, f"/rpc/getBlock/{height}")[1]["hash"]
            aconn.close()
        finally:
            a.stop()
            shutil.rmtree(a.dir, ignore_errors=True)
        for workers in workers_list:
            r = results[workers]
            note = _catchup_note(r, height, per_block, len(txs), build_s, sign_s, workers, want,
                                 results.get(2 if workers == 0 else 0))
            if r["profiled"]:
                note += "; FOLLOWER RUN UNDER cProfile (slower)"
            rows.append((
                f"catch-up, {height:,} blocks of {per_block} transfers, workers={workers}",
                f"{r['tps']:,.0f} tx/s, {r['bps']:,.0f} blocks/s" + (" (INCOMPLETE)" if r["stuck"] is not None else ""),
                target(">= 10,000 tx/s", r["tps"] >= 10_000 and r["stuck"] is None),
                note,
            ))
    return rows
