"""The peer manager: connections, handshakes, dispatch and gossip.

After both sides are authenticated (see wire), a connection may send:

    status      {height, head}                      the sender's head
    tx          {tx, attestation?}                  gossip, relayed once
    block       {block, txs}                        gossip, relayed once
    get_blocks  {locator: [hash...], limit}         or {from, limit}
    blocks      {blocks: [{block, txs}...], height} the answer

Block sync is sync.BlockSync's, answering get_blocks serve.BlockServer's,
scores and bans book.PeerBook's, the per-second look at every connection
watch.Watch's.  Protocol code reaches storage only through the chain's
and the node-local tables' APIs.
"""

import collections
import re
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketServerFactory
from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.web.resource import Resource

from aitnode.errors import AitError
from aitnode.p2p import wire
from aitnode.p2p.ballots import BallotGossip
from aitnode.p2p.book import PeerBook
from aitnode.p2p.serve import BlockServer
from aitnode.p2p.sync import SYNC_BATCH, BlockSync, check_entry, note_head
from aitnode.p2p.watch import Watch
from aitnode.receipts import CLAIM
from aitnode.p2p.wire import (
    CLOSE_BANNED, CLOSE_PROTOCOL, VERSION, ClientPeer, PeerError, ServerPeer, auth_bytes, encode, set_options,
)

SEEN_SIZE = 50_000
# Refusals of a relayed transaction that no honest peer could cause (it
# checked the same things before relaying); every attestation_* code too.
# The others (nonce, balance, fee...) depend on a state peers may not share.
PEER_FAULTS = frozenset(("bad_signature", "pubkey_mismatch", "job_not_found", "job_not_paid", "job_double_spent"))
# Incoming peer connections taken at once; the node's own dials to its
# configured peers are never refused (so no one can cut it off from them).
MAX_INBOUND = 128


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_peer_addr(addr):
    """A peer URL the node can dial: ws:// or wss://, a DNS name or an IPv4
    address, an optional port; nothing else (no user, fragment or unix: host,
    which the WebSocket client and the endpoint string cannot take)."""
    bad = AitError("bad_peer_addr", "a peer address is a ws://host:port/p2p/ws URL (host: a DNS name or an IPv4 address)")
    if type(addr) is not str or not addr.isascii():
        raise bad
    try:
        url = urlsplit(addr)
        url.port  # ValueError when out of range or not a number
    except ValueError:
        raise bad from None
    host = url.hostname
    if url.scheme not in ("ws", "wss") or not host or host == "unix" or url.fragment or "@" in url.netloc:
        raise bad
    if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise bad


class LRUSet:
    def __init__(self, size):
        self.size = size
        self._d = collections.OrderedDict()

    def add(self, key):
        """Add key; False if it was already there."""
        if key in self._d:
            self._d.move_to_end(key)
            return False
        self._d[key] = None
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return True

    def __contains__(self, key):
        return key in self._d


def _yield(reactor):
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d


