"""Peer protocol tests, in process: real autobahn protocols over
twisted.test.iosim's in-memory transports, every timer on one Clock.

Each simulated node is a Node from tests.common.make_node with its own
P2P manager; ``Net.connect`` wires a client (the dialing side) to the
other node's server factory with iosim.FakeTransport, and ``Net.settle``
pumps bytes and runs due Clock calls until nothing moves.  Nothing
sleeps: time passes only when a test advances the Clock.
"""

import re

import cbor2
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from txaio._common import _BatchedTimer

from aitnode import crypto
from aitnode import p2p as p2pmod
from aitnode.p2p import sync as sync_mod
from aitnode.blocks import block_hash
from aitnode.genesis import make_genesis
from aitnode.crypto import KeyPair
from aitnode.p2p import P2P, ClientPeer, auth_bytes, encode

from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, genesis_doc, key, make_node, transfer,
)

K1, K2 = key(21), key(22)  # two authorities for the multi-authority tests
GENESIS_TIME = 1_700_000_000  # tests.common.genesis_doc's timestamp
SERVER_ADDR = IPv4Address("TCP", "127.0.0.1", 9000)


def clock_timers(factory, clock):
    """Point autobahn's batched timers (auto-ping, handshake and close
    timeouts) at the Clock; txaio would put them on the global reactor."""
    factory._batched_timer = _BatchedTimer(
        200.0, 1000, seconds_provider=clock.seconds, delayed_call_creator=clock.callLater)


class RawClient(WebSocketClientProtocol):
    """A WebSocket client that speaks no aitnode on its own: the test sends
    what it wants and reads what came back."""

    def onConnect(self, response):
        self.got = []
        self.closed = None
        self.opened = False

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.got.append(cbor2.loads(payload) if isBinary else payload)

    def onClose(self, wasClean, code, reason):
        self.closed = (code, reason)

    def send(self, mtype, data):
        self.sendMessage(encode(mtype, data), isBinary=True)

    def types(self):
        return [m["type"] for m in self.got if type(m) is dict]

    def first(self, mtype):
        return next(m["data"] for m in self.got if type(m) is dict and m.get("type") == mtype)


class Link:
    """One in-memory connection: the dialing side's and the accepting side's protocols."""

    def __init__(self, client, server, pump):
        self.client, self.server, self.pump = client, server, pump

    @property
    def closed(self):
        return self.pump.clientIO.disconnected and self.pump.serverIO.disconnected


class Net:
    """Simulated nodes sharing one Clock, and the links between them."""

    def __init__(self, testcase):
        self.tc = testcase
        self.clock = Clock()
        # Time starts at the genesis timestamp: blocks are stamped with the
        # clock, and a node refuses blocks stamped ahead of its own clock.
        self.clock.advance(GENESIS_TIME)
        self.links = []
        self._port = 40000
        testcase.addCleanup(self.close)

    def peer(self, doc=None, key=AUTHORITY, sync_batch=p2pmod.SYNC_BATCH, node_key=None, **kw):
        """A node with its P2P manager; kw go to make_node (mempool, verifier...)."""
        node = make_node(self.tc, doc=doc, key=key, clock=self.clock, **kw)
        p2p = P2P(node, node_key or KeyPair.generate(), self.clock, sync_batch=sync_batch)
        clock_timers(p2p.server_factory, self.clock)
        p2p.startService()
        self.tc.addCleanup(lambda: p2p.running and p2p.stopService())
        p2p.got = []  # (conn, type, data) of every message p2p received, in order
        received = p2p.received

        def recording(conn, mtype, data):
            p2p.got.append((conn, mtype, data))
            return received(conn, mtype, data)

        p2p.received = recording
        p2p.broadcasts = []  # (type, data) of every broadcast, in order
        broadcast = p2p.broadcast

        def counting(mtype, data, exclude=None):
            p2p.broadcasts.append((mtype, data))
            return broadcast(mtype, data, exclude)

        p2p.broadcast = counting
        return p2p

    def connect(self, a, b, protocol=ClientPeer):
        """a dials b; returns the Link, after the handshake settled.

        a is a P2P, or None with a raw protocol class."""
        self._port += 1
        client_addr = IPv4Address("TCP", "127.0.0.1", self._port)
        server = b.server_factory.buildProtocol(client_addr)
        cf = WebSocketClientFactory("ws://127.0.0.1:9000/p2p/ws")
        cf.protocol = protocol
        cf.p2p = a
        p2pmod._options(cf, self.clock)
        clock_timers(cf, self.clock)
        client = cf.buildProtocol(SERVER_ADDR)
        st = iosim.FakeTransport(server, isServer=True, hostAddress=SERVER_ADDR, peerAddress=client_addr)
        ct = iosim.FakeTransport(client, isServer=False, hostAddress=client_addr, peerAddress=SERVER_ADDR)
        pump = iosim.connect(server, st, client, ct, greet=False, clock=self.clock)
        link = Link(client, server, pump)
        self.links.append(link)
        self.settle()
        return link

    def settle(self):
        """Pump every link and run due calls until nothing moves."""
        for _ in range(10_000):
            moved = False
            for link in self.links:
                if not link.closed and link.pump.flush():
                    moved = True
            now = self.clock.seconds()
            if any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                self.clock.advance(0)
                moved = True
            if not moved:
                return
        raise AssertionError("the network never settled")

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.settle()

    def close(self):
        for link in self.links:
            if not link.closed:
                link.pump.clientIO.loseConnection()
        self.settle()


