"""The soak test of issue 9: one node attacked on every surface at once.

A real authority node (`twistd -n aitnode`, tests.procs.NodeProcess) runs
as operators run it: `[p2p] listen` on, two signature-checking workers, a
coordinator (the mock, `twistd -n aitcoordinator`) for receipts.  First
the chain gets some substance (BALLAST transfers, so that answering
`get_blocks` costs what it costs on a real chain).  Then, for
AITNODE_TEST_SOAK_SECONDS (40 by default), tests/soak_attack.py attacks it
from a process of its own (RPC fuzzing, garbage peers, a get_blocks flood
from an authenticated peer that never reads, slow uploads; see there),
while this process, as a well-behaved client:

- sends valid transfers, SEND_RATE a second, each from a funded genesis
  account with the right nonce;
- polls GET /rpc/getHead every POLL_EVERY seconds on a kept-alive
  connection, timing each answer;
- reads the node's VmRSS from /proc every second.

Afterwards it checks that the node kept proposing (no gap between head
changes seen by the poller, or between consecutive block timestamps,
longer than MAX_GAP), that getHead's p99 stayed under P99_LIMIT (over
every poll, and the polls a slow answer held back counted as waiting: see
with_missed_polls), that RSS
stayed under RSS_LIMIT, that every valid transaction was included within
INCLUDE_WAIT seconds of the attack's end, that nothing was answered with a
5xx (by the attackers' count, this client's, and the node's own metrics),
that the node logged no traceback, and that every attack actually ran.
All the figures go to the test log (and soak-report.json, beside the
node's whole log node.log, in its folder under _trial_temp); a failure
lists every check that failed, with its figures.

AITNODE_TEST_SOAK_ATTACKS (comma separated: rpc, garbage, flood, slow)
runs only some attacks, to find which one hurts; the default is all.
"""

import json
import math
import os
import re
import signal
import sys
import time

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from aitnode.launch import child_env
from tests import soak_attack
from tests.common import BOB, GENESIS_BALANCE, genesis_doc, key, transfer, wire
from tests.procs import NodeProcess, WaitTimeout, _NodeProtocol, inline, sleep, stop_process, wait_for
from tests.test_receipts_process import CoordinatorProcess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the attacker runs as -m tests.soak_attack there
SECONDS = float(os.environ.get("AITNODE_TEST_SOAK_SECONDS") or 40)
ATTACKS = [a for a in (os.environ.get("AITNODE_TEST_SOAK_ATTACKS") or ",".join(soak_attack.ATTACKS)).split(",") if a]
INTERVAL = 0.5  # [proposer] interval
MAX_GAP = 4 * INTERVAL  # the longest the head may stand still, in seconds
P99_LIMIT = 0.250  # seconds, getHead
RSS_LIMIT = 500 * 2**20
RSS_CUT = 3 * RSS_LIMIT  # past this the attacker and the node are stopped, to spare the machine (the check failed)
SEND_RATE = 20  # valid transfers a second, over all HONEST accounts
POLL_EVERY = 0.05
INCLUDE_WAIT = 30  # seconds after the attack for every valid transfer to be included
HONEST = [key(80 + i) for i in range(5)]
# The chain's history before the attack: 14 x 1000 transfers, about 4.4 MB
# of block entries, more than one get_blocks answer may carry (4 MiB), as on
# any chain that has run for a while.
BALLAST = [key(90 + i) for i in range(14)]
BALLAST_TXS = 1000  # per BALLAST account (the mempool takes 1024 per sender)

_log = Logger()


def soak_genesis():
    funded = HONEST + BALLAST + soak_attack.PAYERS
    return genesis_doc(accounts=[(k.address, GENESIS_BALANCE) for k in funded] + [(BOB.address, 10**6)])


def p99(values):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else None


def with_missed_polls(latencies, every):
    """latencies plus, for each poll slower than ``every``, the latencies
    the polls it held back would have seen (it - every, it - 2 every, ...),
    as HdrHistogram's recordValueWithExpectedInterval does: a sequential
    poller sends one request into a stall, so its own figures understate
    what a client sending on schedule waits."""
    out = []
    for value in latencies:
        out.append(value)
        missed = value - every
        while missed >= every:
            out.append(missed)
            missed -= every
    return out


