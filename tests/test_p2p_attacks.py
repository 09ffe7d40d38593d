"""The peer surface attacked (issue 9): each test reproduces one way a
peer could stop, mislead or bloat a node, in process on tests.test_p2p's
in-memory network (one Clock, iosim transports)."""

import os
import signal

import cbor2

from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from aitnode import p2p as p2pmod
from aitnode.blocks import block_hash
from aitnode import chain as chain_mod, reorg as reorg_mod
from aitnode.chain import Chain
from aitnode.crypto import KeyPair
from aitnode.errors import AitError
from aitnode.genesis import Genesis
from aitnode.mempool import Mempool
from aitnode.p2p import (
    auth_bytes, book as book_mod, encode, held as held_mod, peers as peers_mod, serve as serve_mod, sync as sync_mod,
    watch as watch_mod, wire as wire_mod,
)
from aitnode.proposer import ProposerService
from aitnode.receipts import CLAIM, attestation_request, sign_attestation, sign_claim
from aitnode.steps import run_steps
from aitnode.store import Store
from aitnode.tx import sign_tx
from aitnode.verifier import verify_chunk

from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, COORDINATOR, ESCROW, MINER, genesis_doc, make_node, state_dump, transfer,
)
from tests.test_p2p import K1, K2, P2PTestCase, RawClient, hashes


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


# -- defect 4: forged forks, and switching branches at once -----------------

def resign(block, signer, **header_changes):
    """block with header fields changed, hashed and signed again by signer."""
    header = dict(block["header"], **header_changes)
    h = block_hash(header)
    return dict(block, header=header, hash=h, sig=signer.sign(bytes.fromhex(h)).hex())


def forge_chain(entries, signer, index, **header_changes):
    """entries (a run of block entries) with entry index changed and every
    later one re-linked to it and signed again by signer."""
    out = [dict(e) for e in entries]
    out[index] = dict(out[index], block=resign(out[index]["block"], signer, **header_changes))
    for i in range(index + 1, len(out)):
        out[i] = dict(out[i], block=resign(out[i]["block"], signer, parent=out[i - 1]["block"]["hash"]))
    return out


