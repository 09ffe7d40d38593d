"""Finality among four real authority processes on loopback (issue 10).

Four ``twistd aitnode`` authorities (tests.procs.NodeProcess, started as an
operator would) share a genesis whose turns are INTERVAL apart; each dials
the ones started before it, so every pair is linked.  One network serves
the whole test, phase after phase:

1. finality advances on every node, one head, the same finalized blocks;
2. SIGKILL one authority: the other three keep finalizing; restarted, it
   catches up and signs no vote at or below its persisted vote record;
3. SIGSTOP two: blocks go on, finality stalls; SIGCONT: it resumes;
4. a second process with one authority's key (a hot standby gone wrong,
   its own data_dir, up before its link to the others) gets that
   authority jailed by evidence carried in a block, and finality goes on.

All along a :class:`FinalityWatch` polls every reachable node's getHead and,
for every height a node reports finalized, its block there: a finalized
height must hold one block on every node, for ever.  Waits are bounded
polls; a timeout fails with every node's log.  Processes are killed in
cleanup.
"""

import os
import re
import signal

import cbor2
import lmdb
from twisted.internet import defer
from twisted.trial import unittest

from tests.common import key
from tests.procs import NodeProcess, WaitTimeout, inline, many, sleep, turns_doc, wait_for

INTERVAL = 0.4  # seconds between turns (genesis block_interval_ms 400)
TICK = 0.1  # how often each proposer looks whether its turn has come
KEYS = [key(41 + i) for i in range(4)]
WATCH_PERIOD = 0.3
CONFLICT_LOG = "another node is using this authority key"


def vote_heights(output):
    """Heights of the votes a node's log says it sent (event vote_sent)."""
    return [int(h) for h in re.findall(r"vote sent height=(\d+)", output)]


def vote_record(data_dir):
    """The last vote a stopped node persisted (local "signing" table), or None."""
    env = lmdb.open(data_dir, readonly=True, lock=False, max_dbs=32, subdir=True)
    try:
        db = env.open_db(b"signing", create=False)
        with env.begin(db=db) as t:
            raw = t.get(b"vote")
    finally:
        env.close()
    return None if raw is None else cbor2.loads(raw)


