#!/usr/bin/env python3
"""aitnode benchmark: one command, one Markdown table.

    python bench/run.py               # the full run (about 10-14 minutes on 2 cores)
    python bench/run.py --quick       # a smaller run (about 3 minutes)
    python bench/run.py --only sendtx,block
    python bench/run.py --only sendtx --profile   # + where the node spends its time

Benchmarks (names for --only):

  sendtx   one-by-one POST /rpc/sendTx over real HTTP to a real node process
           (``twistd -n aitnode --config ...``, started as tests/procs.py and
           the devnet start it: aitnode/launch.py), from a separate load
           process with several keep-alive connections; admitted tx/s
           (HTTP 200) and committed tx/s end to end.
  sendtxs  POST /rpc/sendTxs with JSON lists; committed tx/s from the first
           send until the last transaction is in a block.  Runs with
           [verifier] workers = 2 and (full run) workers = 0.
  gethead  GET /rpc/getHead every 20 ms while the sendtxs load runs:
           latency p50 / p99 / max (measured as part of sendtxs).
  block    build + apply + commit (BlockPipeline.propose) of blocks of 1,000 and
           5,000 transfers, in process.
  state    BlockPipeline.propose of 1,000-transfer blocks with 10,000 and with
           1,000,000 accounts in the state (--quick: 100,000).
  sigonce  ed25519 verify calls counted while every transaction is
           submitted, resubmitted (one by one and in batches) and included.
  relay    block relay latency, authority -> follower (two twistd node
           processes peered over p2p on loopback) for blocks of 1,000
           transfers: p50 / p99 from the authority's block_proposed log
           time to the follower's block_imported log time.
  catchup  a follower with an empty data_dir syncing a chain built in
           process into the authority's data_dir: blocks/s and tx/s,
           [verifier] workers = 2 and 0.
  claims   RECEIPT_CLAIMs committed per second through POST
           /rpc/submitReceipt with twistd aitcoordinator behind a proxy
           adding 0 / 20 / 100 ms; getHead latency meanwhile; 429
           coordinator_busy counted past [coordinator] max_in_flight.
  finality four twistd authorities peered on loopback, 1 s turns:
           finality latency (block_proposed log time -> block_finalized
           on every node) p50 / p99, vote messages and bytes per block,
           and, in process, block import with 3 votes vs none.
  proofs   with 1,000,000 accounts (--quick: 100,000) and blocks finalized
           by the one authority's votes: state proof size (binary form)
           for existing and absent accounts; GET /rpc/getProof/acct/ADDR
           over loopback HTTP to the node's Site in process, median and
           p99; a synced LightClient's verify_balance (fetch in process,
           and over loopback HTTP), median.

Transactions are signed before any clock starts.  Commit times come from
the node's own block_proposed log events (JSON lines), read as they are
written; the included state of a sample of transactions is checked over
RPC afterwards.  The machine note says what shared the CPU.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# run as a script: the benchmark modules are bench.*, not top-level names
sys.path = [REPO] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, REPO)]

from bench.blocks import bench_block, bench_state  # noqa: E402
from bench.claims import bench_claims  # noqa: E402
from bench.common import Ctx, busy_others, loadavg, now  # noqa: E402
from bench.finality import bench_finality  # noqa: E402
from bench.http_ingest import bench_sendtx, bench_sendtxs  # noqa: E402
from bench.p2p import bench_catchup, bench_relay  # noqa: E402
from bench.proofs import bench_proofs  # noqa: E402
from bench.sigonce import bench_sigonce  # noqa: E402

BENCHES = {
    "sendtx": bench_sendtx,
    "sendtxs": bench_sendtxs,
    "block": bench_block,
    "state": bench_state,
    "sigonce": bench_sigonce,
    "relay": bench_relay,
    "catchup": bench_catchup,
    "claims": bench_claims,
    "finality": bench_finality,
    "proofs": bench_proofs,
}
ALIASES = {"gethead": "sendtxs"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    ap.add_argument("--only", default="", help="comma-separated: " + ", ".join(list(BENCHES) + list(ALIASES)))
    ap.add_argument("--profile", action="store_true", help="profile the node / propose and print the hot spots")
    ap.add_argument("--profile-dir", help="with --profile: also keep the .prof files here")
    args = ap.parse_args(argv)
    args.names = list(BENCHES)
    if args.only:
        args.names = []
        for n in args.only.split(","):
            n = ALIASES.get(n.strip(), n.strip())
            if n not in BENCHES:
                ap.error(f"unknown benchmark {n!r}; choose from {', '.join(list(BENCHES) + list(ALIASES))}")
            if n not in args.names:
                args.names.append(n)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    ctx = Ctx(args.quick, args.profile, args.profile_dir)
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
        for name in args.names:
            t = now()
            try:
                rows += BENCHES[name](ctx)
            except Exception as e:
                rows.append((name, f"FAILED: {e!r}"[:300], "", ""))
            print(f"<!-- {name}: {now() - t:.0f} s, load average {loadavg()} -->", file=sys.stderr, flush=True)
    finally:
        ctx.close()
    print("| benchmark | result | target | machine note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    print(f"\nTotal {now() - started:.0f} s; load average at end: {loadavg()}.")
    for p in ctx.profiles:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