class ForkAttackTests(P2PTestCase):
    """A node (authority K1) with 6 blocks; a competing branch by K2 that
    forks after its block 3 and is 5 blocks long (heights 4 to 8)."""

    def setUp(self):
        super().setUp()
        doc = genesis_doc(authorities=(K1, K2))
        self.a = self.net.peer(doc=doc, key=K1)
        self.kept = transfer(ALICE, 1, CAROL, 5)
        self.a.node.admission.submit(self.kept.to_wire())
        for _ in range(6):
            self.a.node.pipeline.propose()
        self.b = make_node(self, doc=doc, key=K2, clock=self.net.clock)
        for h in (1, 2, 3):
            e = self.a.node.chain.block_entry(h)
            self.b.pipeline.import_block(e["block"], [self.b.admission.parse(w) for w in e["txs"]])
        self.b.admission.submit(transfer(BOB, 1, CAROL, 7).to_wire())
        for _ in range(5):
            self.b.pipeline.propose()
        self.branch = [self.b.chain.block_entry(h) for h in range(4, 9)]
        self.ours = hashes(self.a)
        self.state = state_dump(self.a.node.store)
        self.switches = []
        store = self.a.node.store
        real = store.switch_branch
        store.switch_branch = lambda height, blocks: (self.switches.append((height, len(blocks))),
                                                      real(height, blocks))[1]
        self.rollbacks = []
        real_rb = store.rollback_to
        store.rollback_to = lambda height: (self.rollbacks.append(height), real_rb(height))[1]

    def assertUntouched(self):
        a = self.a
        self.assertEqual(hashes(a), self.ours)
        self.assertEqual(state_dump(a.node.store), self.state)
        self.assertEqual(a.node.queries.get_tx(self.kept.hash)["status"], "included")
        self.assertEqual(self.switches, [])
        self.assertEqual(self.rollbacks, [])
        self.assertFalse(self.logged("reorg"))

    def offer(self, entries, liar=None):
        """A peer claiming a long chain answers the node's get_blocks with entries."""
        liar = liar or authed_raw(self.net, self.a, height=100, head="ab" * 32)
        [ask] = [m["data"] for m in liar.client.got if m["type"] == "get_blocks"]
        self.assertIn(self.ours[3], ask["locator"])  # the fork point comes from the node's own locator
        liar.client.send("blocks", {"blocks": entries, "height": 100})
        self.net.settle()
        return liar

    def test_forged_first_block_of_a_fork(self):
        outsider = KeyPair.generate()
        first = self.branch[0]
        rest = self.branch[1:]
        outsiders = forge_chain(self.branch, K2, 0, proposer=outsider.address)
        outsiders[0] = dict(outsiders[0], block=resign(outsiders[0]["block"], outsider))
        for forged, why in (
            ([dict(first, block=dict(first["block"], sig="00" * 64))] + rest, "signature"),
            (outsiders, "not an authority"),
            (forge_chain(self.branch, K2, 0, state_root="11" * 32), "state_root"),
        ):
            liar = self.offer(forged)
            self.assertUntouched()
            self.assertEqual(self.a.scores[liar.node_id], p2pmod.PENALTY["bad_block"])
            self.assertTrue(any(why in e["reason"] for e in self.logged("peer_penalized")), why)

    def test_invalid_block_deep_in_a_longer_branch(self):
        """The 3rd of 5 blocks is invalid: nothing is rolled back or switched,
        the head stays, and the peer pays for it."""
        for changes in ({"state_root": "11" * 32}, {"tx_root": "22" * 32}, {"timestamp": 1}):
            forged = forge_chain(self.branch, K2, 2, **changes)
            liar = self.offer(forged)
            self.assertUntouched()
            self.assertEqual(self.a.scores[liar.node_id], p2pmod.PENALTY["bad_block"])
            self.assertIsNone(self.a.sync._branch)

    def test_valid_longer_branch_switched_in_one_transaction(self):
        self.offer(self.branch)
        self.assertEqual(hashes(self.a), hashes_of(self.b))
        self.assertEqual(state_dump(self.a.node.store), state_dump(self.b.store))
        self.assertEqual(self.switches, [(3, 5)])
        self.assertEqual(self.rollbacks, [])
        self.assertTrue(self.logged("reorg"))
        self.assertEqual(self.a.node.queries.get_tx(self.kept.hash)["status"], "included")  # in block 1

    def test_branch_held_until_longer_then_switched(self):
        """Fetched in pieces, the branch is only held (the chain untouched)
        until it is longer than ours."""
        liar = authed_raw(self.net, self.a, height=100, head="ab" * 32)
        liar.client.send("blocks", {"blocks": self.branch[:3], "height": 100})  # 4..6: not longer
        self.net.settle()
        self.assertEqual(self.switches, [])
        self.assertEqual(hashes(self.a), self.ours)
        [ask] = [m["data"] for m in liar.client.got if m["type"] == "get_blocks"][1:]
        self.assertEqual(ask["from"], 7)
        liar.client.send("blocks", {"blocks": self.branch[3:], "height": 100})
        self.net.settle()
        self.assertEqual(self.switches, [(3, 5)])
        self.assertEqual(hashes(self.a), hashes_of(self.b))

    def test_a_branch_whose_state_tree_would_not_fit_is_refused(self):
        """The tree nodes a branch writes are held until the switch: past
        the budget, the branch is refused and nothing changes."""
        self.patch(reorg_mod, "MAX_BRANCH_TREE_BYTES", 1000)
        self.offer(self.branch)
        self.assertUntouched()
        self.assertTrue(any("state tree" in e.get("reason", "") for e in self.logged("peer_penalized")
                            + self.logged("branch_refused")))
        # (Under the budget the same branch is switched to:
        # test_valid_longer_branch_switched_in_one_transaction.)

    def test_a_branch_too_large_to_hold_is_dropped(self):
        self.patch(sync_mod, "MAX_BRANCH_BYTES", 2000)
        liar = authed_raw(self.net, self.a, height=100, head="ab" * 32)
        liar.client.send("blocks", {"blocks": self.branch, "height": 100})
        self.net.settle()
        self.assertUntouched()
        self.assertTrue(self.logged("fork_too_large"))
        self.assertIsNone(self.a.sync._branch)

    def test_checking_a_branch_lets_the_reactor_run_between_blocks(self):
        """Signatures and state transitions of a branch are checked a block
        at a time, with a pause (one Clock turn) in between."""
        turns = []
        real = self.a.sync.pause

        def pause():
            turns.append(self.a.node.chain.head())
            return real()

        self.a.sync.pause = pause
        self.offer(self.branch)
        self.assertEqual(hashes(self.a), hashes_of(self.b))
        self.assertGreaterEqual(len(turns), 2 * len(self.branch))
        # Until the switch, every turn saw the old head.
        self.assertEqual(turns.count((6, self.ours[6])), len(turns) - turns.count((8, hashes_of(self.b)[8])))


def hashes_of(node):
    return [node.store.hash_at(h) for h in range(node.chain.head()[0] + 1)]


