"""proofs: state proofs and the light client's balance check (issue 11), with
1,000,000 accounts in the state (--quick: 100,000).

One authority (its own finality votes finalize its blocks: a set of one
has a quorum of one) builds a few blocks of transfers on a padded genesis
(bench.blocks.padded_genesis), in process, until blocks above genesis are
finalized.  Then, against the latest finalized block:

- the proof's size (binary form, docs/protocol.md 11.3) for random
  existing accounts and for random absent ones, straight from
  Store.proof (each checked with jmt.verify_proof against the state root);
- GET /rpc/getProof/acct/{address} over real HTTP/1.1 on loopback, to the
  node's real Site (web.make_web_server) listening in this process on a
  private reactor, from a forked client process on one keep-alive
  connection: per-request latency, median and p99;
- a light balance check (aitnode.light_proofs.verify_balance) by a
  LightClient synced beforehand (its finalized header cached): the fetch
  of getProof plus the proof's verification.  Measured twice: with the
  fetch calling the node's Queries in process (the answer through JSON
  both ways; no HTTP, no network), and from the client process over the
  same loopback HTTP.

The setup's objects are frozen out of the garbage collector (gc.freeze)
before anything is timed: a node does not hold a padded genesis' million
entries, and scanning them would put collector pauses in the tails.
"""

import contextlib
import gc
import json
import multiprocessing
import random
import shutil
import statistics
import time
import urllib.parse

from aitnode import jmt
from aitnode.httpjson import dump
from aitnode.light import LightClient
from aitnode.light_proofs import verify_balance
from aitnode.rpc import RPC
from aitnode.tx import sign_tx
from aitnode.web import make_web_server

from bench.blocks import FastAddresses, padded_genesis
from bench.common import CHAIN_ID, FEE, admit, bench_genesis, bench_key, inprocess_node, now, percentile, target

N_SENDERS = 100  # transfers per block while the chain is built (setup)
MIN_FINALIZED = 3  # build blocks until this one is finalized
WARMUP = 50  # untimed requests first, on the same connection


def build_finalized(node, senders, recipients):
    """Blocks of transfers (each carrying the authority's vote for its
    parent) until block MIN_FINALIZED is finalized; the finalized Checkpoint."""
    rng = random.Random(19)
    nonce = 0
    while node.chain.finality().finalized.height < MIN_FINALIZED:
        nonce += 1
        if nonce > MIN_FINALIZED + 5:
            raise RuntimeError(f"finality stuck at {node.chain.finality().finalized.height} "
                               f"after {nonce - 1} blocks of one authority")
        txs = [sign_tx(k, CHAIN_ID, "TRANSFER", nonce, FEE, {"to": rng.choice(recipients), "amount": 1 + rng.randrange(1000)})
               for k in senders]
        admit(node, txs)
        block = node.pipeline.propose()
        assert block is not None and len(block["txs"]) == len(txs), "a setup block left transactions out"
    return node.chain.finality().finalized


