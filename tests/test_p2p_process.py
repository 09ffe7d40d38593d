"""Peers across processes: real `twistd aitnode` nodes on loopback.

Every node runs in its own process (its own reactor) with [rpc] and [p2p]
listening on ephemeral loopback ports (tests.procs.NodeProcess with
p2p=True).  A node that dials another is started after it, with the
other's p2p URL in [p2p] peers.  Waits are bounded polls; on a timeout the
failure carries every node's log.  Processes are killed in cleanup.
"""

import os
import re
import signal
import time

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from aitnode import p2p as p2pmod
from aitnode.chain import Chain
from aitnode.crypto import KeyPair
from aitnode.genesis import Genesis
from aitnode.node import compose
from aitnode.store import Store

from tests.common import ALICE, AUTHORITY as AUTHORITY_KEY, BOB, CAROL, genesis_doc, key, transfer, wire
from tests.procs import NodeProcess, WaitTimeout, inline, turns_doc, wait_for

K1, K2 = key(31), key(32)


class PeersTestCase(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.nodes = []

    def node(self, **kw):
        kw.setdefault("p2p", True)
        kw.setdefault("interval", 0.1)
        n = NodeProcess(self, **kw)
        n.name = kw.pop("name", f"node{len(self.nodes)}")
        self.nodes.append(n)
        return n

    def logs(self):
        out = []
        for n in self.nodes:
            runs = "\n--- restart ---\n".join(
                (bytes(r.out) + bytes(r.err)).decode("utf-8", "replace")[-6000:] for r in n.runs)
            out.append(f"===== {n.basedir} =====\n{runs}")
        return "\n".join(out)

    async def wait(self, predicate, what, timeout=30):
        try:
            return await wait_for(predicate, timeout=timeout, interval=0.1)
        except WaitTimeout:
            self.fail(f"gave up after {timeout} s waiting for {what}\n{self.logs()}")

    async def height(self, n):
        return (await n.head())["height"]

    async def wait_height(self, n, height, timeout=30):
        last = {}

        async def reached():
            last.update(await n.head())
            return last["height"] >= height

        await self.wait(reached, lambda: f"{n.basedir} to reach height {height} (head {last})", timeout)

    async def hashes(self, n, upto):
        out = []
        for h in range(upto + 1):
            status, body = await n.get(f"/rpc/getBlock/{h}")
            self.assertEqual(status, 200, body)
            out.append(body["hash"])
        return out

    async def assertSameChain(self, nodes, upto):
        """Every node has the same block hash at every height 0..upto."""
        chains = [await self.hashes(n, upto) for n in nodes]
        for n, chain in zip(nodes[1:], chains[1:]):
            self.assertEqual(chain, chains[0], f"{n.basedir} differs\n{self.logs()}")
        self.assertEqual(len(set(chains[0])), upto + 1)
        return chains[0]

    async def converge(self, nodes, timeout=30):
        """Wait until every node is at least at the first one's current
        height with the same block there; check the chains agree at every
        height up to it; return that height."""
        target = await self.height(nodes[0])
        for n in nodes[1:]:
            await self.wait_height(n, target, timeout)
        seen = {}

        async def agree():
            for n in nodes:
                status, body = await n.get(f"/rpc/getBlock/{target}")
                seen[n.basedir] = body.get("hash")
            return len(set(seen.values())) == 1

        await self.wait(agree, lambda: f"one block at height {target} ({seen})", timeout)
        await self.assertSameChain(nodes, target)
        return target

    async def peers(self, n):
        status, body = await n.get("/p2p/peers")
        self.assertEqual(status, 200, body)
        return body

    async def ready_ids(self, n):
        return {p["node_id"] for p in (await self.peers(n))["peers"] if p["state"] == "ready"}

    async def wait_linked(self, a, b, timeout=20):
        """Wait until a and b list each other as ready peers."""
        a_id = (await self.peers(a))["node_id"]
        b_id = (await self.peers(b))["node_id"]

        async def linked():
            return b_id in await self.ready_ids(a) and a_id in await self.ready_ids(b)

        await self.wait(linked, f"{a.basedir} and {b.basedir} to be peers", timeout)

    async def send(self, n, tx):
        status, body = await n.post("/rpc/sendTx", wire(tx))
        self.assertEqual(status, 200, body)
        return tx.hash

    async def wait_included(self, n, tx_hash, timeout=30):
        last = {}

        async def included():
            status, body = await n.get(f"/rpc/getTx/{tx_hash}")
            last.update(status=status, body=body)
            return status == 200 and body["status"] == "included" and body

        return await self.wait(included, lambda: f"{tx_hash} included at {n.basedir} (last {last})", timeout)


class ConvergenceTests(PeersTestCase):
    @inline
    async def test_three_nodes_one_chain_and_relayed_tx(self):
        """authority <- f1 <- f2: one chain everywhere; a tx sent to f2
        reaches the authority through f1 and is included."""
        auth = await self.node().start()
        f1 = await self.node(key=None, peers=[auth.p2p_url]).start()
        f2 = await self.node(key=None, peers=[f1.p2p_url]).start()
        await self.wait_linked(auth, f1)
        await self.wait_linked(f1, f2)
        self.assertEqual(len(await self.ready_ids(f2)), 1)  # f2 knows only f1
        t = transfer(ALICE, 1, BOB, 1234)
        await self.send(f2, t)
        at_f2 = await self.wait_included(f2, t.hash)
        at_auth = await self.wait_included(auth, t.hash)
        self.assertEqual(at_f2["block"], at_auth["block"])
        await self.wait_height(auth, 10)
        await self.converge([auth, f1, f2])
        for n in (auth, f1, f2):
            status, body = await n.get(f"/rpc/getBalance/{BOB.address}")
            self.assertEqual(body["balance"], 10**6 + 1234)
        listed = (await self.peers(f1))["peers"]
        self.assertEqual(sorted(p["direction"] for p in listed if p["state"] == "ready"), ["in", "out"])
        self.assertTrue(all(p["score"] == 0 for p in listed), listed)

    @inline
    async def test_peer_added_over_admin_rpc(self):
        auth = await self.node().start()
        f = await self.node(key=None).start()
        status, body = await f.admin("/admin/peers/add", {"addr": auth.p2p_url})
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"addr": auth.p2p_url, "added": True})
        status, body = await f.admin("/admin/peers/add", {"addr": auth.p2p_url})
        self.assertEqual(body["added"], False)
        status, body = await f.admin("/admin/peers/add", {"addr": "http://nope"})
        self.assertEqual((status, body["error"]["code"]), (400, "bad_peer_addr"))
        await self.wait_linked(auth, f)
        self.assertEqual((await self.peers(f))["dialing"], [auth.p2p_url])
        await self.wait_height(auth, 5)
        await self.converge([auth, f])