class AtomicSwitchTests(SynchronousTestCase):
    """A process killed while it switches branches (inside the one LMDB
    write transaction of Store.switch_branch) leaves the old branch or the
    new one whole, never a mix: a child process (os.fork) runs the switch
    on the node's folder and SIGKILLs itself between two blocks of it."""

    def setUp(self):
        doc = genesis_doc(authorities=(K1, K2))
        self.genesis = Genesis(doc)
        clock = Clock()
        a = make_node(self, doc=doc, key=K1, clock=clock)
        b = make_node(self, doc=doc, key=K2, clock=clock)
        for n in (1, 2, 3):
            a.admission.submit(transfer(ALICE, n, CAROL, n).to_wire())
            a.pipeline.propose()
        for h in (1, 2):
            e = a.chain.block_entry(h)
            b.pipeline.import_block(e["block"], [b.admission.parse(w) for w in e["txs"]])
        for n in range(1, 7):
            b.admission.submit(transfer(BOB, n, CAROL, 10 * n).to_wire())
            b.pipeline.propose()
        self.branch = [(e["block"], [b.admission.parse(w) for w in e["txs"]])
                       for e in (b.chain.block_entry(h) for h in range(3, 9))]
        self.old = (hashes_of(a), state_dump(a.store), a.store.state_root())
        self.new = (hashes_of(b), state_dump(b.store), b.store.state_root())
        self.path = a.store.path
        a.store.close()

    def switch_in_child(self, kill_at=None):
        """Run the switch in a child; kill_at: SIGKILL it as the kill_at-th
        block of the branch is written (1-based).  Returns its wait status."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                store = Store(self.path)
                chain = Chain(store, self.genesis)
                commit, calls = store._commit, []

                def dying(*args):
                    calls.append(1)
                    if len(calls) == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return commit(*args)

                store._commit = dying
                run_steps(chain.reorganise_steps(2, self.branch))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return status

    def reopened(self):
        """(hashes, state, accumulator) of the folder, opened afresh."""
        store = Store(self.path)
        try:
            Chain(store, self.genesis)  # the genesis check passes on what is there
            height = store.head()[0]
            return [store.hash_at(h) for h in range(height + 1)], state_dump(store), store.state_root()
        finally:
            store.close()

    def test_killed_mid_switch_keeps_the_old_branch_whole(self):
        for kill_at in (1, 3, 6):
            status = self.switch_in_child(kill_at)
            self.assertTrue(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status)
            got = self.reopened()
            self.assertEqual(got, self.old, f"killed at block {kill_at} of 6")

    def test_a_finished_switch_leaves_the_new_branch_whole(self):
        status = self.switch_in_child()
        self.assertTrue(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status)
        self.assertEqual(self.reopened(), self.new)


# -- defect 5: an old, validly signed block and a claimed height -------------

class ReplayTests(P2PTestCase):
    """A node (K1) with 10 blocks; an old block signed by the other
    authority (K2) at height 3, on the node's own block 2."""

    def setUp(self):
        super().setUp()
        doc = genesis_doc(authorities=(K1, K2))
        self.a = self.net.peer(doc=doc, key=K1)
        self.t = transfer(ALICE, 1, CAROL, 5)
        self.a.node.admission.submit(self.t.to_wire())
        for _ in range(10):
            self.a.node.pipeline.propose()
        b = make_node(self, doc=doc, key=K2, clock=self.net.clock)
        for h in (1, 2):
            e = self.a.node.chain.block_entry(h)
            b.pipeline.import_block(e["block"], [b.admission.parse(w) for w in e["txs"]])
        for _ in range(3):
            b.pipeline.propose()
        self.old = [b.chain.block_entry(h) for h in (3, 4, 5)]
        self.ours = hashes(self.a)
        self.state = state_dump(self.a.node.store)

    def assertKept(self):
        self.assertEqual(hashes(self.a), self.ours)
        self.assertEqual(state_dump(self.a.node.store), self.state)
        self.assertEqual(self.a.node.queries.get_tx(self.t.hash)["status"], "included")
        self.assertEqual(len(self.a.node.mempool), 0)
        self.assertFalse(self.logged("reorg"))
        self.assertEqual(sync_lag(self.a), 0)

    def asks(self, liar):
        return [m["data"] for m in liar.client.got if m["type"] == "get_blocks"]

    def test_old_block_with_a_high_claim_never_drops_the_longer_chain(self):
        liar = authed_raw(self.net, self.a, height=10**6, head="ab" * 32)
        self.assertEqual(len(self.asks(liar)), 1)
        liar.client.send("blocks", {"blocks": self.old[:1], "height": 10**6})
        self.net.settle()
        self.assertKept()
        self.assertEqual(self.asks(liar)[-1], {"from": 4, "limit": p2pmod.SYNC_BATCH})  # held, asked for more
        liar.client.send("blocks", {"blocks": self.old[1:], "height": 10**9})
        self.net.settle()
        self.assertKept()
        liar.client.send("blocks", {"blocks": [], "height": 10**9})  # nothing more: it was never longer
        self.net.settle()
        self.assertKept()
        self.assertIsNone(self.a.sync._branch)
        # The same replayed as gossip, or with a status claim, changes nothing either.
        for entry in self.old:
            liar.client.send("block", entry)
        liar.client.send("status", {"height": 10**9, "head": "cd" * 32})
        self.net.settle()
        self.assertKept()
        self.assertEqual(self.a.scores[liar.node_id], 0)  # old valid blocks are no offence

    def test_a_branch_whose_peer_goes_silent_is_let_go(self):
        liar = authed_raw(self.net, self.a, height=10**6, head="ab" * 32)
        liar.client.send("blocks", {"blocks": self.old, "height": 10**6})
        self.net.settle()
        self.assertIsNotNone(self.a.sync._branch)
        self.net.advance(p2pmod.SYNC_TIMEOUT)
        self.assertIsNone(self.a.sync._branch)  # its memory is not held for a silent peer
        self.assertKept()


# -- defect 6: get_blocks amplification ----------------------------------------

def queued(link):
    """Bytes the accepting node wrote to link that its peer has not read."""
    return sum(len(chunk) for chunk in link.pump.serverIO.stream)


def push(link):
    """Move what the dialing side wrote to the node, and nothing back: a
    peer that never reads its socket."""
    data = link.pump.clientIO.getOutBuffer()
    if data:
        link.pump.serverIO.bufferReceived(data)


def tick(clock, seconds):
    """Let seconds pass a second at a time, as a running reactor would
    (Clock.advance runs a LoopingCall once however far it jumps)."""
    for _ in range(seconds):
        clock.advance(1)