def local_fetch(queries):
    """fetch(path) for a LightClient: the node's Queries called in process
    (getHeaders and getProof, the routes verify_balance uses), the answer
    through JSON both ways as over HTTP, without HTTP."""

    def fetch(path):
        u = urllib.parse.urlsplit(path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        if u.path == "/rpc/getHeaders":
            out = queries.get_headers(int(q["from"]), int(q.get("limit", 64)))
        elif u.path.startswith("/rpc/getProof/"):
            ns, key = u.path[len("/rpc/getProof/"):].split("/", 1)
            out = queries.get_proof(ns, urllib.parse.unquote(key), int(q["height"]) if "height" in q else None)
        else:
            raise ValueError(f"local_fetch serves no {path}")
        return json.loads(dump(out))

    return fetch


def _client(pipe, port, present, absent, genesis, light_addrs):
    """Child process: GET getProof for each address (present and absent
    alternating) on one keep-alive connection, then a LightClient over the
    same connection; its timings go back through pipe."""
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        requests = 0

        def get(path):
            nonlocal requests
            requests += 1
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {r.status} {body[:200]!r}")
            return body

        for a in present[:WARMUP]:
            get(f"/rpc/getProof/acct/{a}")
        lat = {"present": [], "absent": []}
        size = {"present": [], "absent": []}
        for p, a in zip(present, absent):
            for kind, addr in (("present", p), ("absent", a)):
                t = now()
                body = get(f"/rpc/getProof/acct/{addr}")
                lat[kind].append(now() - t)
                size[kind].append(len(body))
        client = LightClient.from_genesis(lambda path: json.loads(get(path)), genesis)
        client.sync()
        for a in light_addrs[:WARMUP]:
            verify_balance(client, a)
        light = []
        for a in light_addrs:
            t = now()
            verify_balance(client, a)
            light.append(now() - t)
        conn.close()
        pipe.send({"lat": lat, "size": size, "light": light, "requests": requests})
    except Exception as e:  # noqa: BLE001 - reported in the table
        pipe.send({"error": repr(e)[:300]})
    finally:
        pipe.close()


def serve_and_measure(node, genesis, present, absent, light_addrs, timeout=600):
    """The node's Site on a loopback port, on a private reactor run here,
    while the forked client measures; (client results, server CPU s)."""
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()  # not installed: the benchmark process keeps no global reactor running
    site = make_web_server(RPC(node), reactor)
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    mp = multiprocessing.get_context("fork")
    recv, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=_client, args=(send, listening.getHost().port, present, absent, genesis, light_addrs),
                      daemon=True)
    proc.start()
    send.close()
    out = {}
    deadline = now() + timeout

    def stop():
        listening.stopListening().addBoth(lambda _: reactor.stop())

    def poll():
        if recv.poll():
            try:
                out.update(recv.recv())
            except EOFError:
                out["error"] = "client process ended without an answer"
            return stop()
        if not proc.is_alive() and not recv.poll():
            out["error"] = f"client process ended (exit code {proc.exitcode}) without an answer"
            return stop()
        if now() > deadline:
            out["error"] = f"client process gave no answer in {timeout} s"
            return stop()
        reactor.callLater(0.05, poll)

    reactor.callLater(0.05, poll)
    cpu = time.process_time()
    with gc_pauses() as pauses:
        reactor.run(installSignalHandlers=False)
    cpu = time.process_time() - cpu
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    recv.close()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out, cpu, pauses


@contextlib.contextmanager
def gc_pauses():
    """A dict that counts this process's garbage collections meanwhile:
    n, total and longest pause (s)."""
    seen = {"n": 0, "total": 0.0, "max": 0.0}
    started = []

    def cb(phase, info):
        if phase == "start":
            started.append(now())
        elif started:
            d = now() - started.pop()
            seen["n"] += 1
            seen["total"] += d
            seen["max"] = max(seen["max"], d)

    gc.callbacks.append(cb)
    try:
        yield seen
    finally:
        gc.callbacks.remove(cb)


def us(seconds):
    return f"{seconds * 1e6:,.0f} us"


def msf(seconds):
    return f"{seconds * 1000:.2f} ms"


