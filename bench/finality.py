"""finality: four authority processes peered on loopback, 1 s turns.

Finality latency (from a block's block_proposed log time to the last of
the four nodes' block_finalized log times reaching its height), the vote
traffic per block (the nodes' aitnode_p2p_received_*{type="vote"}
counters), and, in process, what importing a block that carries three
votes costs against one that carries none.
"""

import http.client
import re
import statistics
import time

from aitnode import finality as F
from aitnode.genesis import make_genesis
from aitnode.p2p import encode as p2p_encode

from bench.common import BALANCE, CHAIN_ID, bench_key, http_get, inprocess_node, now, quantiles, session_cpu, target
from bench.node import BenchNode

INTERVAL_MS = 1000
TICK = 0.02  # [proposer] interval: the node's default, how often it looks whether its turn has come
N = 4


class FinalityNode(BenchNode):
    """A BenchNode that also keeps, by block hash, the log time of each
    block it proposed (block_proposed events carry the hash)."""

    def __init__(self, *a, **kw):
        self.proposed = {}  # block hash -> log time
        super().__init__(*a, **kw)

    def _event(self, ev, line, arrival):
        if ev.get("event") == "block_proposed":
            self.proposed[ev["hash"]] = ev["time"]
        super()._event(ev, line, arrival)

    def finalized(self):
        """[(log time, height, latency_ms)] of its block_finalized events, in order."""
        return [(t, ev["height"], ev.get("latency_ms")) for t, n, ev in list(self.events) if n == "block_finalized"]


def _genesis(keys):
    return make_genesis(CHAIN_ID, keys, [(bench_key(299).address, BALANCE)],
                        {"faucet": True, "block_interval_ms": INTERVAL_MS}, timestamp=1_700_000_000)