class CatchUpTests(PeersTestCase):
    @inline
    async def test_stopped_follower_catches_up(self):
        auth = await self.node(interval=0.05).start()
        f = await self.node(key=None, peers=[auth.p2p_url]).start()
        await self.wait_linked(auth, f)
        await self.wait_height(f, 3)
        had = await self.height(f)
        await f.stop(signal.SIGTERM)
        self.assertIn("node stopped", f.output)  # a clean stop (twistd exits by the signal)
        self.assertNotIn("Traceback", f.output)
        stopped_at = await self.height(auth)
        missed = 60
        await self.wait_height(auth, stopped_at + missed)
        await f.start()
        # It starts from its own data, well behind, and catches up.
        started = int(re.search(r"node started chain=\S+ height=(\d+)", f.output).group(1))
        self.assertGreaterEqual(started, had)
        self.assertLessEqual(started, stopped_at + 2)
        top = await self.converge([auth, f])
        self.assertGreaterEqual(top, stopped_at + missed)

    @inline
    async def test_late_node_syncs_from_zero(self):
        auth = await self.node(interval=0.05).start()
        f1 = await self.node(key=None, peers=[auth.p2p_url]).start()
        t = transfer(ALICE, 1, CAROL, 99)
        await self.send(auth, t)
        await self.wait_height(auth, 80)
        late = self.node(key=None, peers=[f1.p2p_url])  # reaches auth through f1 only
        self.assertFalse(os.path.exists(late.data_dir))
        await late.start()
        top = await self.converge([auth, f1, late])
        self.assertGreaterEqual(top, 80)
        status, body = await late.get(f"/rpc/getTx/{t.hash}")
        self.assertEqual(body["status"], "included")