class DeafPeerTests(P2PTestCase):
    """A peer that asks for blocks and never reads the answers."""

    def setUp(self):
        super().setUp()
        self.auth = self.net.peer()
        # Auto-ping would drop a peer that reads nothing at all after 40 s
        # (no pong); off here, as for a peer that reads only its pings.
        self.auth.server_factory.setProtocolOptions(autoPingInterval=0)
        for _ in range(200):
            self.auth.node.pipeline.propose()
        self.entry_bytes = len(encode("x", self.auth.node.chain.block_entry(100))) - 8

    def deaf(self):
        """An authenticated raw peer, then taken off the network's pump."""
        link = authed_raw(self.net, self.auth, height=0)
        self.net.links.remove(link)
        self.conn = link.server
        self.assertIn(self.conn, self.auth.conns)
        return link

    def test_flood_of_get_blocks_stays_bounded_and_is_cut_off(self):
        link = self.deaf()
        for _ in range(300):
            link.client.send("get_blocks", {"from": 1, "limit": 512})
        push(link)
        self.net.clock.advance(0)
        bound = wire_mod.SEND_LOW + serve_mod.ANSWER_BYTES + 4096
        self.assertLessEqual(queued(link), bound)
        # One request waited; the next was a protocol violation: closed.
        self.assertEqual(self.auth.scores[link.node_id], p2pmod.PENALTY["protocol"])
        self.assertEqual(self.conn.state, self.conn.STATE_CLOSING)
        for _ in range(5):
            self.net.clock.advance(1)  # the close handshake times out: dropped
        self.assertTrue(link.pump.serverIO.disconnecting)
        self.assertLessEqual(queued(link), bound)
        # The node goes on: it proposes and answers another peer.
        self.auth.node.pipeline.propose()
        other = authed_raw(self.net, self.auth, height=0)
        other.client.send("get_blocks", {"from": 195, "limit": 10})
        self.net.settle()
        answer = [m["data"] for m in other.client.got if m["type"] == "blocks"][-1]
        self.assertEqual([e["block"]["header"]["height"] for e in answer["blocks"]], list(range(195, 202)))

    def test_a_peer_that_stops_reading_is_dropped_after_the_deadline(self):
        link = self.deaf()
        sent = 0
        while queued(link) <= wire_mod.SEND_LOW:  # one request at a time, each answered
            link.client.send("get_blocks", {"from": 1, "limit": 512})
            push(link)
            sent += 1
            self.assertLess(sent, 100)
        link.client.send("get_blocks", {"from": 1, "limit": 512})  # waits: the output is over SEND_LOW
        push(link)
        held = queued(link)
        self.assertEqual(self.conn.state, self.conn.STATE_OPEN)
        tick(self.net.clock, wire_mod.SEND_DEADLINE - 1)
        self.assertFalse(link.pump.serverIO.disconnecting)
        self.assertEqual(queued(link), held)  # the waiting request was not answered
        tick(self.net.clock, 2)
        self.assertTrue(link.pump.serverIO.disconnecting)
        self.assertTrue(self.logged("peer_not_reading"))
        self.assertLessEqual(held, wire_mod.SEND_LOW + serve_mod.ANSWER_BYTES)

    def test_a_waiting_request_is_answered_once_the_peer_reads(self):
        link = self.deaf()
        asked = 0
        while queued(link) <= wire_mod.SEND_LOW:
            link.client.send("get_blocks", {"from": 1, "limit": 512})
            push(link)
            asked += 1
        link.client.send("get_blocks", {"from": 150, "limit": 3})
        push(link)
        self.net.links.append(link)  # it reads again
        self.net.settle()
        self.net.advance(1)
        got = [m["data"] for m in link.client.got if m["type"] == "blocks"]
        self.assertEqual(len(got), asked + 1)
        self.assertEqual([e["block"]["header"]["height"] for e in got[-1]["blocks"]], [150, 151, 152])
        self.assertFalse(link.closed)

    def test_gossip_to_a_peer_that_does_not_read_is_bounded(self):
        self.patch(wire_mod, "SEND_LOW", 10_000)
        self.patch(wire_mod, "SEND_HIGH", 20_000)
        link = self.deaf()
        for _ in range(200):
            self.auth.node.pipeline.propose()
            self.net.clock.advance(0)
        self.assertLessEqual(queued(link), wire_mod.SEND_HIGH + 2 * self.entry_bytes)
        tick(self.net.clock, wire_mod.SEND_DEADLINE + 1)
        self.assertTrue(link.pump.serverIO.disconnecting)

    def test_answer_bytes_are_capped_by_their_encoding(self):
        self.patch(serve_mod, "ANSWER_BYTES", 10 * self.entry_bytes)
        raw = authed_raw(self.net, self.auth, height=0)
        frames = []
        real = raw.client.onMessage
        raw.client.onMessage = lambda payload, isBinary: (frames.append(payload), real(payload, isBinary))
        raw.client.send("get_blocks", {"from": 1, "limit": 512})
        self.net.settle()
        [frame] = [f for f in frames if cbor2.loads(f)["type"] == "blocks"]
        answer = cbor2.loads(frame)["data"]
        self.assertLessEqual(len(frame), serve_mod.ANSWER_BYTES + 64)
        self.assertEqual(frame, encode("blocks", answer))  # the frame is canonical CBOR
        sizes = [len(cbor2.dumps(e, canonical=True)) for e in answer["blocks"]]
        self.assertLessEqual(sum(sizes), serve_mod.ANSWER_BYTES)
        following = self.auth.node.chain.block_entry(len(sizes) + 1)
        self.assertGreater(sum(sizes) + len(cbor2.dumps(following, canonical=True)), serve_mod.ANSWER_BYTES)
        # A single block larger than the cap still goes, alone.
        self.patch(serve_mod, "ANSWER_BYTES", 10)
        raw.client.send("get_blocks", {"from": 7, "limit": 512})
        self.net.settle()
        answer = cbor2.loads([f for f in frames if cbor2.loads(f)["type"] == "blocks"][-1])["data"]
        self.assertEqual([e["block"]["header"]["height"] for e in answer["blocks"]], [7])


