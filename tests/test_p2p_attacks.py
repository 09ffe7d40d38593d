"""The peer surface attacked (issue 9): each test reproduces one way a
peer could stop, mislead or bloat a node, in process on tests.test_p2p's
in-memory network (one Clock, iosim transports)."""

from twisted.internet import defer

from aitnode import p2p as p2pmod
from aitnode.crypto import KeyPair
from aitnode.p2p import auth_bytes
from aitnode.proposer import ProposerService
from aitnode.verifier import verify_chunk

from tests.common import CHAIN_ID, make_node
from tests.test_p2p import P2PTestCase, RawClient


def authed_raw(net, victim, height=0, head=None, node_key=None):
    """A raw client that completes the handshake with victim as node_key,
    claiming height and head in its hello; its Link (with .node_id)."""
    link = net.connect(None, victim, protocol=RawClient)
    nk = node_key or KeyPair.generate()
    theirs = link.client.first("hello")
    link.client.send("hello", dict(theirs, node_id=nk.public_key.hex(), challenge="ab" * 32, height=height,
                                   head=head or victim.node.chain.genesis.hash))
    link.client.send("auth", {"sig": nk.sign(auth_bytes(CHAIN_ID, theirs["challenge"], nk.public_key.hex())).hex()})
    net.settle()
    link.node_id = nk.public_key.hex()
    link.key = nk
    return link


def sync_lag(p2p):
    return p2p.node.metrics.registry.get_sample_value("aitnode_sync_lag_blocks")


class HeldVerifier:
    """A verifier whose verdicts wait until the test releases them."""

    def __init__(self):
        self.waiting = []

    def verify_many(self, items):
        d = defer.Deferred()
        self.waiting.append((d, items))
        return d

    def release(self):
        while self.waiting:
            d, items = self.waiting.pop(0)
            d.callback(verify_chunk(items))


# -- defect 2: a claimed height never stops an authority ---------------------

class ClaimedHeightTests(P2PTestCase):
    def test_claimed_height_never_stops_an_authority(self):
        """A peer claiming a huge height (hello, status, an unverifiable
        block) is asked for blocks, but the authority keeps proposing on
        its turn and its sync lag stays 0."""
        auth = self.net.peer()
        service = ProposerService(auth.node.pipeline, self.net.clock, 2.0)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        liar = authed_raw(self.net, auth, height=10**6, head="ab" * 32)
        self.assertEqual(len(auth.conns), 1)
        self.assertIn("get_blocks", liar.client.types())  # a claim decides whom to ask
        liar.client.send("status", {"height": 10**9, "head": "cd" * 32})
        header = dict(auth.node.chain.head_header(), height=10**7, parent="ef" * 32)
        liar.client.send("block", {"block": {"header": header, "hash": "12" * 32, "sig": "00" * 64, "txs": []},
                                   "txs": []})
        self.net.settle()
        for height in (1, 2, 3):
            self.net.advance(2.0)
            self.assertEqual(auth.node.chain.head()[0], height)
            self.assertEqual(sync_lag(auth), 0)

    def test_sync_lag_counts_verified_headers_only(self):
        """The lag is the distance to the highest header whose proposer
        signature checked and whose parent is on this node's chain."""
        source = make_node(self, clock=self.net.clock)
        for _ in range(3):
            source.pipeline.propose()
        verifier = HeldVerifier()
        follower = self.net.peer(key=None, verifier=verifier)
        peer = authed_raw(self.net, follower, height=100, head="ab" * 32)
        self.assertEqual(sync_lag(follower), 0)  # a claim alone counts for nothing
        self.assertEqual(len(peer.client.got), 3)  # hello, auth, get_blocks
        answer = [source.chain.block_entry(h) for h in (1, 2, 3)]
        peer.client.send("blocks", {"blocks": answer, "height": 100})
        self.net.settle()
        # The three headers verified; their blocks wait for the verifier.
        self.assertEqual(follower.node.chain.head()[0], 0)
        self.assertEqual(sync_lag(follower), 3)
        for _ in range(3):
            verifier.release()
            self.net.settle()
        self.assertEqual(follower.node.chain.head()[0], 3)
        self.assertEqual(sync_lag(follower), 0)


# -- defect 3: ban spoofing --------------------------------------------------

def hello_as(link, victim, node_key, **extra):
    """Send the victim a hello claiming node_key's id (no auth yet)."""
    theirs = link.client.first("hello")
    link.client.send("hello", dict(theirs, node_id=node_key.public_key.hex(), challenge="ab" * 32, height=0,
                                   head=victim.node.chain.genesis.hash, **extra))


def server_conn(p2p, link):
    """p2p's protocol for link (p2p is the accepting side)."""
    return link.server