class RefusalTests(PeersTestCase):
    @inline
    async def test_other_genesis_refused(self):
        auth = await self.node().start()
        other = await self.node(key=None, doc=genesis_doc(accounts=[(CAROL.address, 5)]),
                                peers=[auth.p2p_url]).start()
        await self.wait(lambda: "refused" in other.output and "refused" in auth.output,
                        "both sides to log the refusal")
        start = await self.height(auth)
        await self.wait_height(auth, start + 5)
        self.assertEqual(await self.ready_ids(auth), set())
        self.assertEqual(await self.ready_ids(other), set())
        self.assertEqual(await self.height(other), 0)
        self.assertIn("genesis differs", auth.output + other.output)

    @inline
    async def test_garbage_peer_dropped_node_keeps_going(self):
        auth = await self.node().start()
        f = await self.node(key=None, peers=[auth.p2p_url]).start()
        await self.wait_linked(auth, f)
        # 1. A WebSocket client that gets the node's hello, then sends garbage.
        client = await connect_ws(auth.p2p_url)
        await self.wait(lambda: client.got, "the node's hello")
        self.assertEqual(client.got[0]["type"], "hello")
        client.sendMessage(b"\xff\x00 this is not CBOR", isBinary=True)
        await self.wait(lambda: client.closed is not None, "the node to close the garbage connection")
        self.assertEqual(client.closed[0], p2pmod.CLOSE_PROTOCOL)
        # 2. A raw TCP client: a valid upgrade, then bytes that are no frames.
        raw = await connect_raw(auth.p2p_port)
        raw.transport.write(upgrade_request(auth.p2p_port))
        await self.wait(lambda: b"101" in raw.data, "the WebSocket upgrade")
        raw.transport.write(b"\xff" * 64)  # FIN and all RSV bits set: no valid frame
        await self.wait(lambda: raw.lost, "the node to drop the raw connection")
        # 3. Plain HTTP garbage on the p2p port.
        raw2 = await connect_raw(auth.p2p_port)
        raw2.transport.write(b"\x16\x03\x01 not http at all\r\n\r\n")
        await self.wait(lambda: raw2.lost, "the node to drop the non-HTTP connection")
        # The node goes on producing, and its real peer follows.
        start = await self.height(auth)
        await self.wait_height(auth, start + 5)
        await self.converge([auth, f])
        self.assertIn("misbehaved", auth.output)
        self.assertEqual(len(await self.ready_ids(auth)), 1)


class AuthorityTests(PeersTestCase):
    @inline
    async def test_two_authorities_alternate_and_survive_a_stop(self):
        doc = turns_doc(0.25, authorities=(K1, K2))
        order = doc["authorities"]  # authorities[h mod 2] is in turn at height h
        a = await self.node(doc=doc, key=K1, interval=0.25).start()
        b = await self.node(doc=doc, key=K2, interval=0.25, peers=[a.p2p_url]).start()
        await self.wait_linked(a, b)
        joined = max(await self.height(a), await self.height(b))
        await self.wait_height(a, joined + 10)
        top = await self.converge([a, b])
        proposers = {}
        for h in range(joined + 2, top + 1):
            status, body = await a.get(f"/rpc/getBlock/{h}")
            proposers[h] = body["proposer"]
        self.assertEqual(set(proposers.values()), {K1.address, K2.address})
        in_turn = [h for h, p in proposers.items() if p == order[h % 2]["address"]]
        self.assertGreaterEqual(len(in_turn), len(proposers) - 2, (proposers, self.logs()))
        # With b stopped, a goes on alone (out of turn on b's heights).
        await b.stop()
        start = await self.height(a)
        await self.wait_height(a, start + 4)
        for h in range(start + 2, start + 5):
            status, body = await a.get(f"/rpc/getBlock/{h}")
            self.assertEqual(body["proposer"], K1.address)


# -- raw clients ---------------------------------------------------------------

class GarbageClient(WebSocketClientProtocol):
    def onConnect(self, response):
        self.got = []
        self.closed = None

    def onMessage(self, payload, isBinary):
        import cbor2
        self.got.append(cbor2.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.closed = (code, reason)
        self.factory.closed.append(self)


@inline
async def connect_ws(url):
    factory = WebSocketClientFactory(url)
    factory.protocol = GarbageClient
    factory.closed = []
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0)
    proto = await connectProtocol(TCP4ClientEndpoint(reactor, factory.host, factory.port),
                                  factory.buildProtocol(None))
    await proto.is_open
    return proto


class RawProtocol(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


def connect_raw(port):
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawProtocol())