def rss_bytes(pid):
    """VmRSS of a process, in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Owner:
    verbose = bool(os.environ.get("AITNODE_TEST_VERBOSE_NODES"))


class Client:
    """The well-behaved client and the measurements, in this process's
    reactor: valid transfers, getHead polls on a kept-alive connection, and
    the node's RSS every second."""

    def __init__(self, testcase, node, pid):
        self.node = node
        self.pid = pid
        self.polls = []  # (started, seconds, status, height), on the monotonic clock
        self.rss = []  # (at, bytes)
        self.sent = []  # hashes of the valid transfers the node took
        self.send_failures = []
        self.on_rss = lambda value: None
        self._polling = self._sending = False
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1
        self.pool.retryAutomatically = False
        testcase.addCleanup(self.pool.closeCachedConnections)
        self.sampler = LoopingCall(self._sample)
        testcase.addCleanup(lambda: self.sampler.running and self.sampler.stop())

    def start(self):
        self._polling = self._sending = True
        self.sampler.start(1.0)
        self.poller = defer.ensureDeferred(self._poll())
        self.senders = [defer.ensureDeferred(self._send(k, SEND_RATE / len(HONEST))) for k in HONEST]

    def stop_sending(self):
        self._sending = False
        return defer.gatherResults(self.senders)

    async def stop(self):
        self._polling = False
        await self.poller
        self.sampler.stop()

    def _sample(self):
        value = rss_bytes(self.pid)
        if value is not None:
            self.rss.append((time.monotonic(), value))
            self.on_rss(value)

    async def _poll(self):
        url = self.node.rpc("/rpc/getHead").encode()
        while self._polling:
            started = time.monotonic()
            height = None
            try:
                resp = await treq.get(url, pool=self.pool, timeout=10)
                status = resp.code
                body = await treq.json_content(resp)
                height = body.get("height") if type(body) is dict else None
            except Exception as e:
                status = type(e).__name__
            self.polls.append((started, time.monotonic() - started, status, height))
            await sleep(max(0.0, started + POLL_EVERY - time.monotonic()))

    async def _send(self, k, rate):
        nonce, pace = 1, time.monotonic()
        while self._sending:
            tx = transfer(k, nonce, BOB, 1)
            try:
                status, body = await self.node.post("/rpc/sendTx", wire(tx), timeout=15)
            except Exception as e:
                status, body = type(e).__name__, None
            if status == 200:
                self.sent.append(tx.hash)
                nonce += 1
            else:
                self.send_failures.append((k.address, nonce, status, body))
            pace = max(pace + 1.0 / rate, time.monotonic() - 1.0)  # no burst to catch up after a stall
            await sleep(max(0.0, pace - time.monotonic()))

    async def not_included(self, timeout):
        """Wait up to timeout s for every transfer sent to be included; the
        hashes still not included."""
        missing = list(self.sent)

        async def all_included():
            while missing:
                try:
                    status, body = await self.node.get(f"/rpc/getTx/{missing[0]}", timeout=10)
                except Exception:  # a stalled node: ask again until the wait is over
                    return False
                if status != 200 or body.get("status") != "included":
                    return False
                missing.pop(0)
            return True

        try:
            await wait_for(all_included, timeout=timeout, interval=0.2)
        except WaitTimeout:
            pass
        return missing