def metric(text, name, **labels):
    """The value of one sample in a Prometheus text page (None if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    m = re.search(pattern, text, re.M)
    return None if m is None else float(m.group(1))


class Network:
    """The authority processes of one test and the signals sent to them.

    ``lock`` is held by each round of the watch: a node is killed or
    stopped only between rounds, so no request is in flight to it then."""

    def __init__(self, testcase):
        self.testcase = testcase
        self.doc = turns_doc(INTERVAL, authorities=KEYS)
        self.nodes = []
        self.stopped = set()  # names of nodes under SIGSTOP
        self.lock = defer.DeferredLock()

    def node(self, name, key, peers=()):
        n = NodeProcess(self.testcase, doc=self.doc, key=key, p2p=True, peers=peers, interval=TICK)
        n.name = name
        self.testcase.addCleanup(self._save_log, n)
        self.testcase.addCleanup(self._cont, n)  # a stopped process cannot even be killed cleanly
        return n

    def _save_log(self, n):
        """Each run's whole output in the node's folder (node.log), to read after a failure."""
        with open(os.path.join(n.basedir, "node.log"), "wb") as f:
            for r in n.runs:
                f.write(bytes(r.out) + bytes(r.err) + b"\n--- end of run ---\n")

    def _cont(self, n):
        if n.running:
            n.proto.transport.signalProcess(signal.SIGCONT)

    async def start(self):
        for i, k in enumerate(KEYS):
            n = self.node(f"authority{i}", k, peers=[m.p2p_url for m in self.nodes])
            await n.start()
            self.nodes.append(n)

    def reachable(self):
        return [n for n in self.nodes if n.running and n.url and n.name not in self.stopped]

    def by_address(self, address):
        return next(n for n in self.nodes if n.key.address == address)

    def quietly(self, fn):
        """Run fn (giving a Deferred or not) between two rounds of the watch."""
        return self.lock.run(lambda: defer.maybeDeferred(fn))

    def signal(self, nodes, sig):
        for n in nodes:
            n.proto.transport.signalProcess(sig)
            if sig == signal.SIGSTOP:
                self.stopped.add(n.name)
            elif sig == signal.SIGCONT:
                self.stopped.discard(n.name)

    def logs(self, tail=5000):
        out = []
        for n in self.nodes:
            runs = "\n--- restart ---\n".join(
                (bytes(r.out) + bytes(r.err)).decode("utf-8", "replace")[-tail:] for r in n.runs)
            out.append(f"===== {n.name} ({n.basedir}) =====\n{runs}")
        return "\n".join(out)


class FinalityWatch:
    """Polls the finalized checkpoint of every reachable node every
    WATCH_PERIOD seconds, and each node's block at every height it reports
    finalized.  ``final`` maps each finalized height to the one block hash
    every node must hold there; ``problems`` lists every breach: a node's
    finalized height going down (also across a restart), a finalized height
    holding two blocks (on two nodes, or on one node over time)."""

    def __init__(self, net):
        self.net = net
        self.final = {}  # height -> block hash
        self.seen = {}  # node name -> finalized height last seen
        self.problems = []
        self.rounds = 0
        self._stop = False
        self._done = None

    def start(self):
        self._done = defer.ensureDeferred(self._run())

    async def _run(self):
        while not self._stop:
            await self.net.quietly(lambda: defer.ensureDeferred(self.round()))
            await sleep(WATCH_PERIOD)

    def stop(self):
        self._stop = True
        return self._done

    def note(self, n, height, block_hash):
        known = self.final.setdefault(height, block_hash)
        if known != block_hash:
            self.problems.append(f"{n.name} holds {block_hash[:16]} at finalized height {height}, "
                                 f"where {known[:16]} was finalized")

    async def block_hash(self, n, height):
        status, body = await n.get(f"/rpc/getBlock/{height}")
        if status != 200:
            self.problems.append(f"{n.name} has no block at its finalized height {height}: {status} {body}")
            return None
        return body["hash"]

    async def round(self):
        self.rounds += 1
        for n in self.net.reachable():
            try:
                head = await n.head()
                fin = head["finalized"]
                last = self.seen.get(n.name, 0)
                if fin["height"] < last:
                    self.problems.append(f"{n.name}'s finalized height went down from {last} to {fin['height']}")
                    continue
                self.note(n, fin["height"], fin["hash"])
                for h in range(last + 1 if n.name in self.seen else 0, fin["height"]):
                    got = await self.block_hash(n, h)
                    if got is not None:
                        self.note(n, h, got)
                self.seen[n.name] = fin["height"]
            except Exception as e:  # a reachable node that does not answer is a finding too
                self.problems.append(f"{n.name} did not answer the watch: {e!r}")

    async def verify(self, nodes):
        """Every node again, at every height it reported finalized: the
        block first seen there."""
        calls = []
        for n in nodes:
            for h in range(self.seen.get(n.name, -1) + 1):
                calls.append(lambda n=n, h=h: self._recheck(n, h))
        await many(calls, limit=8)

    async def _recheck(self, n, h):
        got = await self.block_hash(n, h)
        if got is not None:
            self.note(n, h, got)


class FinalityProcessTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.net = Network(self)
        self.watch = FinalityWatch(self.net)

    # -- helpers ---------------------------------------------------------------
    async def wait(self, predicate, what, timeout=30):
        try:
            return await wait_for(predicate, timeout=timeout, interval=0.1)
        except WaitTimeout:
            self.fail(f"gave up after {timeout} s waiting for {what() if callable(what) else what}\n"
                      f"watch problems: {self.watch.problems}\n{self.net.logs()}")

    async def heads(self, nodes):
        return {n.name: await n.head() for n in nodes}

    async def wait_all(self, nodes, check, what, timeout=30):
        """Wait until check(node, its getHead) holds on every node; the heads."""
        last = {}

        async def all_hold():
            for n in nodes:
                last[n.name] = await n.head()
                if not check(n, last[n.name]):
                    return False
            return dict(last)

        return await self.wait(all_hold, lambda: f"{what} (heads: {_brief(last)})", timeout)

    async def finalized_advances(self, nodes, by, what, timeout=30):
        """Wait until every node's finalized height is `by` above the
        highest any of them shows now; the heads then."""
        start = max(h["finalized"]["height"] for h in (await self.heads(nodes)).values())
        return await self.wait_all(nodes, lambda n, h: h["finalized"]["height"] >= start + by,
                                   f"{what}: finalized height {start + by} on {[n.name for n in nodes]}", timeout)

    async def converge(self, nodes, timeout=30):
        """One head: every node holds, at the first node's current head
        height, that node's head block."""
        head = await nodes[0].head()
        seen = {}

        async def agree():
            for n in nodes:
                status, body = await n.get(f"/rpc/getBlock/{head['height']}")
                seen[n.name] = body.get("hash") if status == 200 else None
            return set(seen.values()) == {head["hash"]}

        await self.wait(agree, lambda: f"every node to hold block {head} ({seen})", timeout)

    async def metrics(self, n):
        status, body = await n.get("/rpc/metrics")
        self.assertEqual(status, 200)
        return body["_raw"]

    async def assert_no_evidence(self, nodes):
        for n in nodes:
            text = await self.metrics(n)
            for kind in ("double_proposal", "double_vote", "surround_vote"):
                self.assertEqual(metric(text, "aitnode_evidence_total", kind=kind), 0,
                                 f"{n.name} found {kind} evidence\n{self.net.logs()}")
            self.assertEqual(metric(text, "aitnode_votes_total", result="conflict"), 0, n.name)
            self.assertNotIn("evidence found", n.output, n.name)

    # -- the test ----------------------------------------------------------------
    @inline
    async def test_four_authorities(self):
        await self.net.start()
        self.watch.start()
        try:
            await self.phase_finality()
            await self.phase_kill_and_restart()
            await self.phase_stop_two()
            await self.phase_cloned_key()
        finally:
            await self.watch.stop()
        await self.watch.verify(self.net.reachable())
        self.assertEqual(self.watch.problems, [], self.net.logs())
        self.assertGreater(self.watch.rounds, 20)
        # Every node reported finalized heights all along, and far.
        self.assertGreaterEqual(min(self.watch.seen.values()), 15, self.watch.seen)

    async def phase_finality(self):
        """Finality advances on every node; one head; one block at every
        finalized height (the watch)."""
        nodes = self.net.nodes
        up = max(h["height"] for h in (await self.heads(nodes)).values())  # all four run from here on
        await self.wait_all(nodes, lambda n, h: h["finalized"]["height"] >= 2, "finality to start everywhere", 40)
        heads = await self.finalized_advances(nodes, 3, "finality to advance")
        heads = await self.wait_all(nodes, lambda n, h: h["finalized"]["height"] >= up + 10, "ten blocks more")
        for h in heads.values():
            self.assertGreater(h["justified"]["height"], h["finalized"]["height"])
            self.assertGreater(h["height"], h["justified"]["height"])
        await self.converge(nodes)
        # Every authority proposes: the turns rotate (none jailed, none offline).
        top = min(h["finalized"]["height"] for h in heads.values())
        proposers = set()
        for height in range(up + 2, top + 1):
            status, body = await nodes[0].get(f"/rpc/getBlock/{height}")
            proposers.add(body["proposer"])
        self.assertEqual(proposers, {k.address for k in KEYS})
        self.assertEqual(self.watch.problems, [])
        await self.assert_no_evidence(nodes)

    async def phase_kill_and_restart(self):
        """SIGKILL one authority: 3 of 4 keep finalizing.  Restarted on its
        data_dir, it catches up, finalizes with the others again, and signs
        no vote at or below the one it persisted before it was killed."""
        victim = self.net.nodes[1]
        others = [n for n in self.net.nodes if n is not victim]
        await self.net.quietly(victim.kill)
        killed_run = victim.output
        record = vote_record(victim.data_dir)
        self.assertIsNotNone(record, "the authority persisted no vote")
        sent_before = vote_heights(killed_run)
        self.assertTrue(sent_before)
        # The record is written before the vote leaves (and before its log line).
        self.assertGreaterEqual(record["height"], max(sent_before))
        self.assertEqual(len(sent_before), len(set(sent_before)))
        await self.finalized_advances(others, 3, "finality with one of four authorities killed")

        # It dials the others at their current addresses (its own changed).
        victim.write_config({"p2p": {"peers": ", ".join(n.p2p_url for n in others)}})
        await victim.start()
        target = (await others[0].head())["finalized"]["height"]
        await self.wait_all([victim], lambda n, h: h["finalized"]["height"] >= target, "the restarted node to catch up")
        await self.finalized_advances(self.net.nodes, 2, "finality with all four again")
        await self.converge(self.net.nodes)
        sent_after = vote_heights(victim.output)
        self.assertTrue(sent_after, "the restarted authority sent no vote")
        self.assertGreater(min(sent_after), record["height"])
        self.assertEqual(set(sent_after) & set(sent_before), set())
        # Nobody saw two votes (or two headers) from it.
        await self.assert_no_evidence(self.net.nodes)

    async def phase_stop_two(self):
        """SIGSTOP two of four: the other two go on making blocks, but
        with 2 votes of the 3 needed nothing is justified or finalized;
        SIGCONT: finality resumes, one chain, no finalized block forked."""
        status, aset = await self.net.nodes[0].get("/rpc/getAuthorities")
        self.assertEqual(status, 200)
        self.assertEqual(aset["quorum"], 3)
        order = [m["address"] for m in aset["authorities"]]
        # Not neighbours in the rotation: each stopped one's slot passes to a live backup.
        stopped = [self.net.by_address(order[1]), self.net.by_address(order[3])]
        live = [n for n in self.net.nodes if n not in stopped]
        await self.net.quietly(lambda: self.net.signal(stopped, signal.SIGSTOP))
        h0 = max(h["height"] for h in (await self.heads(live)).values())
        # Votes the stopped two sent before stopping may still ride in the next
        # blocks (one of them may have made a block still on its way, too).
        settled = await self.wait_all(live, lambda n, h: h["height"] >= h0 + 3, "blocks from the two live authorities")
        frozen = {name: (h["justified"], h["finalized"]) for name, h in settled.items()}
        later = await self.wait_all(live, lambda n, h: h["height"] >= h0 + 8, "more blocks with two of four stopped", 40)
        for name, h in later.items():
            self.assertEqual((h["justified"], h["finalized"]), frozen[name],
                             f"{name}: finality moved with two of four authorities stopped\n{self.net.logs()}")
        self.net.signal(stopped, signal.SIGCONT)
        await self.finalized_advances(self.net.nodes, 3, "finality to resume after SIGCONT", 40)
        await self.converge(self.net.nodes)
        self.assertEqual(self.watch.problems, [])

    async def phase_cloned_key(self):
        """A second process with authority X's key and its own data_dir,
        started before its link to the others worked, signs its own block 1
        (X's turn for block 1 came long ago); peered with the others, the two
        headers X signed at height 1 are evidence: X is jailed, the clone
        and/or X log the key conflict, and finality goes on without X."""
        originals = list(self.net.nodes)
        status, real1 = await originals[0].get("/rpc/getBlock/1")
        x = self.net.by_address(real1["proposer"])
        clone = self.net.node("clone", x.key)
        await clone.start()
        await self.wait_all([clone], lambda n, h: h["height"] >= 1, "the clone's first block")
        status, own1 = await clone.get("/rpc/getBlock/1")
        self.assertEqual(own1["proposer"], x.key.address)
        self.assertNotEqual(own1["hash"], real1["hash"])
        await self.net.quietly(lambda: self.net.nodes.append(clone))  # watched from now on
        peered_at = (await originals[0].head())["height"]
        for n in originals:
            status, body = await clone.admin("/admin/peers/add", {"addr": n.p2p_url})
            self.assertEqual(status, 200, body)

        async def jailed_everywhere():
            for n in originals:
                status, body = await n.get("/rpc/getAuthorities")
                by = {m["address"]: m["jailed"] for m in body["authorities"]}
                if not by[x.key.address]:
                    return False
                self.assertEqual([a for a, j in by.items() if j], [x.key.address])
            return body

        aset = await self.wait(jailed_everywhere, f"{x.name} to be jailed on every node", 40)
        self.assertEqual(aset["quorum"], 3)  # 3 of the 3 left
        # The evidence is in a block: two headers X signed at one height.
        head = (await originals[0].head())["height"]
        found = []
        for height in range(peered_at, head + 1):
            status, body = await originals[0].get(f"/rpc/getBlock/{height}")
            found += [(height, ev) for ev in body["evidence"]]
        self.assertTrue(found, f"no block from {peered_at} to {head} carries evidence")
        for _, ev in found:
            self.assertEqual(ev["kind"], "proposal")
            self.assertEqual({ev["a"]["header"]["proposer"], ev["b"]["header"]["proposer"]}, {x.key.address})
            self.assertEqual(ev["a"]["header"]["height"], ev["b"]["header"]["height"])
            self.assertNotEqual(ev["a"]["header"], ev["b"]["header"])
        jailed_at = found[0][0]
        # The operator learns of it: a log line and the metric.
        conflicts = []
        for n in (clone, x):
            if CONFLICT_LOG in n.output:
                self.assertEqual(metric(await self.metrics(n), "aitnode_authority_key_conflict"), 1, n.name)
                conflicts.append(n.name)
        self.assertTrue(conflicts, f"neither the clone nor {x.name} logged the key conflict\n{self.net.logs()}")
        # Finality goes on with the three others, on every node (the clone follows).
        heads = await self.finalized_advances(self.net.nodes, 3, "finality after the jailing", 40)
        await self.converge(self.net.nodes)
        for n in self.net.nodes:  # every node, the clone too, says so in its log
            self.assertIn(f"authority jailed: {x.key.address} by evidence in block {jailed_at}", n.output, n.name)
        top = min(h["height"] for h in heads.values())
        # Jailed from the next block on: no turn for X after the evidence's
        # block, and no vote from it after the last one for that block.
        for h in range(jailed_at + 1, top + 1):
            status, body = await originals[0].get(f"/rpc/getBlock/{h}")
            self.assertNotEqual(body["proposer"], x.key.address, f"jailed {x.name} proposed block {h}")
            if h > jailed_at + 1:
                self.assertNotIn(x.key.address, [v["voter"] for v in body["votes"]], h)


def _brief(heads):
    return {name: (h.get("height"), h.get("justified", {}).get("height"), h.get("finalized", {}).get("height"))
            for name, h in heads.items()}