def upgrade_request(port):
    return (
        f"GET /p2p/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class KilledReorganisationTests(PeersTestCase):
    timeout = 180

    def chain_in(self, n, doc, key, blocks, per_block, amount):
        """Fill n's data folder (before it starts) with blocks of key's,
        stamped with the wall clock; returns (head, hashes)."""
        clock = Clock()
        clock.advance(int(time.time()) - 5)
        node = compose(n.data_dir, Genesis(doc), clock, key=key)
        try:
            nonce = 0
            for _ in range(blocks):
                for _ in range(per_block):
                    nonce += 1
                    node.admission.submit(transfer(ALICE, nonce, CAROL, amount).to_wire())
                node.pipeline.propose()
            height = node.chain.head()[0]
            return node.chain.head(), [node.store.hash_at(h) for h in range(height + 1)]
        finally:
            node.store.close()

    def check_folder(self, n, doc):
        """The chain in n's folder is whole: every block links to the one
        below, every transaction of every block is recorded, and the state
        is the head's; returns its hashes."""
        store = Store(n.data_dir)
        try:
            chain = Chain(store, Genesis(doc))
            height = store.head()[0]
            out = [store.hash_at(h) for h in range(height + 1)]
            for h in range(1, height + 1):
                block = store.block_by_hash(out[h])
                self.assertEqual(block["header"]["parent"], out[h - 1])
                for tx_hash in block["txs"]:
                    self.assertEqual(store.tx_record(tx_hash)["block"], out[h])
            self.assertIsNone(store.hash_at(height + 1))
            self.assertEqual(chain.view().root(), chain.head_header()["state_root"])
            return out
        finally:
            store.close()

    @inline
    async def test_killed_while_reorganising_keeps_one_branch_whole(self):
        """A follower holding one authority's 150 blocks meets a peer with
        the other authority's 200 (2,000 transfers): SIGKILLed as soon as it
        starts checking that branch, it restarts with one branch whole;
        left alone, it switches to the new one whole.  (The kill inside the
        switch's write transaction itself is tests.test_p2p_attacks
        AtomicSwitchTests: too short a moment to hit from outside.)"""
        doc = genesis_doc(authorities=(K1, K2))
        b = self.node(key=None, doc=doc)
        new_head, new = self.chain_in(b, doc, K2, 200, 10, 1)
        await b.start()
        a = self.node(key=None, doc=doc, peers=[b.p2p_url])
        old_head, old = self.chain_in(a, doc, K1, 150, 2, 2)
        a.spawn()
        await self.wait(lambda: "event=reorg_check" in a.output or "checking a competing branch" in a.output,
                        "a to start checking b's branch")
        await a.kill()
        # Almost always killed while it checks (the old branch); were the
        # switch done by then, the new one: never a mix, never a gap.
        self.assertIn(self.check_folder(a, doc), (old, new))
        await a.start()
        await self.wait_height(a, 200)
        head = await self.head_of(a)
        self.assertEqual((head["height"], head["hash"]), tuple(new_head))
        await a.stop()
        self.assertEqual(self.check_folder(a, doc), new)

    async def head_of(self, n):
        return await n.head()


class DeafFloodTests(PeersTestCase):
    timeout = 120

    @inline
    async def test_get_blocks_flood_from_a_peer_that_never_reads(self):
        """A peer sends 600 get_blocks for 300 blocks each (about 100 KB per
        answer) and stops reading its socket: the node's memory stays
        within bounds (it grew by the answers' size before), it cuts the
        peer off, and it goes on answering getHead."""
        doc = genesis_doc()
        n = self.node(doc=doc, key=None)
        KilledReorganisationTests.chain_in(self, n, doc, AUTHORITY_KEY, 300, 1, 1)
        await n.start()
        pid = n.proto.transport.pid
        before = rss_kib(pid)
        client = await connect_ws(n.p2p_url)
        await self.wait(lambda: client.got, "the node's hello")
        theirs = client.got[0]["data"]
        nk = KeyPair.generate()
        hello = dict(theirs, node_id=nk.public_key.hex(), challenge="ab" * 32, height=0, head=theirs["genesis"])
        client.sendMessage(p2pmod.encode("hello", hello), isBinary=True)
        sig = nk.sign(p2pmod.auth_bytes(theirs["chain_id"], theirs["challenge"], nk.public_key.hex())).hex()
        client.sendMessage(p2pmod.encode("auth", {"sig": sig}), isBinary=True)
        await self.wait(lambda: "peer joined" in n.output, "the handshake")
        client.transport.pauseProducing()  # from now on it reads nothing
        for _ in range(600):
            client.sendMessage(p2pmod.encode("get_blocks", {"from": 1, "limit": 512}), isBinary=True)
        await self.wait(lambda: "get_blocks while another waits" in n.output, "the node to refuse the flood")
        grown = rss_kib(pid) - before
        self.assertLess(grown, 64 * 1024, f"the node grew by {grown} KiB\n{self.logs()}")
        head = await n.head()
        self.assertEqual(head["height"], 300)
        client.transport.resumeProducing()
        await self.wait(lambda: client.closed is not None, "the connection to close")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