class SoakTest(unittest.TestCase):
    timeout = SECONDS + 240

    @inline
    async def test_node_under_every_attack_at_once(self):
        coordinator = await CoordinatorProcess(self).start()
        node = NodeProcess(self, doc=soak_genesis(), p2p=True, interval=INTERVAL, sections={
            "verifier": {"workers": "2"},
            "coordinator": {"url": coordinator.url, "allow": "127.0.0.1"},
        })
        await node.start()
        status, genesis = await node.get("/rpc/getBlock/0")
        self.assertEqual(status, 200, genesis)

        # Substance for get_blocks to carry: BALLAST_TXS transfers from each BALLAST account.
        last = []
        for k in BALLAST:
            txs = [transfer(k, n, BOB, 1) for n in range(1, BALLAST_TXS + 1)]
            status, body = await node.post("/rpc/sendTxs", [wire(t) for t in txs], timeout=60)
            self.assertEqual(status, 200, body)
            last.append(txs[-1].hash)
        await node.wait_included(last, timeout=60)

        client = Client(self, node, node.proto.transport.pid)
        attacker = _NodeProtocol(_Owner())
        self.addCleanup(lambda: attacker.transport and stop_process(attacker, signal.SIGKILL, 5))
        cut = []

        def too_big(value):
            # Spare the machine: past RSS_CUT the check has failed anyway, and
            # a node may go on growing from what it was sent before.
            if value > RSS_CUT and not cut:
                cut.append(value)
                if not attacker.done:
                    attacker.transport.signalProcess(signal.SIGTERM)
                node.kill()

        client.on_rss = too_big
        cfg = {"rpc_port": node.port, "p2p_port": node.p2p_port, "seconds": SECONDS, "seed": "soak",
               "chain_id": genesis["chain_id"], "genesis": genesis["hash"], "attacks": ATTACKS}
        start_height = (await node.head())["height"]
        started = time.monotonic()
        client.start()
        args = [sys.executable, "-m", "tests.soak_attack", json.dumps(cfg)]
        reactor.spawnProcess(attacker, sys.executable, args, env=child_env(), path=REPO)

        # The attack stops by itself after SECONDS; the valid transfers stop with it.
        await wait_for(lambda: attacker.done, timeout=SECONDS + 60, interval=0.2, message="the attacker to stop")
        ended = time.monotonic()
        await client.stop_sending()
        missing = await client.not_included(INCLUDE_WAIT if node.running else 0)
        included_after = time.monotonic() - ended
        await client.stop()

        end_height, stamps, node_5xx, unreachable = start_height, [], [], None
        try:
            end_height = (await node.head())["height"]
            for h in range(start_height, end_height + 1):
                status, body = await node.get(f"/rpc/getBlock/{h}")
                self.assertEqual(status, 200, body)
                stamps.append(body["timestamp"] / 1000)  # ms
            status, metrics = await node.get("/rpc/metrics")
            node_5xx = re.findall(r'^aitnode_rpc_requests(?:_total)?\{[^}]*code="5\d\d".*$',
                                  (metrics or {}).get("_raw", ""), re.M)
        except Exception as e:  # a node that died is reported with the figures below
            unreachable = f"{type(e).__name__}: {e}"
        await node.stop()

        try:
            attack = json.loads(bytes(attacker.out).decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            attack = {"unreadable": bytes(attacker.out).decode("utf-8", "replace")[-2000:]}
        window = [p for p in client.polls if p[0] <= ended]
        latencies = sorted(p[1] for p in client.polls)
        scheduled = with_missed_polls(latencies, POLL_EVERY)
        peak = max((v for _, v in client.rss), default=0)
        report = {
            "seconds": round(ended - started, 1),
            "attacks": ATTACKS,
            "attacker_exit": attacker.exit_code,
            "attack": attack,
            "cut_short_at_rss_mib": round(cut[0] / 2**20) if cut else None,
            "polls": len(client.polls),
            "poll_failures": [p[2] for p in client.polls if p[2] != 200][:20],
            "gethead_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "gethead_p99_ms": round(p99(latencies) * 1000, 1),
            "gethead_p99_on_schedule_ms": round(p99(scheduled) * 1000, 1),
            "gethead_max_ms": round(latencies[-1] * 1000, 1),
            "heights": [start_height, end_height],
            "longest_head_wait_s": round(longest_wait(window, started, ended), 2),
            "longest_timestamp_gap_s": max((b - a for a, b in zip(stamps, stamps[1:])), default=None),
            "rss_peak_mib": round(peak / 2**20, 1),
            "rss_first_mib": client.rss and round(client.rss[0][1] / 2**20, 1),
            "rss_samples": len(client.rss),
            "valid_sent": len(client.sent),
            "valid_send_failures": client.send_failures[:10],
            "valid_send_failure_count": len(client.send_failures),
            "valid_not_included": len(missing),
            "included_within_s": round(included_after, 1),
            "node_5xx_metrics": node_5xx,
            "node_exit": [node.proto.exit_code, node.proto.exit_signal],
            "node_unreachable_after_attack": unreachable,
        }
        _log.info("soak: {seconds} s of {attacks}; peak RSS {rss} MiB, getHead p99 {p99} ms, longest head wait "
                  "{wait} s, {sent} valid transfers, {missing} not included",
                  seconds=report["seconds"], attacks=",".join(ATTACKS), rss=report["rss_peak_mib"],
                  p99=report["gethead_p99_on_schedule_ms"], wait=report["longest_head_wait_s"],
                  sent=report["valid_sent"], missing=report["valid_not_included"])
        _log.info("soak report: {report}", report=json.dumps(report, sort_keys=True))
        with open(os.path.join(node.basedir, "soak-report.json"), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        with open(os.path.join(node.basedir, "node.log"), "w") as f:
            f.write(node.output)
        problems = self.problems(report, node.output + coordinator.output)
        if problems:
            self.fail(f"the node did not hold under attack (its whole log: {node.basedir}/node.log):\n- "
                      + "\n- ".join(problems)
                      + "\n\nreport: " + json.dumps(report, indent=1, sort_keys=True)
                      + f"\n\nnode log (last 8000 characters):\n{node.output[-8000:]}"
                      + f"\n\nattacker stderr:\n{bytes(attacker.err).decode('utf-8', 'replace')[-3000:]}")

    def problems(self, r, output):
        """Every check that failed, with its figures."""
        out = []
        counts = r["attack"].get("counts", {})
        if r["node_unreachable_after_attack"]:
            out.append(f"the node could not be read after the attack: {r['node_unreachable_after_attack']}")
        if r["attacker_exit"] != 0 and not r["cut_short_at_rss_mib"]:
            out.append(f"the attacker failed (exit {r['attacker_exit']}): {r['attack'].get('failed')} "
                       f"{r['attack'].get('stuck')}")
        # Every attack ran for real.
        ran = {
            "rpc": counts.get("rpc.requests", 0) >= 20 * SECONDS,
            "garbage": counts.get("garbage.connections", 0) >= SECONDS,
            "flood": counts.get("flood.get_blocks", 0) >= 200,
            "slow": counts.get("slow.body.connections", 0) >= soak_attack.SLOW_BODIES,
        }
        idle = [a for a in ATTACKS if not ran[a]]
        if idle and not r["cut_short_at_rss_mib"]:
            out.append(f"attacks that did not get going: {idle}")
        # It kept proposing.
        if r["longest_head_wait_s"] > MAX_GAP:
            out.append(f"the head stood still for {r['longest_head_wait_s']} s (limit {MAX_GAP} s)")
        stamp_limit = MAX_GAP + 1  # timestamps are ms, read as seconds here
        if r["longest_timestamp_gap_s"] is None or r["longest_timestamp_gap_s"] > stamp_limit:
            out.append(f"consecutive blocks {r['longest_timestamp_gap_s']} s apart by their timestamps "
                       f"(limit {stamp_limit} s)")
        blocks = r["heights"][1] - r["heights"][0]
        if blocks < r["seconds"] / MAX_GAP:
            out.append(f"only {blocks} blocks in {r['seconds']} s")
        # getHead stayed quick.
        if r["polls"] < r["seconds"] / (4 * POLL_EVERY):
            out.append(f"only {r['polls']} getHead polls in {r['seconds']} s")
        if r["poll_failures"]:
            out.append(f"getHead polls failed: {r['poll_failures']}")
        if r["gethead_p99_on_schedule_ms"] >= P99_LIMIT * 1000:
            out.append(f"getHead p99 {r['gethead_p99_on_schedule_ms']} ms counting the polls a slow answer held "
                       f"back, {r['gethead_p99_ms']} ms over the polls sent (limit {P99_LIMIT * 1000:.0f} ms; "
                       f"max {r['gethead_max_ms']} ms)")
        # Memory.
        if r["rss_peak_mib"] >= RSS_LIMIT / 2**20:
            out.append(f"RSS peaked at {r['rss_peak_mib']} MiB (limit {RSS_LIMIT // 2**20} MiB; "
                       f"first sample {r['rss_first_mib']} MiB"
                       + (f"; the attack and the node were stopped at {r['cut_short_at_rss_mib']} MiB"
                          if r["cut_short_at_rss_mib"] else "")
                       + ")")
        # Every valid transaction.
        if r["valid_send_failure_count"]:
            out.append(f"{r['valid_send_failure_count']} valid transfers refused or unanswered: "
                       f"{r['valid_send_failures']}")
        if r["valid_sent"] < SEND_RATE * r["seconds"] / 2:
            out.append(f"only {r['valid_sent']} valid transfers sent in {r['seconds']} s")
        if r["valid_not_included"]:
            out.append(f"{r['valid_not_included']} of {r['valid_sent']} valid transfers not included "
                       f"{INCLUDE_WAIT} s after the attack")
        # No 5xx, no traceback.
        if counts.get("server_errors") or r["attack"].get("server_errors"):
            out.append(f"the node answered 5xx: {r['attack'].get('server_errors')}")
        if r["node_5xx_metrics"]:
            out.append(f"the node's metrics count 5xx answers: {r['node_5xx_metrics']}")
        for word in ("Traceback", "Unhandled"):
            if word in output:
                i = output.index(word)
                out.append(f"the node logged {word!r}:\n{output[max(0, i - 500):i + 2500]}")
        return out


def longest_wait(polls, started, ended):
    """The longest time, from started to ended, between two moments the
    poller saw the head grow (the answer's arrival counts)."""
    changes, best = [started], None
    for at, seconds, status, height in polls:
        if type(height) is int and (best is None or height > best):
            if best is not None:
                changes.append(at + seconds)
            best = height
    changes.append(ended)
    return max(b - a for a, b in zip(changes, changes[1:]))