def bench_proofs(ctx):
    big = 100_000 if ctx.quick else 1_000_000
    samples = 1000 if ctx.quick else 2000
    at = f"{big:,} accounts" + ("" if big == 1_000_000 else " (--quick; the target is at 1M)")
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, N_SENDERS + 1)]
    doc = bench_genesis(authority, [k.address for k in senders])
    t_setup = now()
    pad = FastAddresses(seed=7).many(big - N_SENDERS - 1)
    genesis = padded_genesis(doc, pad)
    node, store = inprocess_node(doc, authority, ctx.store_dir(), genesis=genesis)
    try:
        fin = build_finalized(node, senders, pad)
        entries = store.count_entries()
        head = node.chain.head()[0]
        setup = now() - t_setup
        rng = random.Random(23)
        present = rng.sample(pad, samples)
        absent = FastAddresses(seed=8).many(samples)
        light_addrs = rng.sample(pad, samples // 2) + absent[:samples // 2]
        rng.shuffle(light_addrs)
        # The setup's own objects (the padded genesis' million entries, the
        # address lists) are no part of a node's working set: out of the
        # collector's scans (and shared, not copied, by the forked client).
        gc.collect()
        gc.freeze()

        # -- proof sizes, straight from the store (each one checked)
        root = bytes.fromhex(store.state_root(fin.height))
        sizes = {"present": [], "absent": []}
        depth = {"present": [], "absent": []}
        t_store = []
        for kind, addrs in (("present", present), ("absent", absent)):
            for a in addrs:
                t = now()
                raw, proof = store.proof("acct", a, fin.height)
                t_store.append(now() - t)
                if (raw is None) != (kind == "absent"):
                    raise AssertionError(f"acct/{a} is unexpectedly {'absent' if raw is None else 'present'}")
                jmt.verify_proof(root, jmt.key_hash("acct", a), None if raw is None else jmt.value_hash_raw(raw), proof)
                sizes[kind].append(len(proof))
                depth[kind].append(len(jmt.decode_proof(proof)[1]))

        # -- the light client in process (fetch: the node's Queries, no network)
        fetch = local_fetch(node.queries)
        client = LightClient.from_genesis(fetch, genesis)
        t = now()
        client.sync()
        first_sync = now() - t
        assert client.point.height == fin.height, (client.point.height, fin.height)
        for a in light_addrs[:WARMUP]:
            verify_balance(client, a)
        light_local = []
        for a in light_addrs:
            t = now()
            verify_balance(client, a)
            light_local.append(now() - t)
        resync = []
        for _ in range(20):
            t = now()
            client.sync()
            resync.append(now() - t)
        t_answer = []
        for a in present[:1000]:
            t = now()
            dump(node.queries.get_proof("acct", a))
            t_answer.append(now() - t)

        # -- over HTTP, on loopback, to the node's Site in this process
        served, server_cpu, pauses = serve_and_measure(node, genesis, present, absent, light_addrs)
    finally:
        gc.unfreeze()
        store.close()
        shutil.rmtree(store.path, ignore_errors=True)

    where = (f"{entries:,} state entries ({setup:.0f} s setup, not timed); finalized block {fin.height} of {head} "
             f"(one authority, its own votes)")
    rows = []
    for kind, what in (("present", "random existing accounts"), ("absent", "random absent accounts")):
        s = sizes[kind]
        m = statistics.median(s)
        rows.append((
            f"state proof size, {what}, {at}",
            f"median {m:,.0f} B (min {min(s):,}, max {max(s):,}; {statistics.median(depth[kind]):.0f} siblings "
            f"median) of {len(s):,}",
            target("<= 1 KB (1,024 B) at 1M", m <= 1024),
            f"binary form (docs/protocol.md 11.3) from Store.proof, each verified against the state root; "
            f"the getProof JSON answer is median {statistics.median(served['size'][kind]):,.0f} B; {where}",
        ))
    lat_all = served["lat"]["present"] + served["lat"]["absent"]
    p50, p99 = statistics.median(lat_all), percentile(lat_all, 99)
    pp = served["lat"]["present"]
    pa = served["lat"]["absent"]
    rows.append((
        f"proof served: GET /rpc/getProof/acct/ADDR, {at}",
        f"median {msf(p50)}, p99 {msf(p99)} of {len(lat_all):,} (existing: {msf(statistics.median(pp))} / "
        f"{msf(percentile(pp, 99))}; absent: {msf(statistics.median(pa))} / {msf(percentile(pa, 99))})",
        f"{target('median < 2 ms', p50 < 0.002)}; {target('p99 < 2 ms', p99 < 0.002)}",
        f"real HTTP/1.1 round trip on loopback: the node's Site (web.make_web_server, RPC) listening in the "
        f"bench process on its own reactor, a forked client process on one keep-alive connection, existing and "
        f"absent accounts alternating, after {WARMUP} warm-up requests; latest finalized block (no height given); "
        f"server CPU {us(server_cpu / served['requests'])}/request, GC pauses in the server {pauses['n']} "
        f"(longest {msf(pauses['max'])}); in process (median / p99): Store.proof {us(statistics.median(t_store))} / "
        f"{us(percentile(t_store, 99))}, whole answer (Queries.get_proof + JSON) {us(statistics.median(t_answer))} / "
        f"{us(percentile(t_answer, 99))}; the rest is HTTP, Klein, the client, and waiting for a core",
    ))
    m = statistics.median(light_local)
    rows.append((
        f"light balance check (synced LightClient), {at}",
        f"median {msf(m)}, p99 {msf(percentile(light_local, 99))} of {len(light_local):,}",
        target("median < 5 ms", m < 0.005),
        f"verify_balance: getProof fetched + checked against the cached finalized header; fetch calls the "
        f"node's Queries in process, answer through JSON both ways (no HTTP, no network); half existing, half "
        f"absent accounts; first sync from genesis {msf(first_sync)}, a re-sync with nothing new "
        f"{msf(statistics.median(resync))} (not in the figure)",
    ))
    lh = served["light"]
    m = statistics.median(lh)
    rows.append((
        f"light balance check over loopback HTTP, {at}",
        f"median {msf(m)}, p99 {msf(percentile(lh, 99))} of {len(lh):,}",
        target("median < 5 ms", m < 0.005),
        "the same check from the forked client process, fetch over the keep-alive HTTP connection to the "
        "node's Site in the bench process",
    ))
    return rows