class SpoofingTests(P2PTestCase):
    def setUp(self):
        super().setUp()
        self.victim = self.net.peer()
        self.honest_key = KeyPair.generate()
        self.honest = self.net.peer(key=None, node_key=self.honest_key)
        self.honest_id = self.honest_key.public_key.hex()

    def assertHonestUntouched(self):
        v = self.victim
        self.assertNotIn(self.honest_id, v.bans)
        self.assertFalse(v.is_banned(node_id=self.honest_id))
        self.assertIn(v.scores.get(self.honest_id, 0), (0,))
        rec = v.node.local.peers().get(self.honest_id)
        self.assertTrue(rec is None or rec["score"] == 0, rec)

    def test_an_id_exists_only_once_auth_proves_it(self):
        link = self.net.connect(None, self.victim, protocol=RawClient)
        hello_as(link, self.victim, self.honest_key)
        self.net.settle()
        conn = server_conn(self.victim, link)
        self.assertIsNone(conn.remote_id)
        self.assertEqual(conn.claimed_id, self.honest_id)
        self.assertFalse(conn.ready)
        self.assertEqual(self.victim.conns, set())
        self.assertNotIn(self.honest_id, self.victim.node.local.peers())
        self.assertEqual(self.victim.peer_list()["peers"], [])

    def test_spoofer_misbehaving_never_costs_the_honest_id(self):
        """A spoofer claims the honest peer's id and misbehaves in every way
        it can before auth: the honest id is never penalised, banned or
        written down, and the honest peer connects (or stays connected)."""
        v = self.victim
        honest_link = self.net.connect(self.honest, v)
        self.assertEqual(len(v.conns), 1)
        attacks = [
            lambda raw: raw.sendMessage(b"\xff garbage", isBinary=True),
            lambda raw: raw.send("auth", {"sig": "00" * 64}),  # cannot prove the id
            lambda raw: raw.send("status", {"height": 5, "head": "ab" * 32}),
            lambda raw: raw.send("block", {"block": "x", "txs": []}),
            lambda raw: raw.send("get_blocks", {"from": 0, "limit": 10**9}),
            lambda raw: raw.send("tx", {"tx": {"type": "TRANSFER"}}),
            lambda raw: raw.send("hello", {"again": True}),
        ]
        for attack in attacks:
            link = self.net.connect(None, v, protocol=RawClient)
            if link.closed:  # the host's short back-off: wait it out
                self.net.advance(p2pmod.HOST_BAN_SECONDS + 1)
                link = self.net.connect(None, v, protocol=RawClient)
            self.assertFalse(link.closed)
            hello_as(link, v, self.honest_key)
            attack(link.client)
            self.net.settle()
            self.assertTrue(link.closed)
            self.assertIsNone(link.server.remote_id)
            self.assertHonestUntouched()
            self.assertFalse(honest_link.closed)  # only the offending connection is closed
            self.assertEqual([c.remote_id for c in v.conns], [self.honest_id])
        # Reconnecting works for the honest peer, on its own id.
        honest_link.client.dropConnection(abort=True)
        self.net.advance(p2pmod.HOST_BAN_SECONDS + 1)
        again = self.net.connect(self.honest, v)
        self.assertFalse(again.closed)
        self.assertEqual([c.remote_id for c in v.conns], [self.honest_id])
        self.assertHonestUntouched()

    def test_misbehaviour_before_auth_backs_off_the_address_briefly(self):
        v = self.victim
        for _ in range(2):
            link = self.net.connect(None, v, protocol=RawClient)
            hello_as(link, v, self.honest_key)
            link.client.sendMessage(b"\x00 garbage", isBinary=True)
            self.net.settle()
        self.assertTrue(v.is_banned(addr="127.0.0.1"))
        self.assertEqual(v.bans["127.0.0.1"] - self.net.clock.seconds(), p2pmod.HOST_BAN_SECONDS)
        self.assertEqual(set(v.bans), {"127.0.0.1"})
        self.assertHonestUntouched()

    def test_second_hello_is_a_protocol_error(self):
        v = self.victim
        other = KeyPair.generate()
        # Before auth: a second hello relabels nothing.
        link = self.net.connect(None, v, protocol=RawClient)
        hello_as(link, v, KeyPair.generate())
        hello_as(link, v, other)
        self.net.settle()
        self.assertTrue(link.closed)
        self.assertEqual(link.client.closed[0], p2pmod.CLOSE_PROTOCOL)
        self.assertNotEqual(link.server.claimed_id, other.public_key.hex())

    def test_a_ready_connection_cannot_relabel_itself(self):
        v = self.victim
        self.net.connect(self.honest, v)
        raw = authed_raw(self.net, v)
        conn = next(c for c in v.conns if c.remote_id == raw.node_id)
        # It says hello again as the honest peer, then sends junk that
        # would be penalised: only the second hello counts, against its own id.
        hello_as(raw, v, self.honest_key)
        raw.client.send("tx", {"tx": {"type": "TRANSFER"}})
        self.net.settle()
        self.assertTrue(raw.closed)
        self.assertEqual(raw.client.closed[0], p2pmod.CLOSE_PROTOCOL)
        self.assertEqual(conn.remote_id, raw.node_id)
        self.assertEqual(v.scores[raw.node_id], p2pmod.PENALTY["protocol"])
        self.assertHonestUntouched()
        self.assertEqual([c.remote_id for c in v.conns], [self.honest_id])
        self.assertEqual(v.node.local.peers()[raw.node_id]["score"], p2pmod.PENALTY["protocol"])