class P2P(service.MultiService):
    """The peer manager: handshakes, gossip, scores and bans."""

    _log = Logger()

    def __init__(self, node, node_key, reactor, peers=(), sync_batch=SYNC_BATCH):
        super().__init__()
        self.node = node
        self.chain = node.chain
        self.admission = node.admission
        self.key = node_key
        self.node_id = node_key.public_key.hex()
        self.reactor = reactor
        self.conns = set()  # ready connections
        self.open_conns = set()  # every open connection, ready or still in its handshake
        self.seen_tx = LRUSet(SEEN_SIZE)
        self.seen_block = LRUSet(SEEN_SIZE)
        self.ballots = BallotGossip(self, LRUSet(SEEN_SIZE), node.ballot)
        self.book = PeerBook(node.local, reactor, self._connected_keys)
        self.scores, self.bans = self.book.scores, self.book.bans
        self.importing_from = None  # the peer whose block is being imported
        self.outgoing = {}  # url -> ClientService
        self.watch = Watch(self, reactor)
        self.sync = BlockSync(self, node, reactor, lambda: _yield(reactor), sync_batch=sync_batch)
        self.server = BlockServer(self.chain, sync_batch)
        self.server_factory = WebSocketServerFactory()
        self.server_factory.protocol = ServerPeer
        self.server_factory.p2p = self
        set_options(self.server_factory, reactor)
        for url in peers:
            self.add_peer(url)
        node.pipeline.block_listeners.append(self.on_local_block)
        node.admission.tx_listeners.append(self.on_local_tx)

    # -- wiring ----------------------------------------------------------
    def resource(self):
        """/p2p/ws, to mount in a twisted.web Site."""
        p2p = Resource()
        p2p.putChild(b"ws", WebSocketResource(self.server_factory))
        return p2p

    def startService(self):
        self.server_factory.startFactory()
        self.watch.start()
        super().startService()

    def stopService(self):
        self.watch.stop()
        self.sync.stop()
        d = super().stopService()
        for conn in list(self.conns):
            conn.dropConnection(abort=True)
        self.server_factory.stopFactory()
        return d

    def add_peer(self, url):
        """Keep an outgoing connection to url, reconnecting with backoff."""
        check_peer_addr(url)
        if url in self.outgoing:
            return False
        factory = WebSocketClientFactory(url)
        factory.protocol = ClientPeer
        factory.p2p = self
        set_options(factory, self.reactor)
        host, port = factory.host, factory.port
        kind = "tls" if factory.isSecure else "tcp"
        endpoint = clientFromString(self.reactor, f"{kind}:host={host}:port={port}")
        svc = internet.ClientService(
            endpoint, factory, retryPolicy=internet.backoffPolicy(initialDelay=0.5, maxDelay=30), clock=self.reactor,
        )
        self.outgoing[url] = svc
        svc.setServiceParent(self)
        return True

    # -- connections' output ---------------------------------------------------
    def opened(self, conn):
        self.open_conns.add(conn)

    def inbound_full(self):
        return sum(1 for c in self.open_conns if c.direction == "in") >= MAX_INBOUND

    def _connected_keys(self):
        """Hosts and proven ids of the open connections (their scores stay)."""
        keys = set()
        for conn in self.open_conns:
            keys.add(conn.host)
            if conn.remote_id is not None:
                keys.add(conn.remote_id)
        return keys

    # -- handshake -------------------------------------------------------
    def hello(self, challenge):
        height, head = self.chain.head()
        return {
            "chain_id": self.chain.chain_id, "genesis": self.chain.genesis.hash, "version": VERSION,
            "node_id": self.node_id, "challenge": challenge, "height": height, "head": head,
        }

    def _on_hello(self, conn, d):
        challenge = conn.on_hello(d, self.hello(conn.challenge))
        if not challenge:
            return
        sig = self.key.sign(auth_bytes(self.chain.chain_id, challenge, self.node_id))
        conn.send("auth", {"sig": sig.hex()})
        conn.authed_out = True
        self._maybe_ready(conn)

    def _on_auth(self, conn, d):
        conn.on_auth(d, self.chain.chain_id)
        if self.is_banned(node_id=conn.remote_id):
            conn.sendClose(CLOSE_BANNED, "banned")
            return
        self._maybe_ready(conn)

    def _maybe_ready(self, conn):
        if conn.ready or not (conn.authed_in and conn.authed_out):
            return
        conn.ready = True
        self.conns.add(conn)
        self.book.joined(conn)
        self._log.info("peer joined {peer} ({direction}) height={height}", peer=conn.addr, direction=conn.direction,
                       height=conn.remote_height, node_id=conn.remote_id, component="p2p", event="peer_joined")
        self.sync.maybe_sync(conn)

    # -- dispatch ----------------------------------------------------------
    def received(self, conn, mtype, data):
        self.node.metrics.p2p_received(mtype, conn.frame_bytes)
        if mtype == "hello":
            return self._on_hello(conn, data)
        if mtype == "auth":
            return self._on_auth(conn, data)
        if mtype == "reject":
            reason = data.get("reason") if type(data) is dict else None
            reason = reason[:200] if type(reason) is str else "(no reason given)"
            self._log.warn("peer {peer} refused us: {reason}", peer=conn.addr, reason=reason,
                           component="p2p", event="refused_by_peer")
            return conn.sendClose(1000, "rejected")
        if not conn.ready:
            raise PeerError("protocol", f"{mtype} before the handshake")
        if mtype not in self.MESSAGES:
            raise PeerError("protocol", f"unknown message type {mtype!r}")
        getattr(self, "_on_" + mtype)(conn, data)

    def _on_status(self, conn, d):
        if type(d) is not dict:
            raise PeerError("protocol", "status is not a map")
        conn.set_status(d)
        self.sync.maybe_sync(conn)

    def _on_tx(self, conn, d):
        if type(d) is not dict or type(d.get("tx")) is not dict:
            raise PeerError("protocol", "tx message malformed")
        try:
            tx = self.admission.parse(d["tx"])
        except AitError as e:
            raise PeerError("bad_tx", e.message)
        if tx.hash in self.seen_tx or self.admission.known(tx):
            return
        if tx.type != CLAIM:
            # A claim's attestation is not in its txHash: only a claim
            # admitted with an attestation that checks is marked seen (by
            # on_local_tx), or a junk copy would hide the real one.
            self.seen_tx.add(tx.hash)
        d = defer.ensureDeferred(self.admission.relay(tx, d.get("attestation")))

        def failed(f):
            f.trap(AitError)
            if f.value.code in PEER_FAULTS or f.value.code.startswith("attestation_"):
                self.penalize(conn, "bad_tx", f.value.message)

        d.addErrback(failed)
        d.addErrback(lambda f: self._log.failure("relayed tx failed", f, component="p2p", event="tx_error"))

    def _on_block(self, conn, d):
        entry = check_entry(d)
        header = entry["block"]["header"]
        if not self.seen_block.add(entry["block"]["hash"]):
            return
        note_head(self.chain, conn, entry["block"])  # a claim: it picks whom to sync from, nothing more
        self.node.ballot.seen_header(header, entry["block"].get("sig"))  # a second header at one height is evidence
        # Relaying is on_local_block's: it runs for every committed block.
        self.sync.on_block(conn, entry)

    def _on_get_blocks(self, conn, d):
        self.server.on_get_blocks(conn, d)

    def _on_blocks(self, conn, d):
        self.sync.on_blocks(conn, d)

    def _on_vote(self, conn, d):
        self.ballots.received(conn, d, "vote", self.node.ballot.receive_vote)

    def _on_evidence(self, conn, d):
        self.ballots.received(conn, d, "evidence", self.node.ballot.receive_evidence)

    MESSAGES = frozenset(("status", "tx", "block", "get_blocks", "blocks", "vote", "evidence"))  # after the handshake

    # -- gossip ----------------------------------------------------------------
    def on_local_block(self, block):
        self.seen_block.add(block["hash"])
        if self.conns:
            entry = self.chain.block_entry(block["header"]["height"])
            # Not back to the peer it came from: it has it.
            self.broadcast("block", entry, exclude=self.importing_from)

    def on_local_tx(self, tx):
        self.seen_tx.add(tx.hash)
        if self.conns:
            data = {"tx": tx.to_wire()}
            att = self.node.mempool.attestation(tx.hash)
            if att is not None:
                data["attestation"] = att
            self.broadcast("tx", data)

    def broadcast(self, mtype, data, exclude=None):
        frame = encode(mtype, data)
        for conn in list(self.conns):
            # A connection being dropped stays in conns until onClose;
            # sending on it would raise (and stop the caller's loop).  A
            # peer that does not read gets no more gossip (it syncs later).
            if conn is not exclude and conn.state == conn.STATE_OPEN and conn.pending_output() <= wire.SEND_HIGH:
                conn.sendMessage(frame, isBinary=True)

    # -- scores and bans ---------------------------------------------------
    def penalize(self, conn, kind, reason):
        if self.book.penalize(conn, kind, reason):
            conn.dropConnection(abort=True)

    def misbehaved(self, conn, kind, reason):
        self.penalize(conn, kind, reason)
        if kind in ("garbage", "protocol") and conn.state != conn.STATE_CLOSED:
            conn.sendClose(CLOSE_PROTOCOL, reason[:100])

    def is_banned(self, node_id=None, addr=None):
        return self.book.is_banned(node_id, addr)

    def disconnected(self, conn):
        self.open_conns.discard(conn)
        self.book.left(conn)
        if conn in self.conns:
            self.conns.discard(conn)
            self._log.info("peer left {peer}", peer=conn.addr, component="p2p", event="peer_left")
        self.sync.disconnected(conn)

    def peer_list(self):
        out = []
        for conn in self.conns:
            out.append({
                "node_id": conn.remote_id, "addr": conn.addr, "direction": conn.direction, "state": "ready",
                "height": conn.remote_height, "head": conn.remote_head,
                "score": self.scores.get(conn.remote_id, 0),
            })
        known = {c["node_id"] for c in out}
        for node_id, rec in self.node.local.peers().items():
            if node_id not in known:
                banned = self.is_banned(node_id=node_id)
                out.append(dict(rec, node_id=node_id, state="banned" if banned else "disconnected",
                                score=self.scores.get(node_id, rec.get("score", 0))))
        return {"node_id": self.node_id, "peers": out, "dialing": sorted(self.outgoing)}