class PendingOutputTests(SynchronousTestCase):
    def test_tcp_transport_buffer_counted(self):
        """What Twisted's TCP transport (a FileDescriptor) still holds, and
        autobahn's own queue, through a wrapper such as TLS."""
        fd = FileDescriptor(reactor=MemoryReactor())
        fd.connected = 1
        fd.write(b"x" * 100)  # waiting in _tempDataBuffer
        fd.dataBuffer, fd.offset = b"y" * 50, 10  # 40 bytes of it not yet sent
        conn = wire_mod.PeerConnection()
        conn.transport = fd
        self.assertEqual(conn.pending_output(), 140)
        conn.transport = type("TLS", (), {"transport": fd})()
        conn.send_queue = [(b"z" * 7, False)]
        self.assertEqual(conn.pending_output(), 147)

    def test_blocks_frame_is_the_canonical_encoding(self):
        entries = [{"block": {"n": n, "pad": "p" * n}, "txs": []} for n in (0, 1, 30, 300)]
        for count, heights in ((0, (0, 23, 24, 2**40)), (1, (7,)), (23, (7,)), (24, (7,)), (255, (7,)), (256, (7,)),
                               (65_536, (2**32,))):
            some = (entries * (count // 4 + 1))[:count] if count < 1000 else [0] * count
            raw = [cbor2.dumps(e, canonical=True) for e in some]
            for height in heights:
                self.assertEqual(wire_mod.blocks_frame(raw, height), encode("blocks", {"blocks": some, "height": height}))


# -- defect 11: claim gossip poisoning -----------------------------------------

class ClaimGossipTests(P2PTestCase):
    """A valid claim relayed first with a junk attestation must not make the
    node ignore the real one; the junk costs the relaying peer."""

    def setUp(self):
        super().setUp()
        self.auth = self.net.peer()
        payment = transfer(ALICE, 1, ESCROW, 5000)
        self.auth.node.admission.submit(payment.to_wire())
        self.auth.node.pipeline.propose()
        payload = sign_claim(MINER, CHAIN_ID, receipt_id="r1", job_id="job_1", client_addr=ALICE.address,
                             miner_addr=MINER.address, compute_units=3, price=5000, output_hash="out",
                             client_payment_tx=payment.hash)
        self.claim = sign_tx(MINER, CHAIN_ID, CLAIM, 1, 1000, payload)
        self.real = sign_attestation(COORDINATOR, CHAIN_ID, attestation_request(payload))

    def junk(self):
        other = KeyPair.generate()
        wrong_payment = dict(attestation_request(self.claim.payload), client_payment_tx="ee" * 32)
        return {
            "attestation_missing": None,
            "attestation_malformed": {"sig": "00"},
            "attestation_bad_signature": dict(self.real, sig=other.sign(b"x" * 32).hex()),
            "attestation_wrong_coordinator": sign_attestation(other, CHAIN_ID, attestation_request(self.claim.payload)),
            "attestation_wrong_payment": sign_attestation(COORDINATOR, CHAIN_ID, wrong_payment),
            "job_not_paid": sign_attestation(COORDINATOR, CHAIN_ID, attestation_request(self.claim.payload), paid=False),
        }

    def relay(self, link, attestation):
        data = {"tx": self.claim.to_wire()}
        if attestation is not None:
            data["attestation"] = attestation
        link.client.send("tx", data)
        self.net.settle()

    def test_junk_attestation_first_never_hides_the_real_one(self):
        junk = self.junk()
        liar = authed_raw(self.net, self.auth)
        for n, (code, att) in enumerate(junk.items(), 1):
            self.relay(liar, att)
            self.assertNotIn(self.claim.hash, self.auth.node.mempool, code)
            self.assertEqual(self.auth.scores[liar.node_id], n * p2pmod.PENALTY["bad_tx"], code)
        honest = authed_raw(self.net, self.auth)
        self.relay(honest, self.real)
        self.assertIn(self.claim.hash, self.auth.node.mempool)
        self.assertEqual(self.auth.node.mempool.attestation(self.claim.hash), self.real)
        self.assertEqual(self.auth.scores[honest.node_id], 0)
        block = self.auth.node.pipeline.propose()
        self.assertEqual(block["txs"], [self.claim.hash])
        self.assertEqual(block["attestations"], {self.claim.hash: self.real})
        # Once admitted it is seen: more copies are dropped unread, at no cost.
        self.relay(liar, None)
        self.assertEqual(self.auth.scores[liar.node_id], len(junk) * p2pmod.PENALTY["bad_tx"])


# -- defect 13: a reorganisation loses no transaction silently -----------------

class ReorgKeepsTransactionsTests(P2PTestCase):
    def test_every_undone_transaction_is_pending_again_or_reported(self):
        """a (K1, a mempool holding 4 per sender) has blocks with 6 of
        ALICE's transfers, BOB's nonce 1 and a claim; b (K2) a longer chain
        holding another BOB nonce 1.  After a switches to b's chain, each
        transaction of a's undone blocks is pending again, or getTx says it
        was dropped by the reorganisation and why."""
        doc = genesis_doc(authorities=(K1, K2))
        a = self.net.peer(doc=doc, key=K1, mempool=Mempool(max_per_sender=4))
        b = self.net.peer(doc=doc, key=K2)
        payment = transfer(ALICE, 1, ESCROW, 5000)
        a.node.admission.submit(payment.to_wire())
        a.node.pipeline.propose()
        e = a.node.chain.block_entry(1)
        b.node.pipeline.import_block(e["block"], [b.node.admission.parse(w) for w in e["txs"]])
        # a's branch: blocks 2 to 4.
        payload = sign_claim(MINER, CHAIN_ID, receipt_id="r1", job_id="job_1", client_addr=ALICE.address,
                             miner_addr=MINER.address, compute_units=3, price=5000, output_hash="out",
                             client_payment_tx=payment.hash)
        claim = sign_tx(MINER, CHAIN_ID, CLAIM, 1, 1000, payload)
        att = sign_attestation(COORDINATOR, CHAIN_ID, attestation_request(payload))
        self.successResultOf(defer.ensureDeferred(a.node.admission.relay(claim, att)))
        alice = [transfer(ALICE, n, CAROL, n) for n in range(2, 8)]
        bob = transfer(BOB, 1, CAROL, 1)
        for batch in (alice[:4] + [bob], alice[4:]):
            for t in batch:
                a.node.admission.submit(t.to_wire())
            a.node.pipeline.propose()
        a.node.pipeline.propose()
        undone = [claim] + alice + [bob]
        for t in undone:
            self.assertEqual(a.node.queries.get_tx(t.hash)["status"], "included")
        later = transfer(ALICE, 8, CAROL, 8)  # pending at a when the reorganisation comes
        a.node.admission.submit(later.to_wire())
        # b's branch: blocks 2 to 5, with another transaction of BOB's nonce 1.
        b.node.admission.submit(transfer(BOB, 1, CAROL, 99).to_wire())
        for _ in range(4):
            b.node.pipeline.propose()
        self.net.connect(a, b)
        self.assertEqual(self.assertSameChain(a, b), hashes(b))
        self.assertTrue(self.logged("reorg"))
        statuses = {}
        for t in undone + [later]:
            got = a.node.queries.get_tx(t.hash)
            self.assertIsNotNone(got, f"{t} vanished")
            statuses[t.hash] = got["status"]
            if got["status"] == "failed":
                error = got["receipt"]["error"]
                self.assertEqual(error["code"], "dropped_by_reorg")
                statuses[t.hash] += ":" + error["message"].split(":")[0]
        self.assertEqual(statuses[claim.hash], "pending")
        self.assertEqual(a.node.mempool.attestation(claim.hash), att)  # it came back with its block's attestation
        self.assertEqual(statuses[bob.hash], "failed:nonce_too_low")
        self.assertEqual([statuses[t.hash] for t in alice + [later]],
                         ["pending"] * 4 + ["failed:nonce_too_far_ahead"] * 3)
        self.assertEqual(len(a.node.mempool), 5)
        # What is pending is included next; the claim settles on the new chain.
        a.node.pipeline.propose()
        self.assertEqual(a.node.queries.get_tx(claim.hash)["status"], "included")

    def test_hundreds_dropped_at_once(self):
        """300 transactions of the undone blocks all refused (the new chain
        used their nonces): each is reported, and no refusal keeps an LMDB
        reader open (a node has 126)."""
        doc = genesis_doc(authorities=(K1, K2))
        a = self.net.peer(doc=doc, key=K1)
        b = self.net.peer(doc=doc, key=K2)
        mine = [transfer(ALICE, n, CAROL, 1) for n in range(1, 301)]
        for t in mine:
            a.node.admission.submit(t.to_wire())
        a.node.pipeline.propose()
        for n in range(1, 301):
            b.node.admission.submit(transfer(ALICE, n, CAROL, 2).to_wire())
        b.node.pipeline.propose()
        b.node.pipeline.propose()
        self.net.connect(a, b)
        self.assertEqual(self.assertSameChain(a, b), hashes(b))
        for t in mine:
            error = a.node.queries.get_tx(t.hash)["receipt"]["error"]
            self.assertEqual((error["code"], error["message"].split(":")[0]), ("dropped_by_reorg", "nonce_too_low"))


# -- defect 14: peer table, scores and bans, blocks from the future ------------

class StubConn:
    """Just what P2P.penalize reads of a connection."""

    def __init__(self, host, remote_id=None):
        self.host, self.addr, self.remote_id = host, host + ":1", remote_id
        self.dropped = False

    def dropConnection(self, abort=False):
        self.dropped = True


class BookkeepingTests(P2PTestCase):
    def test_claimed_ids_never_reach_the_peer_table(self):
        auth = self.net.peer()
        claimed = [KeyPair.generate() for _ in range(3)]
        for nk, misbehave in zip(claimed, (
                lambda raw: raw.sendMessage(b"junk", isBinary=True),
                lambda raw: raw.send("auth", {"sig": "00" * 64}),
                lambda raw: raw.dropConnection(abort=True))):
            self.net.advance(p2pmod.HOST_BAN_SECONDS + 1)
            link = self.net.connect(None, auth, protocol=RawClient)
            hello_as(link, auth, nk)
            self.net.settle()
            misbehave(link.client)
            self.net.settle()
        proven = authed_raw(self.net, auth)
        self.assertEqual(set(auth.node.local.peers()), {proven.node_id})
        self.assertFalse({nk.public_key.hex() for nk in claimed} & (set(auth.scores) | set(auth.bans)))

    def test_bans_and_scores_are_pruned_and_bounded(self):
        p = self.net.peer()
        clock = self.net.clock
        self.patch(book_mod, "MAX_SCORES", 50)
        self.patch(book_mod, "SCORE_TTL", 900)  # ticked through a second at a time below
        self.patch(book_mod, "MAX_BANS", 20)
        for n in range(200):  # many hosts and many proven ids, each banned
            conn = StubConn(f"10.0.{n // 250}.{n % 250}", remote_id=None if n % 2 else f"{n:064x}")
            p.penalize(conn, "oversized", "test")
            self.assertTrue(conn.dropped)
            self.assertLessEqual(len(p.scores), 50)
            self.assertLessEqual(len(p.bans), 20)
        # The bans that end last are those kept (a host's are short).
        self.assertTrue(18 <= len(p.bans) <= 20, len(p.bans))  # trimmed to 90% when over the bound
        self.assertTrue(p.is_banned(node_id=f"{198:064x}"))
        self.assertFalse(p.is_banned(node_id=f"{0:064x}"))
        # Expired bans go; the scores of peers gone for SCORE_TTL too.
        tick(clock, p2pmod.BAN_SECONDS + book_mod.PRUNE_INTERVAL)
        self.assertEqual(p.bans, {})
        self.assertTrue(p.scores)
        tick(clock, book_mod.SCORE_TTL)
        self.assertEqual(p.scores, {})
        # The peer table keeps the rows seen last.
        self.patch(book_mod, "MAX_PEER_ROWS", 3)
        for n in range(6):
            p.node.local.put_peer(f"{n:064x}", {"addr": "10.1.1.1:1", "last_seen": int(clock.seconds()) + n, "score": 0})
        p.book.prune()
        self.assertEqual(sorted(p.node.local.peers()), [f"{n:064x}" for n in (3, 4, 5)])

    def test_a_connected_peer_keeps_its_score(self):
        self.patch(book_mod, "SCORE_TTL", 120)  # ticked through a second at a time below
        auth = self.net.peer()
        follower = self.net.peer(key=None)
        link = self.net.connect(follower, auth)
        link.client.send("tx", {"tx": {"type": "TRANSFER"}})
        self.net.settle()
        tick(self.net.clock, book_mod.SCORE_TTL + book_mod.PRUNE_INTERVAL)
        self.assertFalse(link.closed)
        self.assertEqual(auth.scores[follower.node_id], p2pmod.PENALTY["bad_tx"])
        link.client.dropConnection(abort=True)
        self.net.settle()
        tick(self.net.clock, book_mod.SCORE_TTL + book_mod.PRUNE_INTERVAL)
        self.assertNotIn(follower.node_id, auth.scores)
        self.assertEqual(auth.node.local.peers()[follower.node_id]["score"], p2pmod.PENALTY["bad_tx"])


DRIFT = chain_mod.MAX_FUTURE_DRIFT // 1000  # seconds


class FutureBlockTests(P2PTestCase):
    """Blocks stamped more than MAX_FUTURE_DRIFT (ms) ahead of the node's
    clock are held until their time, never imported early.  Clocks here
    count seconds; DRIFT is the drift in seconds."""

    def setUp(self):
        super().setUp()
        self.follower = self.net.peer(key=None)
        self.now = int(self.net.clock.seconds())

    def source(self, ahead):
        """An authority whose clock runs ahead seconds ahead of the network's."""
        clock = Clock()
        clock.advance(self.now + ahead)
        return make_node(self, clock=clock)

    def test_verify_block_bounds_the_timestamp(self):
        node = make_node(self, clock=self.net.clock)
        block = self.source(DRIFT + 1).pipeline.propose()
        with self.assertRaises(AitError) as e:
            node.chain.verify_block(block, [], now=self.now * 1000)
        self.assertEqual(e.exception.code, "block_in_future")
        node.chain.verify_block(block, [], now=(self.now + 1) * 1000)[2].release()  # within the drift
        node.chain.verify_block(block, [], now=None)[2].release()  # no clock, no bound (the caller's choice)

    def test_gossiped_block_from_the_future_is_held_until_its_time(self):
        ahead = 30
        block = self.source(ahead).pipeline.propose()
        peer = authed_raw(self.net, self.follower)
        peer.client.send("block", {"block": block, "txs": []})
        self.net.settle()
        self.assertEqual(self.follower.node.chain.head()[0], 0)
        self.assertEqual(len(self.follower.sync.held), 1)
        self.assertEqual(self.follower.scores[peer.node_id], 0)  # no offence
        self.net.advance(ahead - DRIFT - 1)
        self.assertEqual(self.follower.node.chain.head()[0], 0)
        self.net.advance(1)
        self.assertEqual(self.follower.node.chain.head(), (1, block["hash"]))
        self.assertEqual(self.follower.sync.held, {})

    def test_the_holding_area_is_bounded(self):
        source = self.source(40)
        peer = authed_raw(self.net, self.follower)
        for n in range(held_mod.HELD_BLOCKS + 5):  # distinct blocks at height 1
            block, _, view, _ = source.chain.build_block([], AUTHORITY, (self.now + 20) * 1000 + n)
            view.release()
            peer.client.send("block", {"block": block, "txs": []})
        far = self.source(held_mod.HOLD_AHEAD + DRIFT + 60).pipeline.propose()
        peer.client.send("block", {"block": far, "txs": []})
        self.net.settle()
        self.assertEqual(len(self.follower.sync.held), held_mod.HELD_BLOCKS)
        self.assertNotIn(far["hash"], self.follower.sync.held)
        self.assertTrue(self.logged("block_too_far_ahead"))
        self.net.advance(100)
        self.assertEqual(self.follower.node.chain.head()[0], 1)  # one of them; the others no longer extend
        self.assertEqual(self.follower.sync.held, {})
        self.assertEqual(self.follower.scores[peer.node_id], 0)

    def test_sync_answer_stops_at_a_block_from_the_future(self):
        source = self.source(0)
        source.pipeline.propose()
        source.pipeline.propose()
        source.clock.advance(100)
        source.pipeline.propose()  # block 3: 100 s ahead of the network's clock
        source.pipeline.propose()  # block 4: one turn (block_interval_ms) after block 3
        stamps = [source.chain.store.block_at(h)["header"]["timestamp"] for h in (3, 4)]
        self.assertEqual(stamps[1] - stamps[0], source.chain.params()["block_interval_ms"])
        peer = authed_raw(self.net, self.follower, height=4)
        peer.client.send("blocks", {"blocks": [source.chain.block_entry(h) for h in (1, 2, 3, 4)], "height": 4})
        self.net.settle()
        self.assertEqual(self.follower.node.chain.head()[0], 2)
        self.assertEqual(self.follower.scores[peer.node_id], 0)
        asks = [m["data"] for m in peer.client.got if m["type"] == "get_blocks"]
        self.assertEqual(len(asks), 1)  # it does not ask again before block 3 is due
        self.net.advance(100 - DRIFT - 1)
        self.assertEqual(len([m for m in peer.client.got if m["type"] == "get_blocks"]), 1)
        self.net.advance(1)
        asks = [m["data"] for m in peer.client.got if m["type"] == "get_blocks"]
        self.assertEqual(len(asks), 2)
        peer.client.send("blocks", {"blocks": [source.chain.block_entry(h) for h in (3, 4)], "height": 4})
        self.net.settle()
        # Block 3 is due; block 4, a turn later, is not yet: it stops there again.
        self.assertEqual(self.follower.node.chain.head()[0], 3)
        self.assertEqual(len([m for m in peer.client.got if m["type"] == "get_blocks"]), 2)
        self.net.advance(1)
        self.assertEqual(len([m for m in peer.client.got if m["type"] == "get_blocks"]), 3)
        peer.client.send("blocks", {"blocks": [source.chain.block_entry(4)], "height": 4})
        self.net.settle()
        self.assertEqual(self.follower.node.chain.head(), source.chain.head())
        self.assertEqual(self.follower.scores[peer.node_id], 0)


class ConnectionBoundTests(P2PTestCase):
    def test_a_connection_that_never_finishes_its_handshake_is_closed(self):
        auth = self.net.peer()
        idle = self.net.connect(None, auth, protocol=RawClient)
        slow = self.net.connect(None, auth, protocol=RawClient)
        hello_as(slow, auth, KeyPair.generate())  # a hello, but never an auth
        tick(self.net.clock, watch_mod.HANDSHAKE_SECONDS - 1)
        self.net.settle()
        self.assertFalse(idle.closed or slow.closed)
        tick(self.net.clock, 2)
        self.net.settle()
        self.assertTrue(idle.closed and slow.closed)
        self.assertEqual(idle.client.closed[0], p2pmod.CLOSE_PROTOCOL)
        self.assertEqual(auth.open_conns, set())
        self.assertEqual(auth.scores, {})  # slowness is no offence
        self.assertTrue(self.logged("handshake_timeout"))

    def test_incoming_connections_are_capped_but_own_dials_are_not(self):
        self.patch(peers_mod, "MAX_INBOUND", 3)
        auth = self.net.peer()
        held = [self.net.connect(None, auth, protocol=RawClient) for _ in range(3)]
        refused = self.net.connect(None, auth, protocol=RawClient)
        self.assertTrue(refused.closed)
        self.assertEqual(refused.client.closed[0], p2pmod.CLOSE_FULL)
        self.assertNotIn("hello", refused.client.types())
        self.assertFalse(any(link.closed for link in held))
        # The node's own dial to a peer it chose still goes through.
        other = self.net.peer(key=None)
        out = self.net.connect(auth, other)
        self.assertFalse(out.closed)
        self.assertEqual(len(auth.conns), 1)
        # Once one goes, a newcomer is taken again.
        held[0].client.dropConnection(abort=True)
        self.net.settle()
        self.assertFalse(self.net.connect(None, auth, protocol=RawClient).closed)



class HelloTypeTests(P2PTestCase):
    def test_version_must_be_the_integer(self):
        """version true or 1.0 equals 1 in Python, not on the wire."""
        auth = self.net.peer()
        for version in (True, 1.0):
            link = self.net.connect(None, auth, protocol=RawClient)
            hello_as(link, auth, KeyPair.generate(), version=version)
            self.net.settle()
            self.assertTrue(link.closed)
            self.assertIn("version differs", link.client.first("reject")["reason"])