def _metrics(node):
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:
        conn.request("GET", "/rpc/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()

    def sample(name, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        m = re.search("^" + re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    return {
        "vote_msgs": sample("aitnode_p2p_received_messages_total", type="vote"),
        "vote_bytes": sample("aitnode_p2p_received_bytes_total", type="vote"),
        "block_msgs": sample("aitnode_p2p_received_messages_total", type="block"),
        "block_bytes": sample("aitnode_p2p_received_bytes_total", type="block"),
        "sent": sample("aitnode_votes_total", result="sent"),
        "height": sample("aitnode_block_height"),
    }


def _wait(cond, timeout, what, nodes):
    deadline = now() + timeout
    while now() < deadline:
        if cond():
            return
        for n in nodes:
            n.check_alive()
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout} s")


def _run_network(ctx, seconds):
    keys = [bench_key(200 + i) for i in range(N)]
    doc = _genesis(keys)
    nodes = []
    for i, k in enumerate(keys):
        n = FinalityNode(ctx.tmp, f"finality-{i}", doc, key=k, p2p=True, peers=[m.p2p_url for m in nodes],
                         sections={"proposer": {"interval": str(TICK)}, "verifier": {"workers": "0"}})
        ctx.cleanup.append(n.stop)
        nodes.append(n)
        n.start()
    try:
        # warm-up: every node finalized something (all four vote by then)
        _wait(lambda: all(n.finalized() for n in nodes), 60, "finality on every node", nodes)
        m0 = [_metrics(n) for n in nodes]
        cpu0 = [session_cpu(n.pid)[1] for n in nodes]
        t0, h0 = now(), nodes[0].head()
        time.sleep(seconds)
        m1 = [_metrics(n) for n in nodes]
        cpu1 = [session_cpu(n.pid)[1] for n in nodes]
        t1, h1 = now(), nodes[0].head()
        # the blocks of the window finalized everywhere (2 turns more, and some)
        _wait(lambda: all(n.finalized() and n.finalized()[-1][1] >= h1 for n in nodes), 30,
              f"height {h1} finalized on every node", nodes)
        conn = http.client.HTTPConnection("127.0.0.1", nodes[0].port, timeout=30)
        chain = {}
        for h in range(h0 - 1, h1 + 1):
            status, body = http_get(conn, f"/rpc/getBlock/{h}")
            chain[h] = body
        conn.close()
    finally:
        for n in nodes:
            n.stop()
    return {"nodes": nodes, "m0": m0, "m1": m1, "cpu": [(b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1)],
            "h0": h0, "h1": h1, "chain": chain}


def _latencies(run):
    """Per height of the window: (log-time latency, largest latency_ms a node logged) in ms."""
    nodes, chain = run["nodes"], run["chain"]
    proposed = {}
    for n in nodes:
        proposed.update(n.proposed)
    finals = [n.finalized() for n in nodes]
    out, missing = [], 0
    for h in range(run["h0"] + 1, run["h1"] + 1):
        t_prop = proposed.get(chain[h]["hash"])
        if t_prop is None:
            missing += 1
            continue
        last, own = 0.0, []
        for fin in finals:
            t, _, lat = next(x for x in fin if x[1] >= h)  # the first event at or past h
            last = max(last, t)
            own += [x[2] for x in fin if x[1] == h and x[2] is not None]
        out.append(((last - t_prop) * 1000, max(own) if own else float("nan")))
    return out, missing


def _import_costs(ctx, n_blocks=40):
    """In process: a follower's verify_block + commit of blocks carrying the
    three other authorities' votes for their parent, and of blocks carrying
    none (in runs of 5, alternating); medians in ms, and encoded sizes."""
    keys = [bench_key(200 + i) for i in range(N)]
    doc = _genesis(keys)
    src, sstore = inprocess_node(doc, keys[0], ctx.store_dir())
    dst, dstore = inprocess_node(doc, None, ctx.store_dir())
    fields = {"votes": []}

    class Fields:  # what the proposer's block carries, chosen per block
        def block_fields(self, chain):
            return fields["votes"], []

        def proposed(self, block):  # as Ballot.proposed records it (no vote: these are chosen above)
            src.local.put_signed("proposal", block["header"]["height"])

    src.pipeline.ballot = Fields()
    cost = {True: [], False: []}
    size = {True: [], False: []}
    try:
        for i in range(n_blocks + 1):
            height, head = src.chain.head()
            carry = (i // 5) % 2 == 1 and height > 0
            if carry:
                source = src.chain.finality().justified
                fields["votes"] = F.block_votes(
                    [F.sign_vote(k, CHAIN_ID, height, head, source.height, source.hash) for k in keys[1:]])
            else:
                fields["votes"] = []
            block = src.pipeline.propose()
            assert len(block["votes"]) == (3 if carry else 0), block["votes"]
            entry = src.chain.block_entry(block["header"]["height"])
            t = now()
            checked, records, view = dst.chain.verify_block(entry["block"], [])
            dst.chain.commit(checked, records, view)
            if i:  # the first block is a warm-up
                cost[carry].append(now() - t)
                size[carry].append(len(p2p_encode("block", entry)))
        fin = dst.chain.finality()
    finally:
        sstore.close()
        dstore.close()
    return ({k: statistics.median(v) * 1000 for k, v in cost.items()},
            {k: statistics.median(v) for k, v in size.items()}, fin, len(cost[True]))


def bench_finality(ctx):
    seconds = 30 if ctx.quick else 120
    run = _run_network(ctx, seconds)
    lat, missing = _latencies(run)
    p50, p99, worst = quantiles([x[0] for x in lat])
    own = [x[1] for x in lat if x[1] == x[1]]
    own50 = statistics.median(own) if own else float("nan")
    chain, h0, h1 = run["chain"], run["h0"], run["h1"]
    blocks = h1 - h0
    lag = [chain[h]["timestamp"] - chain[h - 1]["timestamp"] - INTERVAL_MS for h in range(h0 + 1, h1 + 1)]
    proposers = {chain[h]["proposer"] for h in range(h0 + 1, h1 + 1)}
    carried = [len(chain[h].get("votes", [])) for h in range(h0 + 1, h1 + 1)]
    m0, m1 = run["m0"], run["m1"]

    def per_block(key):
        return sum(b[key] - a[key] for a, b in zip(m0, m1)) / blocks

    reorgs = sum(1 for n in run["nodes"] for _, name, _ in n.events if name == "reorg")
    errors = [e for n in run["nodes"] for e in n.errors()]
    limit = 2 * INTERVAL_MS + 100
    note = (f"{N} twistd authorities (JSON logs, [verifier] workers=0, [proposer] interval {TICK} s = the default look "
            f"for the turn) peered in a full mesh over /p2p/ws on loopback, genesis block_interval_ms {INTERVAL_MS}; "
            f"{len(lat)} blocks over {seconds} s after a warm-up, by {len(proposers)} proposers. Latency: the "
            f"proposer's block_proposed log time to the LAST of the {N} nodes' first block_finalized log event at or "
            f"past that height (wall clock, ms). A block h is finalized once block h+2 (carrying the votes for h+1, "
            f"whose source is h) is committed: at least 2 turns; each turn also waits for the next proposer look "
            f"(block timestamp - parent - interval: median {statistics.median(lag):.0f} ms, max {max(lag):.0f} ms). "
            f"Cross-check, the nodes' own block_finalized latency_ms (from the block's timestamp, largest of the "
            f"{N}): median {own50:.0f} ms. Votes carried per block: median {statistics.median(carried):.0f}, "
            f"min {min(carried)}. Node CPU {', '.join(f'{c:.0%}' for c in run['cpu'])} of a core")
    if missing:
        note += f"; {missing} heights of the window had no block_proposed line (left out)"
    if reorgs:
        note += f"; {reorgs} reorg events on the nodes"
    if errors:
        note += f"; ERRORS in the node logs: {errors[0][:200]}"
    rows = [(f"finality latency, {N} authorities, {INTERVAL_MS / 1000:.0f} s turns, proposed -> finalized on every node",
             f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {worst:,.0f} ms",
             target(f"p50 <= {limit:,} ms (2 intervals + 100 ms)", p50 <= limit), note)]

    vote_msgs, vote_bytes = per_block("vote_msgs"), per_block("vote_bytes")
    block_msgs, block_bytes = per_block("block_msgs"), per_block("block_bytes")
    sent = per_block("sent")
    rows.append((
        f"vote traffic per block, {N} authorities (full mesh)",
        f"{vote_msgs:.1f} vote messages, {vote_bytes:,.0f} bytes received per block, all {N} nodes together",
        "no target (reported)",
        f"from the nodes' aitnode_p2p_received_messages_total / _bytes_total{{type=\"vote\"}} over the {blocks} blocks "
        f"of the window: {sent:.2f} votes signed per block (aitnode_votes_total{{result=\"sent\"}}), "
        f"{vote_bytes / vote_msgs if vote_msgs else float('nan'):.0f} bytes per vote message; each node sends its own "
        f"vote to its {N - 1} peers, and relays each vote the first time it hears it to its peers but the sender: "
        f"in a full mesh of {N}, {N} votes x ({N - 1} + {N - 1} x {N - 2}) = {N * (N - 1 + (N - 1) * (N - 2))} "
        f"messages per block. Blocks for comparison: {block_msgs:.1f} block messages, "
        f"{block_bytes:,.0f} bytes per block"))

    cost, size, fin, n_with = _import_costs(ctx)
    rows.append((
        "block import with 3 votes vs none (verify_block + commit, in process)",
        f"{cost[True]:.2f} ms with 3 votes, {cost[False]:.2f} ms without (+{cost[True] - cost[False]:.2f} ms)",
        "no target (reported)",
        f"empty blocks of a {N}-authority chain built in process by one authority (turns honoured by the "
        f"timestamps), imported by a second in-process node (Chain.verify_block + Chain.commit, LMDB with fsync), "
        f"runs of 5 blocks carrying the other 3 authorities' votes for the parent and of 5 carrying none; median "
        f"of {n_with} each; the votes add 3 ed25519 checks and the justified/finalized state entry; block frame "
        f"{size[True]:,.0f} bytes with the votes, {size[False]:,.0f} without; the importer ended at justified "
        f"{fin.justified.height}, finalized {fin.finalized.height}"))
    return rows