def hashes(p2p):
    store = p2p.node.store
    return [store.hash_at(h) for h in range(p2p.node.chain.head()[0] + 1)]


def conn_to(p2p, other):
    """p2p's ready connection to the node other."""
    for conn in p2p.conns:
        if conn.remote_id == other.node_id:
            return conn
    raise AssertionError(f"no ready connection to {other.node_id[:12]}")


def frames(p2p, mtype):
    return [data for _, t, data in p2p.got if t == mtype]


class P2PTestCase(SynchronousTestCase):
    def setUp(self):
        self.net = Net(self)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, event):
        return [e for e in self.events if e.get("event") == event]

    def assertSameChain(self, *peers):
        first = hashes(peers[0])
        for p in peers[1:]:
            self.assertEqual(hashes(p), first)
        return first


# -- handshake ---------------------------------------------------------------

class HandshakeTests(P2PTestCase):
    def test_handshake_both_ways(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        link = self.net.connect(follower, auth)
        self.assertFalse(link.closed)
        self.assertEqual(len(auth.conns), 1)
        self.assertEqual(len(follower.conns), 1)
        a_view, f_view = auth.peer_list(), follower.peer_list()
        self.assertEqual(a_view["node_id"], auth.node_id)
        self.assertEqual(f_view["node_id"], follower.node_id)
        [seen_by_auth] = a_view["peers"]
        [seen_by_follower] = f_view["peers"]
        self.assertEqual(seen_by_auth["node_id"], follower.node_id)
        self.assertEqual(seen_by_auth["state"], "ready")
        self.assertEqual(seen_by_auth["direction"], "in")
        self.assertEqual(seen_by_auth["score"], 0)
        self.assertEqual(seen_by_follower["node_id"], auth.node_id)
        self.assertEqual(seen_by_follower["state"], "ready")
        self.assertEqual(seen_by_follower["direction"], "out")
        self.assertEqual(seen_by_follower["height"], 0)
        self.assertEqual(seen_by_follower["head"], auth.node.chain.genesis.hash)
        # The peer table in LMDB remembers the peer.
        self.assertIn(follower.node_id, auth.node.local.peers())
        self.assertIn(auth.node_id, follower.node.local.peers())
        self.assertEqual(len(self.logged("peer_joined")), 2)

    def test_hello_carries_head(self):
        auth = self.net.peer()
        for _ in range(3):
            auth.node.pipeline.propose()
        raw = self.net.connect(None, auth, protocol=RawClient).client
        hello = raw.first("hello")
        self.assertEqual(hello["chain_id"], CHAIN_ID)
        self.assertEqual(hello["genesis"], auth.node.chain.genesis.hash)
        self.assertEqual(hello["version"], p2pmod.VERSION)
        self.assertEqual(hello["node_id"], auth.node_id)
        self.assertEqual(hello["height"], 3)
        self.assertEqual(hello["head"], auth.node.store.hash_at(3))
        self.assertEqual(len(bytes.fromhex(hello["challenge"])), 32)

    def assertRefused(self, link, a, b):
        self.assertTrue(link.closed)
        self.assertEqual(a.conns, set())
        self.assertEqual(b.conns, set())
        self.assertEqual([p for p in a.peer_list()["peers"] if p["state"] == "ready"], [])
        self.assertEqual([p for p in b.peer_list()["peers"] if p["state"] == "ready"], [])

    def test_other_genesis_refused(self):
        auth = self.net.peer()
        other = self.net.peer(doc=genesis_doc(accounts=[(CAROL.address, 5)]), key=None)
        link = self.net.connect(other, auth)
        self.assertRefused(link, auth, other)
        reasons = [d["reason"] for _, t, d in other.got + auth.got if t == "reject"]
        self.assertTrue(reasons)
        self.assertTrue(all("genesis differs" in r for r in reasons), reasons)
        self.assertTrue(self.logged("peer_refused"))

    def test_other_chain_id_refused(self):
        auth = self.net.peer()
        doc = make_genesis("ait-other", [AUTHORITY], [(ALICE.address, 10**12)], timestamp=1_700_000_000)
        other = self.net.peer(doc=doc, key=None)
        raw = self.net.connect(None, auth, protocol=RawClient)
        hello = dict(raw.client.first("hello"), chain_id="ait-other", node_id=KeyPair.generate().public_key.hex())
        raw.client.send("hello", hello)
        self.net.settle()
        self.assertTrue(raw.closed)
        self.assertIn("chain_id differs", raw.client.first("reject")["reason"])
        self.assertNotIn("auth", raw.client.types())  # refused before proving anything
        link = self.net.connect(other, auth)
        self.assertRefused(link, auth, other)

    def test_other_version_refused(self):
        auth = self.net.peer()
        raw = self.net.connect(None, auth, protocol=RawClient)
        hello = dict(raw.client.first("hello"), version=p2pmod.VERSION + 1,
                     node_id=KeyPair.generate().public_key.hex())
        raw.client.send("hello", hello)
        self.net.settle()
        self.assertTrue(raw.closed)
        self.assertIn("version differs", raw.client.first("reject")["reason"])
        self.assertEqual(auth.conns, set())

    def raw_handshake(self, auth, node_key, sign_challenge=None):
        """A raw client that says hello as node_key and signs a challenge."""
        link = self.net.connect(None, auth, protocol=RawClient)
        raw = link.client
        theirs = raw.first("hello")
        mine = dict(theirs, node_id=node_key.public_key.hex(), challenge="ab" * 32, height=0,
                    head=auth.node.chain.genesis.hash)
        raw.send("hello", mine)
        challenge = theirs["challenge"] if sign_challenge is None else sign_challenge
        raw.send("auth", {"sig": node_key.sign(auth_bytes(CHAIN_ID, challenge, node_key.public_key.hex())).hex()})
        self.net.settle()
        return link

    def test_good_raw_auth_accepted(self):
        auth = self.net.peer()
        nk = KeyPair.generate()
        link = self.raw_handshake(auth, nk)
        self.assertFalse(link.closed)
        self.assertEqual([c.remote_id for c in auth.conns], [nk.public_key.hex()])
        # The node proved its own id against our challenge.
        sig = bytes.fromhex(link.client.first("auth")["sig"])
        self.assertTrue(crypto.verify(bytes.fromhex(auth.node_id), sig, auth_bytes(CHAIN_ID, "ab" * 32, auth.node_id)))

    def test_bad_auth_signature_refused(self):
        auth = self.net.peer()
        nk = KeyPair.generate()
        link = self.raw_handshake(auth, nk, sign_challenge="cd" * 32)  # not the challenge it was given
        self.assertTrue(link.closed)
        self.assertEqual(auth.conns, set())
        # Before auth proved an id, misbehaviour counts against the address
        # only: an id it merely claimed is never penalised (or banned).
        self.assertEqual(auth.scores["127.0.0.1"], p2pmod.PENALTY["protocol"])
        self.assertNotIn(nk.public_key.hex(), auth.scores)
        self.assertTrue(self.logged("peer_penalized"))

    def test_auth_by_another_key_refused(self):
        auth = self.net.peer()
        claimed, actual = KeyPair.generate(), KeyPair.generate()
        link = self.net.connect(None, auth, protocol=RawClient)
        raw = link.client
        theirs = raw.first("hello")
        raw.send("hello", dict(theirs, node_id=claimed.public_key.hex(), challenge="ab" * 32))
        raw.send("auth", {"sig": actual.sign(auth_bytes(CHAIN_ID, theirs["challenge"], claimed.public_key.hex())).hex()})
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertEqual(auth.conns, set())

    def test_connection_to_self_closed(self):
        nk = KeyPair.generate()
        a = self.net.peer(node_key=nk)
        b = self.net.peer(key=None, node_key=nk)
        link = self.net.connect(b, a)
        self.assertTrue(link.closed)
        self.assertEqual(a.conns, set())

    def test_disconnect_leaves_peer_table(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        link = self.net.connect(follower, auth)
        link.client.dropConnection(abort=True)
        self.net.settle()
        self.assertEqual(auth.conns, set())
        [rec] = auth.peer_list()["peers"]
        self.assertEqual(rec["node_id"], follower.node_id)
        self.assertEqual(rec["state"], "disconnected")


# -- gossip ------------------------------------------------------------------

class GossipTests(P2PTestCase):
    def line(self):
        """authority <- f1 <- f2 (each arrow a connection; f2 reaches the
        authority only through f1)."""
        auth = self.net.peer()
        f1 = self.net.peer(key=None)
        f2 = self.net.peer(key=None)
        self.net.connect(f1, auth)
        self.net.connect(f2, f1)
        return auth, f1, f2

    def test_block_reaches_follower(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        self.net.connect(follower, auth)
        block = auth.node.pipeline.propose()
        self.net.settle()
        self.assertEqual(follower.node.chain.head(), (1, block["hash"]))
        self.assertEqual(follower.node.queries.get_block(1), auth.node.queries.get_block(1))

    def test_received_messages_counted_by_type(self):
        """aitnode_p2p_received_{messages,bytes}_total{type}: every decoded
        frame, its payload bytes; an unknown type counts as "other"."""
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        link = self.net.connect(follower, auth)
        auth.node.pipeline.propose()
        self.net.settle()
        text = follower.node.metrics.render().decode()

        def sample(name, mtype):
            return float(re.search(rf'^{name}{{type="{mtype}"}} (\S+)$', text, re.M).group(1))

        frame = encode("block", auth.node.chain.block_entry(1))
        self.assertEqual(sample("aitnode_p2p_received_messages_total", "block"), 1)
        self.assertEqual(sample("aitnode_p2p_received_bytes_total", "block"), len(frame))
        self.assertEqual(sample("aitnode_p2p_received_messages_total", "hello"), 1)
        self.assertEqual(sample("aitnode_p2p_received_messages_total", "vote"), 1)  # the authority's, for block 1
        self.assertEqual(sample("aitnode_p2p_received_messages_total", "evidence"), 0)
        link.server.sendMessage(encode("nonsense", {}), isBinary=True)  # auth's side of the link
        self.net.settle()
        text = follower.node.metrics.render().decode()
        self.assertEqual(sample("aitnode_p2p_received_messages_total", "other"), 1)
        self.assertNotIn("nonsense", text)

    def test_block_relayed_through_line(self):
        auth, f1, f2 = self.line()
        for _ in range(3):
            auth.node.pipeline.propose()
            self.net.settle()
        self.assertEqual(len(self.assertSameChain(auth, f1, f2)), 4)
        for p in (auth, f1, f2):  # each node passed each block on once
            self.assertEqual([d["block"]["hash"] for m, d in p.broadcasts if m == "block"], hashes(auth)[1:])
        # f2 heard of each block once from f1.
        got = [d["block"]["hash"] for d in frames(f2, "block")]
        self.assertEqual(sorted(got), sorted(set(got)))
        self.assertEqual(set(got), set(hashes(auth)[1:]))

    def test_block_with_txs_relayed(self):
        auth, f1, f2 = self.line()
        txs = [transfer(ALICE, n, BOB, n) for n in (1, 2, 3)]
        for t in txs:
            auth.node.admission.submit(t.to_wire())
        self.net.settle()
        block = auth.node.pipeline.propose()
        self.net.settle()
        self.assertEqual(block["txs"], [t.hash for t in txs])
        self.assertSameChain(auth, f1, f2)
        for p in (f1, f2):
            self.assertEqual(len(p.node.mempool), 0)
            self.assertEqual(p.node.queries.get_tx(txs[2].hash)["status"], "included")
            self.assertEqual(p.node.queries.get_balance(BOB.address), auth.node.queries.get_balance(BOB.address))

    def test_tx_relayed_to_authority_once(self):
        auth, f1, f2 = self.line()
        t = transfer(ALICE, 1, BOB, 77)
        f2.node.admission.submit(t.to_wire())
        self.net.settle()
        for p in (auth, f1, f2):
            self.assertIn(t.hash, p.node.mempool)
            # Each node passed it on exactly once.
            self.assertEqual([d["tx"] for m, d in p.broadcasts if m == "tx"], [t.to_wire()])
        self.assertEqual([d["tx"] for d in frames(auth, "tx")], [t.to_wire()])
        f1_got = len(frames(f1, "tx"))
        # Sending it again does not travel any further: f1 has seen it.
        conn_to(f2, f1).send("tx", {"tx": t.to_wire()})
        self.net.settle()
        self.assertEqual(len(frames(f1, "tx")), f1_got + 1)
        self.assertEqual(len([m for m, _ in f1.broadcasts if m == "tx"]), 1)
        self.assertEqual(len(frames(auth, "tx")), 1)
        # The authority includes it; every node sees it included.
        auth.node.pipeline.propose()
        self.net.settle()
        self.assertSameChain(auth, f1, f2)
        for p in (auth, f1, f2):
            self.assertEqual(p.node.queries.get_tx(t.hash)["status"], "included")
            self.assertNotIn(t.hash, p.node.mempool)

    def test_broadcast_skips_closing_connection(self):
        """A connection being dropped stays in conns until its onClose; a
        block committed meanwhile must still reach the other peers."""
        auth = self.net.peer()
        f1, f2 = self.net.peer(key=None), self.net.peer(key=None)
        self.net.connect(f1, auth)
        self.net.connect(f2, auth)
        closing = conn_to(auth, f1)
        closing.dropConnection(abort=True)
        self.assertIn(closing, auth.conns)
        block = auth.node.pipeline.propose()  # broadcasts; must not raise
        closing.send("status", {"height": 1, "head": block["hash"]})  # a no-op now
        self.net.settle()
        self.assertEqual(f2.node.queries.get_head()["hash"], block["hash"])
        self.assertEqual(f1.node.queries.get_head()["height"], 0)
        self.assertEqual(len(auth.conns), 1)

    def test_bad_tx_signature_penalized(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        self.net.connect(follower, auth)
        w = transfer(ALICE, 1, BOB, 5).to_wire()
        w["sig"] = transfer(ALICE, 1, BOB, 6).to_wire()["sig"]
        conn_to(follower, auth).send("tx", {"tx": w})
        self.net.settle()
        self.assertEqual(len(auth.node.mempool), 0)
        self.assertEqual(auth.scores[follower.node_id], p2pmod.PENALTY["bad_tx"])

    def test_malformed_tx_penalized(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        self.net.connect(follower, auth)
        conn_to(follower, auth).send("tx", {"tx": {"type": "TRANSFER"}})
        self.net.settle()
        self.assertEqual(auth.scores[follower.node_id], p2pmod.PENALTY["bad_tx"])
        self.assertEqual(len(auth.conns), 1)  # a small penalty keeps the connection


# -- sync --------------------------------------------------------------------

class SyncTests(P2PTestCase):
    def test_sync_in_batches(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None, sync_batch=3)
        for n in range(1, 11):
            auth.node.admission.submit(transfer(ALICE, n, BOB, n).to_wire())
            auth.node.pipeline.propose()
        self.net.connect(follower, auth)
        self.assertEqual(len(self.assertSameChain(auth, follower)), 11)
        asks = frames(auth, "get_blocks")
        self.assertEqual(len(asks), 4)  # 10 blocks in batches of 3
        self.assertTrue(all(a["limit"] == 3 for a in asks))
        self.assertEqual(follower.node.queries.get_balance(BOB.address), auth.node.queries.get_balance(BOB.address))
        self.assertEqual(follower.node.chain.view().root(), auth.node.chain.view().root())
        self.assertIsNone(follower.sync.syncing)

    def test_sync_after_missing_blocks(self):
        """A follower that was connected, missed blocks while away, catches up."""
        auth = self.net.peer()
        follower = self.net.peer(key=None, sync_batch=2)
        link = self.net.connect(follower, auth)
        auth.node.pipeline.propose()
        self.net.settle()
        link.client.dropConnection(abort=True)
        self.net.settle()
        for _ in range(7):
            auth.node.pipeline.propose()
        self.assertEqual(follower.node.queries.get_head()["height"], 1)
        self.net.connect(follower, auth)
        self.assertEqual(len(self.assertSameChain(auth, follower)), 9)

    def test_announced_block_ahead_triggers_sync(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None, sync_batch=4)
        link = self.net.connect(follower, auth)
        # Blocks the follower does not hear of (as if their frames were lost).
        auth.conns.clear()
        for _ in range(5):
            auth.node.pipeline.propose()
        auth.conns.add(link.server)
        auth.node.pipeline.propose()  # the next announcement does not extend the follower's head
        self.net.settle()
        self.assertEqual(len(self.assertSameChain(auth, follower)), 7)

    def test_an_answer_starting_below_the_head_is_no_fork(self):
        """Blocks we already hold at the start of an answer (it was asked
        for before gossip brought them) are skipped, not rolled back."""
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        for _ in range(8):
            auth.node.pipeline.propose()
        link = self.net.connect(follower, auth)
        self.assertSameChain(auth, follower)
        for _ in range(3):
            auth.node.pipeline.propose()
        rollbacks = []
        follower.node.pipeline.rollback = rollbacks.append
        conn = link.client
        conn.remote_height = 11
        follower.sync.syncing = conn
        stale = {"blocks": [auth.node.chain.block_entry(h) for h in range(4, 12)], "height": 11}
        follower._on_blocks(conn, stale)
        self.net.settle()
        self.assertEqual(rollbacks, [])
        self.assertEqual(len(self.assertSameChain(auth, follower)), 12)

    def test_unanswered_get_blocks_is_asked_again(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None, sync_batch=2)
        answer = auth._on_get_blocks
        auth._on_get_blocks = lambda conn, d: None  # deaf, for now
        for _ in range(4):
            auth.node.pipeline.propose()
        self.net.connect(follower, auth)
        self.assertIsNotNone(follower.sync.syncing)
        self.assertEqual(follower.node.queries.get_head()["height"], 0)
        auth._on_get_blocks = answer
        self.net.advance(p2pmod.SYNC_TIMEOUT)
        self.assertEqual(len(self.assertSameChain(auth, follower)), 5)
        self.assertIsNone(follower.sync.syncing)
        self.assertIsNone(follower.sync._timer)

    def test_get_blocks_by_height_and_locator(self):
        auth = self.net.peer()
        for _ in range(5):
            auth.node.pipeline.propose()
        raw = self.net.connect(None, auth, protocol=RawClient)
        nk = KeyPair.generate()
        theirs = raw.client.first("hello")
        raw.client.send("hello", dict(theirs, node_id=nk.public_key.hex(), height=0,
                                      head=auth.node.chain.genesis.hash))
        raw.client.send("auth", {"sig": nk.sign(auth_bytes(CHAIN_ID, theirs["challenge"], nk.public_key.hex())).hex()})
        raw.client.send("get_blocks", {"from": 2, "limit": 2})
        unknown = "ee" * 32
        raw.client.send("get_blocks", {"locator": [unknown, auth.node.store.hash_at(3)], "limit": 10})
        self.net.settle()
        answers = [m["data"] for m in raw.client.got if m["type"] == "blocks"]
        self.assertEqual([[e["block"]["header"]["height"] for e in a["blocks"]] for a in answers], [[2, 3], [4, 5]])
        self.assertEqual(answers[0]["height"], 5)
        self.assertEqual(answers[0]["blocks"][0]["block"]["hash"], auth.node.store.hash_at(2))

    def test_sync_from_peer_sending_bad_blocks_penalized(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None, sync_batch=5)
        for _ in range(3):
            auth.node.pipeline.propose()
        # Corrupt what the authority answers: block 2's sig.
        real = auth.node.chain.block_entry

        def tampered(height):
            entry = real(height)
            if height == 2:
                entry = {"block": dict(entry["block"], sig="00" * 64), "txs": entry["txs"]}
            return entry

        auth.node.chain.block_entry = tampered
        link = self.net.connect(follower, auth)
        # Block 1 is kept; block 2 is refused each time it comes, and a
        # peer that keeps sending it is banned.
        self.assertEqual(follower.node.queries.get_head()["height"], 1)
        self.assertEqual(follower.scores[auth.node_id], 2 * p2pmod.PENALTY["bad_block"])
        self.assertTrue(follower.is_banned(node_id=auth.node_id))
        self.assertTrue(link.closed)
        self.assertIsNone(follower.sync.syncing)


# -- misbehaviour ------------------------------------------------------------

class MisbehaviourTests(P2PTestCase):
    def pair(self):
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        link = self.net.connect(follower, auth)
        return auth, follower, link

    def assertDroppedAsGarbage(self, payload, binary=True):
        """A frame that is no aitnode message closes the link and costs the
        sender the garbage penalty on both sides' books."""
        auth, follower, link = self.pair()
        link.client.sendMessage(payload, isBinary=binary)
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertEqual(auth.scores[follower.node_id], p2pmod.PENALTY["garbage"])
        self.assertEqual(auth.conns, set())
        self.assertEqual(follower.conns, set())

    def test_non_cbor_frame(self):
        self.assertDroppedAsGarbage(b"\xff\xfe not cbor")

    def test_text_frame(self):
        self.assertDroppedAsGarbage(b'{"type": "status"}', binary=False)

    def test_cbor_not_a_message(self):
        self.assertDroppedAsGarbage(cbor2.dumps([1, 2, 3]))

    def test_unknown_type(self):
        auth, follower, link = self.pair()
        link.client.send("gimme", {})
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertEqual(auth.scores[follower.node_id], p2pmod.PENALTY["protocol"])

    def test_message_before_handshake(self):
        auth = self.net.peer()
        link = self.net.connect(None, auth, protocol=RawClient)
        self.assertFalse(link.closed)
        link.client.send("status", {"height": 0, "head": auth.node.chain.genesis.hash})
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertEqual(auth.scores["127.0.0.1"], p2pmod.PENALTY["protocol"])
        self.assertEqual(link.client.closed[0], p2pmod.CLOSE_PROTOCOL)

    def test_garbage_before_handshake_bans_host(self):
        auth = self.net.peer()
        for _ in range(2):
            link = self.net.connect(None, auth, protocol=RawClient)
            link.client.sendMessage(b"\x00garbage", isBinary=True)
            self.net.settle()
            self.assertTrue(link.closed)
        self.assertTrue(auth.is_banned(addr="127.0.0.1"))
        link = self.net.connect(None, auth, protocol=RawClient)
        self.assertTrue(link.closed)
        self.assertEqual(link.client.closed[0], p2pmod.CLOSE_BANNED)
        self.assertNotIn("hello", link.client.types())
        # The ban ends after BAN_SECONDS.
        self.net.advance(p2pmod.BAN_SECONDS + 1)
        self.assertFalse(auth.is_banned(addr="127.0.0.1"))
        link = self.net.connect(None, auth, protocol=RawClient)
        self.assertFalse(link.closed)
        self.assertIn("hello", link.client.types())

    def test_ban_drops_peer_and_refuses_reconnect(self):
        auth, follower, link = self.pair()
        link.client.sendMessage(b"junk", isBinary=True)
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertFalse(auth.is_banned(node_id=follower.node_id))
        link = self.net.connect(follower, auth)
        self.assertEqual(len(auth.conns), 1)  # one offence is forgiven enough to come back
        link.client.sendMessage(b"junk", isBinary=True)
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertEqual(auth.scores[follower.node_id], 2 * p2pmod.PENALTY["garbage"])
        self.assertTrue(auth.is_banned(node_id=follower.node_id))
        self.assertTrue(self.logged("peer_banned"))
        # Reconnecting (another port, same node key) is refused.
        link = self.net.connect(follower, auth)
        self.assertTrue(link.closed)
        self.assertEqual(auth.conns, set())
        self.assertEqual(follower.conns, set())
        [rec] = auth.peer_list()["peers"]
        self.assertEqual((rec["node_id"], rec["state"], rec["score"]), (follower.node_id, "banned", -100))

    def test_oversized_frame(self):
        auth = self.net.peer()
        auth.server_factory.setProtocolOptions(maxMessagePayloadSize=1024, maxFramePayloadSize=1024)
        follower = self.net.peer(key=None)
        link = self.net.connect(follower, auth)
        link.client.send("tx", {"tx": {"pad": "x" * 4096}})
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertTrue(auth.is_banned(node_id=follower.node_id))
        self.assertEqual(auth.conns, set())

    def forged(self, auth, resign):
        """A block on auth's head with a wrong state_root."""
        block, records, view, failed = auth.node.chain.build_block([], AUTHORITY, auth.node.pipeline.now())
        view.release()
        header = dict(block["header"], state_root=("11" if resign else "22") * 32)
        h = block_hash(header)
        signer = AUTHORITY if resign else None
        sig = signer.sign(bytes.fromhex(h)).hex() if signer else block["sig"]
        return {"block": dict(block, header=header, hash=h, sig=sig), "txs": []}

    def test_invalid_block_penalized_not_imported(self):
        auth, follower, link = self.pair()
        conn = conn_to(auth, follower)
        for resign in (True, False):
            conn.send("block", self.forged(auth, resign))
            self.net.settle()
            self.assertEqual(follower.node.queries.get_head()["height"], 0)
        # Two bad blocks: -60 each, over the ban score.
        self.assertTrue(follower.is_banned(node_id=auth.node_id))
        self.assertTrue(link.closed)
        reasons = [e["reason"] for e in self.logged("peer_penalized")]
        self.assertTrue(any("state_root" in r for r in reasons), reasons)
        self.assertTrue(any("signature" in r for r in reasons), reasons)

    def test_block_from_non_authority_penalized(self):
        auth, follower, link = self.pair()
        outsider = KeyPair.generate()
        block, _, view, _ = auth.node.chain.build_block([], AUTHORITY, auth.node.pipeline.now())
        view.release()
        header = dict(block["header"], proposer=outsider.address)
        h = block_hash(header)
        entry = {"block": dict(block, header=header, hash=h, sig=outsider.sign(bytes.fromhex(h)).hex()), "txs": []}
        conn_to(auth, follower).send("block", entry)
        self.net.settle()
        self.assertEqual(follower.node.queries.get_head()["height"], 0)
        self.assertEqual(follower.scores[auth.node_id], p2pmod.PENALTY["bad_block"])
        # The real block still goes through afterwards.
        auth.node.pipeline.propose()
        self.net.settle()
        self.assertSameChain(auth, follower)

    def test_malformed_block_message(self):
        auth, follower, link = self.pair()
        conn_to(auth, follower).send("block", {"block": "nope", "txs": []})
        self.net.settle()
        self.assertEqual(follower.scores[auth.node_id], p2pmod.PENALTY["protocol"])
        self.assertTrue(link.closed)

    def test_bad_get_blocks_limit(self):
        auth, follower, link = self.pair()
        conn_to(follower, auth).send("get_blocks", {"from": 0, "limit": 100_000})
        self.net.settle()
        self.assertEqual(auth.scores[follower.node_id], p2pmod.PENALTY["protocol"])


# -- fork choice -------------------------------------------------------------

class ReorgTests(P2PTestCase):
    def two(self, batch=p2pmod.SYNC_BATCH):
        doc = genesis_doc(authorities=(K1, K2))
        return self.net.peer(doc=doc, key=K1, sync_batch=batch), self.net.peer(doc=doc, key=K2, sync_batch=batch)

    def build(self, p, n, txs=()):
        for t in txs:
            p.node.admission.submit(t.to_wire())
        for _ in range(n):
            p.node.pipeline.propose()

    def check_reorg(self, batch):
        a, b = self.two(batch)
        dropped = [transfer(ALICE, 1, CAROL, 1000), transfer(ALICE, 2, CAROL, 2000)]
        kept = transfer(BOB, 1, CAROL, 30)
        self.build(a, 3, dropped)
        self.build(b, 5, [kept])
        b_chain = hashes(b)
        a_chain = hashes(a)
        self.assertNotEqual(a_chain[1], b_chain[1])
        self.net.connect(a, b)
        # The shorter chain rolled back to genesis and adopted the longer.
        self.assertEqual(self.assertSameChain(a, b), b_chain)
        self.assertEqual(a.node.chain.head(), (5, b_chain[5]))
        for h in a_chain[1:]:
            self.assertIsNone(a.node.queries.get_block(h))
        self.assertEqual(a.node.chain.view().root(), b.node.chain.view().root())
        self.assertEqual(a.node.queries.get_tx(kept.hash)["status"], "included")
        # Transactions from the dropped blocks are pending again, here and
        # (relayed) at the other authority.
        for t in dropped:
            self.assertEqual(a.node.queries.get_tx(t.hash)["status"], "pending")
            self.assertIn(t.hash, b.node.mempool)
        self.assertEqual(a.node.queries.get_balance(CAROL.address), {"balance": 30, "nonce": 0})
        self.assertTrue(self.logged("reorg"))
        # The next block includes them, on both nodes.
        b.node.pipeline.propose()
        self.net.settle()
        self.assertSameChain(a, b)
        for t in dropped:
            self.assertEqual(a.node.queries.get_tx(t.hash)["status"], "included")

    def test_shorter_chain_reorgs(self):
        self.check_reorg(batch=p2pmod.SYNC_BATCH)

    def test_reorg_in_batches(self):
        self.check_reorg(batch=2)

    def test_longer_side_keeps_its_chain(self):
        a, b = self.two()
        self.build(a, 4)
        self.build(b, 2)
        a_chain = hashes(a)
        self.net.connect(a, b)  # the longer one dials this time
        self.assertEqual(self.assertSameChain(a, b), a_chain)

    def test_fork_after_common_prefix(self):
        a, b = self.two()
        self.net.connect(a, b)
        self.build(a, 2)
        self.net.settle()
        common = self.assertSameChain(a, b)
        self.assertEqual(len(common), 3)
        for link in list(self.net.links):
            link.client.dropConnection(abort=True)
        self.net.settle()
        self.build(a, 1)
        self.build(b, 3)
        self.net.connect(a, b)
        chain = self.assertSameChain(a, b)
        self.assertEqual(chain[:3], common)
        self.assertEqual(len(chain), 6)

    def liar(self, victim, height=100, head="ab" * 32):
        """A raw peer that says it has a long chain; returns its Link."""
        link = self.net.connect(None, victim, protocol=RawClient)
        nk = KeyPair.generate()
        theirs = link.client.first("hello")
        link.client.send("hello", dict(theirs, node_id=nk.public_key.hex(), height=height, head=head))
        link.client.send("auth", {"sig": nk.sign(auth_bytes(CHAIN_ID, theirs["challenge"], nk.public_key.hex())).hex()})
        self.net.settle()
        link.node_id = nk.public_key.hex()
        return link

    def test_invalid_longer_branch_keeps_our_chain(self):
        """A peer claiming a longer chain whose first block is invalid must
        not cost us our own blocks: the rollback is undone."""
        a, b = self.two()
        t = transfer(ALICE, 1, CAROL, 5)
        self.build(a, 3, [t])
        self.build(b, 1)
        ours = hashes(a)
        link = self.liar(a)
        self.assertIn("get_blocks", link.client.types())
        forged = b.node.chain.block_entry(1)
        forged = {"block": dict(forged["block"], sig="00" * 64), "txs": []}
        link.client.send("blocks", {"blocks": [forged], "height": 100})
        self.net.settle()
        self.assertEqual(hashes(a), ours)
        self.assertEqual(a.node.queries.get_tx(t.hash)["status"], "included")
        self.assertEqual(len(a.node.mempool), 0)
        self.assertEqual(a.scores[link.node_id], p2pmod.PENALTY["bad_block"])

    def test_blocks_off_our_chain_penalized(self):
        a, b = self.two()
        self.build(a, 2)
        self.build(b, 3)
        link = self.liar(a)
        link.client.send("blocks", {"blocks": [b.node.chain.block_entry(2)], "height": 100})  # parent unknown to a
        self.net.settle()
        self.assertEqual(a.node.queries.get_head()["height"], 2)
        self.assertEqual(a.scores[link.node_id], p2pmod.PENALTY["bad_block"])
        self.assertIsNone(a.sync.syncing)
        self.assertFalse(self.logged("sync_error"))

    def test_announced_block_waiting_for_a_sync_not_penalized(self):
        """A block announced while a sync holds the import lock, and valid
        on the head of that moment, may no longer extend the head when its
        turn comes: it is dropped, and its honest sender not penalized."""
        doc = genesis_doc(authorities=(K1, K2))
        a = self.net.peer(doc=doc, key=K1)
        b = make_node(self, doc=doc, key=K2, clock=self.net.clock)
        follower = self.net.peer(doc=doc, key=None)
        self.build(a, 1)
        b.pipeline.import_block(a.node.store.block_at(1), [])
        rival = b.pipeline.propose()  # height 2 on a's block 1
        self.build(a, 2)
        honest = self.liar(follower, height=0, head=follower.node.chain.head()[1])  # nothing to sync from it
        conn = next(c for c in follower.conns if c.remote_id == honest.node_id)
        real = follower.node.pipeline.import_block_async
        fired = []

        async def hooked(block, txs, now=None):
            out = await real(block, txs, now)
            if block["header"]["height"] == 1 and not fired:
                fired.append(True)  # the rival arrives mid-sync, on head 1
                follower.received(conn, "block", {"block": rival, "txs": []})
            return out

        follower.node.pipeline.import_block_async = hooked
        self.net.connect(follower, a)
        self.assertTrue(fired)
        self.assertEqual(self.assertSameChain(a, follower)[-1], a.node.store.hash_at(3))
        self.assertEqual(follower.scores.get(honest.node_id), 0)
        self.assertFalse(follower.is_banned(node_id=honest.node_id))

    def test_branch_headers_are_checked_for_a_second_header(self):
        """A clone of K1 that signed its own block 1 before it met the
        others finds, in the branch it syncs, K1's other header at height
        1: evidence, gossiped; the next block by K2 carries it, and K1 is
        jailed.  The clone also stops signing (another node has its key)."""
        doc = genesis_doc(authorities=(K1, K2))
        a, b = self.net.peer(doc=doc, key=K1), self.net.peer(doc=doc, key=K2)
        self.net.connect(b, a)
        for p in (a, b, a):
            self.build(p, 1)
            self.net.advance(0.05)
        clone = self.net.peer(doc=doc, key=K1)
        self.net.advance(0.05)
        self.build(clone, 1)
        self.assertNotEqual(hashes(clone)[1], hashes(a)[1])
        self.net.connect(clone, b)
        self.assertEqual(self.assertSameChain(a, b, clone), hashes(a))
        self.assertTrue(clone.node.pipeline.signing_stopped)
        [ev] = b.node.ballot.evidence.values()
        self.assertEqual((ev.offender, ev.heights), (K1.address, (1, 1)))
        self.net.advance(0.05)
        block = b.node.pipeline.propose()
        self.assertEqual(block["evidence"], [ev.to_wire()])
        self.assertEqual(b.node.chain.authority_set().jailed, {K1.address})
        self.net.settle()
        self.assertSameChain(a, b, clone)
        # Each node that commits the block logs the jailing once.
        jailed = self.logged("authority_jailed")
        self.assertEqual([(e["offender"], e["height"]) for e in jailed], [(K1.address, block["header"]["height"])] * 3)

    def test_tie_goes_to_the_lower_head_hash(self):
        """Fork choice between two chains of one height with the same
        justified block: the lower head hash, on both nodes; a branch found
        not better costs its peer nothing and is not fetched again."""
        a, b = self.two()
        self.build(a, 3, [transfer(ALICE, 1, CAROL, 5)])
        self.build(b, 3)
        a_chain, b_chain = hashes(a), hashes(b)
        winner, loser = sorted((a_chain, b_chain), key=lambda c: c[-1])
        self.net.connect(a, b)
        self.assertEqual(hashes(a), winner)
        self.assertEqual(hashes(b), winner)
        self.assertEqual((len(a.conns), len(b.conns)), (1, 1))
        self.assertEqual((a.scores.get(b.node_id, 0), b.scores.get(a.node_id, 0)), (0, 0))
        if winner is b_chain:  # a's transfer went back to its mempool
            self.assertEqual(a.node.queries.get_tx(transfer(ALICE, 1, CAROL, 5).hash)["status"], "pending")
        # One block more on either side decides it again.
        b.node.pipeline.propose()
        self.net.settle()
        self.assertEqual(self.assertSameChain(a, b)[:4], winner)


class LRUSetTests(SynchronousTestCase):
    def test_bounded_and_recent(self):
        s = p2pmod.LRUSet(3)
        self.assertTrue(s.add("a"))
        self.assertFalse(s.add("a"))
        for k in "bcd":
            s.add(k)
        self.assertNotIn("a", s)
        self.assertIn("d", s)

    def test_locator_shape(self):
        net = Net(self)
        p = net.peer()
        for _ in range(40):
            p.node.pipeline.propose()
        loc = sync_mod.locator(p.node.chain)
        store = p.node.store
        heights = [store.block_by_hash(h)["header"]["height"] for h in loc]
        # The 9 newest one by one, then gaps doubling, then genesis.
        self.assertEqual(heights[:9], list(range(40, 31, -1)))
        gaps = [a - b for a, b in zip(heights[8:-1], heights[9:-1])]
        self.assertEqual(gaps, [2 ** n for n in range(1, len(gaps) + 1)])
        self.assertEqual(heights[-1], 0)
        self.assertEqual(heights, sorted(heights, reverse=True))
        self.assertEqual(len(set(heights)), len(heights))
