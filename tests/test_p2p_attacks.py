"""The peer surface attacked (issue 9): each test reproduces one way a
peer could stop, mislead or bloat a node, in process on tests.test_p2p's
in-memory network (one Clock, iosim transports)."""

from twisted.internet import defer

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
