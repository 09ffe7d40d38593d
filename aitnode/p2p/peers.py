"""The peer manager: connections, handshakes, gossip, scores and bans.

After both sides are authenticated (see wire), a connection may send:

    status      {height, head}                      the sender's head
    tx          {tx, attestation?}                  gossip, relayed once
    block       {block, txs}                        gossip, relayed once
    get_blocks  {locator: [hash...], limit}         or {from, limit}
    blocks      {blocks: [{block, txs}...], height} the answer

Block sync is sync.BlockSync's.  Protocol code reaches storage only
through the chain's and the node-local tables' APIs.
"""

import collections
import re
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketServerFactory
from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource

from aitnode.encoding import canonical, sha256_hex
from aitnode.errors import AitError
from aitnode.p2p import wire
from aitnode.receipts import CLAIM
from aitnode.p2p.sync import SYNC_BATCH, BlockSync, check_entry
from aitnode.p2p.wire import (
    CLOSE_BANNED, CLOSE_PROTOCOL, VERSION, ClientPeer, PeerError, ServerPeer, auth_bytes, encode, set_options,
)

SEEN_SIZE = 50_000
BAN_SCORE = -100
BAN_SECONDS = 600
HOST_BAN_SECONDS = 30
PENALTY = {"garbage": -50, "bad_tx": -10, "bad_block": -60, "oversized": -100, "protocol": -30}
# Refusals of a relayed transaction that no honest peer could cause (it
# checked the same things before relaying); every attestation_* code too.
# The others (nonce, balance, fee...) depend on a state peers may not share.
PEER_FAULTS = frozenset(("bad_signature", "pubkey_mismatch", "job_not_found", "job_not_paid", "job_double_spent"))
WATCH_INTERVAL = 1  # seconds between two looks at every connection's pending output
# What the node remembers of peers is bounded: bans end (and are forgotten)
# after BAN_SECONDS; the score of a peer not connected for SCORE_TTL seconds
# is forgotten; past MAX_SCORES scores or MAX_BANS bans the oldest go; past
# MAX_PEER_ROWS rows in the peer table, those seen longest ago.  Pruned every
# PRUNE_INTERVAL seconds, and at once when a map passes its bound.
SCORE_TTL = 3600
MAX_SCORES = 10_000
MAX_BANS = 10_000
MAX_PEER_ROWS = 10_000
PRUNE_INTERVAL = 60
# Incoming peer connections taken at once (the node's own dials to its
# configured peers are never refused), and the seconds a connection has to
# finish its handshake (hello and auth both ways) before it is closed.
MAX_INBOUND = 128
HANDSHAKE_SECONDS = 10


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
        self.seen_vote = LRUSet(SEEN_SIZE)  # votes and evidence relayed, by leaf or id
        self.bans = {}  # node_id or host -> until (seconds)
        self.scores = {}  # node_id (or host, before auth) -> score
        self._score_seen = {}  # the same keys -> when that peer was last connected or penalised
        self._next_prune = 0
        self.importing_from = None  # the peer whose block is being imported
        self.outgoing = {}  # url -> ClientService
        self._watcher = None
        self.sync = BlockSync(self, node, reactor, lambda: _yield(reactor), sync_batch=sync_batch)
        self.server_factory = WebSocketServerFactory()
        self.server_factory.protocol = ServerPeer
        self.server_factory.p2p = self
        set_options(self.server_factory, reactor)
        for url in peers:
            self.add_peer(url)
        node.pipeline.block_listeners.append(self.on_local_block)
        node.admission.tx_listeners.append(self.on_local_tx)
        node.ballot.vote_listeners.append(lambda wire: self._gossip("vote", wire))
        node.ballot.evidence_listeners.append(lambda wire: self._gossip("evidence", wire))

    # -- wiring ----------------------------------------------------------
    def resource(self):
        """/p2p/ws, to mount in a twisted.web Site."""
        p2p = Resource()
        p2p.putChild(b"ws", WebSocketResource(self.server_factory))
        return p2p

    def startService(self):
        self.server_factory.startFactory()
        self._watcher = LoopingCall(self._watch)
        self._watcher.clock = self.reactor
        self._watcher.start(WATCH_INTERVAL, now=False)
        super().startService()

    def stopService(self):
        if self._watcher is not None and self._watcher.running:
            self._watcher.stop()
        self._watcher = None
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

    def _watch(self):
        """Each second: answer a get_blocks that waited for a peer's output
        to drain, and drop a peer whose output stayed over SEND_LOW for
        SEND_DEADLINE seconds (it does not read); now and then, prune."""
        now = self.reactor.seconds()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            try:
                self.prune()
            except Exception:
                self._log.failure("pruning peers failed", component="p2p", event="prune_error")
        for conn in list(self.open_conns):
            try:
                self._watch_one(conn, now)
            except Exception:
                self._log.failure("watching peer {peer} failed", peer=conn.addr, component="p2p", event="watch_error")

    def _watch_one(self, conn, now):
        if conn.state != conn.STATE_OPEN:
            return
        if not conn.ready and now - conn.opened_at >= HANDSHAKE_SECONDS:
            self._log.info("peer {peer} did not finish the handshake in {s} s", peer=conn.addr, s=HANDSHAKE_SECONDS,
                           component="p2p", event="handshake_timeout")
            conn.sendClose(CLOSE_PROTOCOL, "handshake timeout")
            return
        if conn.pending_output() <= wire.SEND_LOW:
            conn.stalled_since = None
            if conn.waiting_request is not None:
                request, conn.waiting_request = conn.waiting_request, None
                self.sync.answer(conn, request)
        elif conn.stalled_since is None:
            conn.stalled_since = now
        elif now - conn.stalled_since >= wire.SEND_DEADLINE:
            self._log.warn("peer {peer} has not read {n} bytes for {s} s; dropping it", peer=conn.addr,
                           n=conn.pending_output(), s=wire.SEND_DEADLINE, component="p2p", event="peer_not_reading")
            conn.dropConnection(abort=True)

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
        self.scores.setdefault(conn.remote_id, 0)
        self._score_seen[conn.remote_id] = self.reactor.seconds()
        self._bound_scores()
        self._touch(conn)
        self._log.info("peer joined {peer} ({direction}) height={height}", peer=conn.addr, direction=conn.direction,
                       height=conn.remote_height, node_id=conn.remote_id, component="p2p", event="peer_joined")
        self.sync.maybe_sync(conn)

    def _touch(self, conn):
        rec = {"addr": conn.addr, "last_seen": int(self.reactor.seconds()), "score": self.scores.get(conn.remote_id, 0)}
        self.node.local.put_peer(conn.remote_id, rec)

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
        wire = d["tx"]
        try:
            tx = self.admission.parse(wire)
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
        if header["height"] >= conn.remote_height:  # a claim: it picks whom to sync from, nothing more
            conn.remote_height, conn.remote_head = header["height"], entry["block"]["hash"]
        self.node.ballot.seen_header(header, entry["block"].get("sig"))  # a second header at one height is evidence
        # Relaying is on_local_block's: it runs for every committed block.
        self.sync.on_block(conn, entry)

    def _on_get_blocks(self, conn, d):
        self.sync.on_get_blocks(conn, d)

    def _on_blocks(self, conn, d):
        self.sync.on_blocks(conn, d)

    def _on_vote(self, conn, d):
        self._received_ballot(conn, d, "vote", self.node.ballot.receive_vote)

    def _on_evidence(self, conn, d):
        self._received_ballot(conn, d, "evidence", self.node.ballot.receive_evidence)

    def _received_ballot(self, conn, d, kind, receive):
        """A vote or evidence: checked by the ballot, relayed once if new;
        one that does not check costs the peer."""
        if type(d) is not dict or set(d) != {kind}:
            raise PeerError("protocol", f"{kind} message malformed")
        try:
            key = sha256_hex(canonical(d[kind]))
        except AitError as e:
            raise PeerError("protocol", f"{kind}: {e.message}")
        if key in self.seen_vote:
            return
        try:
            new = receive(d[kind])
        except AitError as e:
            raise PeerError("bad_tx", f"{kind}: {e.message}")
        if new:
            self._gossip(kind, d[kind], exclude=conn)

    def _gossip(self, kind, wire, exclude=None):
        key = sha256_hex(canonical(wire))
        if self.seen_vote.add(key) and self.conns:
            self.broadcast(kind, {kind: wire}, exclude=exclude)

    MESSAGES = frozenset(("status", "tx", "block", "get_blocks", "blocks", "vote", "evidence"))  # after the handshake

    # -- gossip ----------------------------------------------------------------
    def store_has(self, block_hash):
        store = self.chain.store
        block = store.block_by_hash(block_hash)
        return block is not None and store.hash_at(block["header"]["height"]) == block_hash

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
        who = conn.remote_id
        key = who or conn.host
        score = self.scores.get(key, 0) + PENALTY[kind]
        self.scores[key] = score
        self._score_seen[key] = self.reactor.seconds()
        self._bound_scores()
        self._log.warn("peer {peer} misbehaved ({kind}): {reason}; score {score}", peer=conn.addr, kind=kind,
                       reason=reason[:200], score=score, component="p2p", event="peer_penalized")
        if score <= BAN_SCORE:
            # A peer that proved a node id is banned by it.  One that never
            # finished the handshake is known only by its host, which honest
            # peers (behind the same NAT, or on the same machine) may share:
            # that ban is short, enough to stop a reconnect loop.
            seconds = BAN_SECONDS if who else HOST_BAN_SECONDS
            self.bans[key] = self.reactor.seconds() + seconds
            self._bound_bans()
            if not who:
                self.scores[key] = 0  # start afresh once the short ban ends
            self._log.warn("peer {peer} banned for {s} s", peer=conn.addr, s=seconds, component="p2p", event="peer_banned")
            conn.dropConnection(abort=True)
        if who:
            self._touch(conn)

    def misbehaved(self, conn, kind, reason):
        self.penalize(conn, kind, reason)
        if kind in ("garbage", "protocol") and conn.state != conn.STATE_CLOSED:
            conn.sendClose(CLOSE_PROTOCOL, reason[:100])

    def _connected_keys(self):
        keys = set()
        for conn in self.open_conns:
            keys.add(conn.host)
            if conn.remote_id is not None:
                keys.add(conn.remote_id)
        return keys

    def prune(self):
        """Forget ended bans, and scores of peers gone for SCORE_TTL; keep
        both maps, and the peer table, within their bounds."""
        now = self.reactor.seconds()
        for key in [k for k, until in self.bans.items() if until <= now]:
            del self.bans[key]
        connected = self._connected_keys()
        for key in [k for k, seen in self._score_seen.items() if now - seen >= SCORE_TTL and k not in connected]:
            self.scores.pop(key, None)
            del self._score_seen[key]
        self._bound_scores(connected)
        self._bound_bans()
        if self.node.local.peer_count() > MAX_PEER_ROWS:
            rows = self.node.local.peers()
            ids = {c.remote_id for c in self.conns}
            old = sorted((rec.get("last_seen", 0), node_id) for node_id, rec in rows.items() if node_id not in ids)
            self.node.local.drop_peers([node_id for _, node_id in old[:len(rows) - MAX_PEER_ROWS]])

    def _bound_scores(self, connected=None):
        if len(self.scores) <= MAX_SCORES:
            return
        connected = self._connected_keys() if connected is None else connected
        old = sorted((seen, k) for k, seen in self._score_seen.items() if k not in connected)
        for _, key in old[:len(self.scores) - MAX_SCORES]:
            self.scores.pop(key, None)
            del self._score_seen[key]

    def _bound_bans(self):
        if len(self.bans) > MAX_BANS:
            for _, key in sorted((until, k) for k, until in self.bans.items())[:len(self.bans) - MAX_BANS]:
                del self.bans[key]

    def is_banned(self, node_id=None, addr=None):
        now = self.reactor.seconds()
        for key in (node_id, addr):
            if key is not None and self.bans.get(key, 0) > now:
                return True
        return False

    def disconnected(self, conn):
        self.open_conns.discard(conn)
        for key in (conn.host, conn.remote_id):
            if key in self._score_seen:
                self._score_seen[key] = self.reactor.seconds()  # its time to be forgotten starts now
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

