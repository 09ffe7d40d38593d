"""Peers: CBOR messages over autobahn WebSockets, gossip and block sync.

Every message is one binary frame, canonical CBOR of ``{"type", "data"}``.
A connection starts with a handshake in both directions:

    hello  {chain_id, genesis, version, node_id, challenge, height, head}
    auth   {sig}   the ed25519 signature, by the node_id key, of
                   sha256(canonical({"chain_id", "challenge": the other
                   side's challenge, "node_id": own id}))

A peer on another chain or genesis, or speaking another version, gets
``reject {reason}`` and is closed.  After both sides are authenticated:

    status      {height, head}                     the sender's head
    tx          {tx, attestation?}                 gossip, relayed once
    block       {block, txs}                       gossip, relayed once
    get_blocks  {locator: [hash...], limit}        or {from, limit}
    blocks      {blocks: [{block, txs}...], height} the answer

Protocol code reaches storage only through the Node and Store APIs.
"""

import collections
import os

import cbor2
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory, WebSocketClientProtocol,
    WebSocketServerFactory, WebSocketServerProtocol,
)
from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.web.resource import Resource

from aitnode import crypto
from aitnode.encoding import canonical, is_hex, sha256
from aitnode.errors import AitError

VERSION = 1
MAX_MESSAGE = 16 * 1024 * 1024
SYNC_BATCH = 64
SYNC_TIMEOUT = 30  # seconds to wait for a get_blocks answer
SEEN_SIZE = 50_000
BAN_SCORE = -100
BAN_SECONDS = 600
HOST_BAN_SECONDS = 30
# Close codes: autobahn lets an application send only 1000 or 3000-4999
# (1002/1008 are the library's own), so ours are in the private range.
CLOSE_PROTOCOL = 4002  # garbage or a protocol violation
CLOSE_BANNED = 4008  # the peer is banned
PENALTY = {"garbage": -50, "bad_tx": -10, "bad_block": -60, "oversized": -100, "protocol": -30}


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


def encode(mtype, data):
    return cbor2.dumps({"type": mtype, "data": data}, canonical=True)


def auth_bytes(chain_id, challenge, node_id):
    return sha256(canonical({"chain_id": chain_id, "challenge": challenge, "node_id": node_id}))


class PeerError(Exception):
    """A peer broke the protocol; kind is a PENALTY key."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class PeerConnection:
    """What both sides of a connection share; mixed into the protocols."""

    _log = Logger()
    p2p = None
    direction = "?"

    def onOpen(self):
        self.p2p = self.factory.p2p
        self.challenge = os.urandom(32).hex()
        self.remote_id = None
        self.remote_height = 0
        self.remote_head = None
        self.authed_in = False  # we checked their auth
        self.authed_out = False  # we sent ours
        self.ready = False
        self.addr = self._peer_addr()
        if self.p2p.is_banned(addr=self.addr.split(":")[0]):
            self.sendClose(CLOSE_BANNED, "banned")
            return
        self.send("hello", self.p2p.hello(self.challenge))

    def _peer_addr(self):
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def send(self, mtype, data):
        if self.state == self.STATE_OPEN:  # a closing connection takes no more
            self.sendMessage(encode(mtype, data), isBinary=True)

    def onMessage(self, payload, isBinary):
        try:
            if not isBinary:
                raise PeerError("garbage", "text frame")
            try:
                msg = cbor2.loads(payload)
            except Exception:
                raise PeerError("garbage", "frame is not CBOR")
            if type(msg) is not dict or set(msg) != {"type", "data"} or type(msg["type"]) is not str:
                raise PeerError("garbage", "message is not {type, data}")
            self.p2p.received(self, msg["type"], msg["data"])
        except PeerError as e:
            self.p2p.misbehaved(self, e.kind, str(e))

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        # autobahn fails such a connection by dropping it (failByDrop), so
        # onClose sees 1006, never 1009: penalize here, where we know why.
        if self.p2p is not None:
            self.p2p.penalize(self, "oversized", "frame over the size limit")
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def onClose(self, wasClean, code, reason):
        if self.p2p is not None:
            self.p2p.disconnected(self)


class ServerPeer(PeerConnection, WebSocketServerProtocol):
    direction = "in"


class ClientPeer(PeerConnection, WebSocketClientProtocol):
    direction = "out"


def _options(factory, reactor):
    factory.setProtocolOptions(
        maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
        autoPingInterval=10, autoPingTimeout=30, openHandshakeTimeout=10,
    )
    factory.reactor = reactor


class P2P(service.MultiService):
    """The peer manager: handshakes, gossip, sync, scores and bans."""

    _log = Logger()

    def __init__(self, node, node_key, reactor, peers=(), sync_batch=SYNC_BATCH):
        super().__init__()
        self.node = node
        self.key = node_key
        self.node_id = node_key.public_key.hex()
        self.reactor = reactor
        self.sync_batch = sync_batch
        self.conns = set()
        self.seen_tx = LRUSet(SEEN_SIZE)
        self.seen_block = LRUSet(SEEN_SIZE)
        self.bans = {}  # node_id or host -> until (seconds)
        self.scores = {}  # node_id -> score
        self.syncing = None  # the connection a sync is running with
        self._sync_timer = None  # the pending get_blocks request's timeout
        self._importing_from = None  # the peer whose block is being imported
        self.outgoing = {}  # url -> ClientService
        self.server_factory = WebSocketServerFactory()
        self.server_factory.protocol = ServerPeer
        self.server_factory.p2p = self
        _options(self.server_factory, reactor)
        self.importing = defer.DeferredLock()
        for url in peers:
            self.add_peer(url)
        node.block_listeners.append(self.on_local_block)
        node.tx_listeners.append(self.on_local_tx)

    # -- wiring ----------------------------------------------------------
    def resource(self):
        """/p2p/ws, to mount in a twisted.web Site."""
        p2p = Resource()
        p2p.putChild(b"ws", WebSocketResource(self.server_factory))
        return p2p

    def startService(self):
        self.server_factory.startFactory()
        super().startService()

    def stopService(self):
        self._cancel_sync_timer()
        d = super().stopService()
        for conn in list(self.conns):
            conn.dropConnection(abort=True)
        self.server_factory.stopFactory()
        return d

    def add_peer(self, url):
        """Keep an outgoing connection to url, reconnecting with backoff."""
        if type(url) is not str or not url.startswith(("ws://", "wss://")):
            raise AitError("bad_peer_addr", "a peer address is a ws://host:port/p2p/ws URL")
        if url in self.outgoing:
            return False
        factory = WebSocketClientFactory(url)
        factory.protocol = ClientPeer
        factory.p2p = self
        _options(factory, self.reactor)
        host, port = factory.host, factory.port
        kind = "tls" if factory.isSecure else "tcp"
        endpoint = clientFromString(self.reactor, f"{kind}:host={host}:port={port}")
        svc = internet.ClientService(
            endpoint, factory, retryPolicy=internet.backoffPolicy(initialDelay=0.5, maxDelay=30), clock=self.reactor,
        )
        self.outgoing[url] = svc
        svc.setServiceParent(self)
        return True

    # -- handshake -------------------------------------------------------
    def hello(self, challenge):
        height, head = self.node.chain.head()
        return {
            "chain_id": self.node.chain_id, "genesis": self.node.chain.genesis.hash, "version": VERSION,
            "node_id": self.node_id, "challenge": challenge, "height": height, "head": head,
        }

    def _on_hello(self, conn, d):
        if type(d) is not dict:
            raise PeerError("protocol", "hello is not a map")
        for field, want in (("chain_id", self.node.chain_id), ("genesis", self.node.chain.genesis.hash), ("version", VERSION)):
            if d.get(field) != want:
                conn.send("reject", {"reason": f"{field} differs: mine is {want!r}, yours {d.get(field)!r}"})
                self._log.warn("refused peer {peer}: {field} differs", peer=conn.addr, field=field,
                               component="p2p", event="peer_refused")
                conn.sendClose(1000, f"{field} differs")
                return
        node_id, challenge = d.get("node_id"), d.get("challenge")
        if not is_hex(node_id, 32) or not is_hex(challenge, 32):
            raise PeerError("protocol", "hello node_id/challenge must be 32-byte hex")
        if node_id == self.node_id:
            conn.sendClose(1000, "self")
            return
        if self.is_banned(node_id=node_id):
            conn.sendClose(CLOSE_BANNED, "banned")
            return
        conn.remote_id = node_id
        self._status(conn, d)
        sig = self.key.sign(auth_bytes(self.node.chain_id, challenge, self.node_id))
        conn.send("auth", {"sig": sig.hex()})
        conn.authed_out = True
        self._maybe_ready(conn)

    def _on_auth(self, conn, d):
        if conn.remote_id is None or type(d) is not dict or not is_hex(d.get("sig"), 64):
            raise PeerError("protocol", "auth before hello, or malformed")
        msg = auth_bytes(self.node.chain_id, conn.challenge, conn.remote_id)
        if not crypto.verify(bytes.fromhex(conn.remote_id), bytes.fromhex(d["sig"]), msg):
            raise PeerError("protocol", "auth signature does not prove node_id")
        conn.authed_in = True
        self._maybe_ready(conn)

    def _maybe_ready(self, conn):
        if conn.ready or not (conn.authed_in and conn.authed_out):
            return
        conn.ready = True
        self.conns.add(conn)
        self._update_peer_height()  # its hello told us its height
        self.scores.setdefault(conn.remote_id, 0)
        self._touch(conn)
        self._log.info("peer joined {peer} ({direction}) height={height}", peer=conn.addr, direction=conn.direction,
                       height=conn.remote_height, node_id=conn.remote_id, component="p2p", event="peer_joined")
        self.maybe_sync(conn)

    def _touch(self, conn):
        rec = {"addr": conn.addr, "last_seen": int(self.reactor.seconds()), "score": self.scores.get(conn.remote_id, 0)}
        self.node.store.put_peer(conn.remote_id, rec)

    def _status(self, conn, d):
        height, head = d.get("height"), d.get("head")
        if type(height) is not int or height < 0 or not is_hex(head, 32):
            raise PeerError("protocol", "height/head malformed")
        conn.remote_height, conn.remote_head = height, head
        self._update_peer_height()

    def _update_peer_height(self):
        self.node.peer_height = max((c.remote_height for c in self.conns), default=0)

    # -- dispatch ----------------------------------------------------------
    def received(self, conn, mtype, data):
        if mtype == "hello":
            return self._on_hello(conn, data)
        if mtype == "auth":
            return self._on_auth(conn, data)
        if mtype == "reject":
            self._log.warn("peer {peer} refused us: {reason}", peer=conn.addr, reason=str(data)[:200],
                           component="p2p", event="refused_by_peer")
            return conn.sendClose(1000, "rejected")
        if not conn.ready:
            raise PeerError("protocol", f"{mtype} before the handshake")
        handler = getattr(self, "_on_" + mtype, None)
        if handler is None or mtype in ("hello", "auth"):
            raise PeerError("protocol", f"unknown message type {mtype!r}")
        handler(conn, data)

    def _on_status(self, conn, d):
        self._status(conn, d)
        self.maybe_sync(conn)

    def _on_tx(self, conn, d):
        if type(d) is not dict or type(d.get("tx")) is not dict:
            raise PeerError("protocol", "tx message malformed")
        wire = d["tx"]
        try:
            tx = self.node.parse(wire)
        except AitError as e:
            raise PeerError("bad_tx", e.message)
        if not self.seen_tx.add(tx.hash) or self.node.known(tx):
            return
        d = defer.ensureDeferred(self.node.admit_remote(tx, d.get("attestation")))

        def failed(f):
            f.trap(AitError)
            if f.value.code in ("bad_signature", "pubkey_mismatch", "attestation_bad_signature"):
                self.penalize(conn, "bad_tx", f.value.message)

        d.addErrback(failed)
        d.addErrback(lambda f: self._log.failure("relayed tx failed", f, component="p2p", event="tx_error"))

    def _on_block(self, conn, d):
        entry = self._check_entry(d)
        header = entry["block"]["header"]
        if not self.seen_block.add(entry["block"]["hash"]):
            return
        height, head = self.node.chain.head()
        if header["height"] >= conn.remote_height:
            conn.remote_height, conn.remote_head = header["height"], entry["block"]["hash"]
            self._update_peer_height()
        if header["parent"] == head and header["height"] == height + 1:
            # Relaying is on_local_block's: it runs for every committed block.
            d = self.importing.run(self._import_announced, conn, entry)
            d.addErrback(lambda f: self._log.failure("block import failed", f, component="p2p", event="import_error"))
        elif header["height"] > height:
            self.maybe_sync(conn)

    def _import_announced(self, conn, entry):
        # The lock may have been held by a sync: if the head moved since the
        # block was announced it no longer applies, which is no fault of the peer.
        height, head = self.node.chain.head()
        header = entry["block"]["header"]
        if header["parent"] != head or header["height"] != height + 1:
            return False
        return self._import_entries(conn, [entry])

    def _on_get_blocks(self, conn, d):
        if type(d) is not dict:
            raise PeerError("protocol", "get_blocks malformed")
        limit = d.get("limit", self.sync_batch)
        if type(limit) is not int or not 1 <= limit <= 512:
            raise PeerError("protocol", "get_blocks limit must be 1..512")
        store = self.node.store
        start = None
        if "locator" in d:
            loc = d["locator"]
            if type(loc) is not list or len(loc) > 64:
                raise PeerError("protocol", "locator must be a list of at most 64 hashes")
            for h in loc:
                block = store.block_by_hash(h) if is_hex(h, 32) else None
                if block is not None and store.hash_at(block["header"]["height"]) == h:
                    start = block["header"]["height"] + 1
                    break
            if start is None:
                start = 1
        else:
            start = d.get("from")
            if type(start) is not int or start < 0:
                raise PeerError("protocol", "get_blocks from must be a height")
        height = self.node.chain.head()[0]
        blocks = []
        size = 0
        for h in range(start, min(height, start + limit - 1) + 1):
            entry = self.node.block_entry(h)
            blocks.append(entry)
            size += sum(len(str(w)) for w in entry["txs"])
            if size > MAX_MESSAGE // 4:
                break
        conn.send("blocks", {"blocks": blocks, "height": height})

    def _on_blocks(self, conn, d):
        if type(d) is not dict or type(d.get("blocks")) is not list or type(d.get("height")) is not int:
            raise PeerError("protocol", "blocks malformed")
        entries = [self._check_entry(e) for e in d["blocks"]]
        conn.remote_height = max(conn.remote_height, d["height"])
        if self.syncing is not conn:
            return
        self._cancel_sync_timer()
        dd = self.importing.run(self._sync_entries, conn, entries)

        def done(progressed):
            self.syncing = None
            if progressed:
                self.maybe_sync(conn)

        def broke(f):
            # _sync_entries runs outside onMessage: its PeerErrors land here.
            f.trap(PeerError)
            self.syncing = None
            self.misbehaved(conn, f.value.kind, str(f.value))

        dd.addCallback(done)
        dd.addErrback(broke)
        dd.addErrback(lambda f: (setattr(self, "syncing", None),
                                 self._log.failure("sync failed", f, component="p2p", event="sync_error")))

    @staticmethod
    def _check_entry(e):
        if type(e) is not dict or type(e.get("block")) is not dict or type(e.get("txs")) is not list:
            raise PeerError("protocol", "block entry malformed")
        b = e["block"]
        if type(b.get("header")) is not dict or not is_hex(b.get("hash"), 32) or type(b.get("txs")) is not list:
            raise PeerError("protocol", "block malformed")
        h = b["header"]
        if type(h.get("height")) is not int or not is_hex(h.get("parent"), 32):
            raise PeerError("protocol", "block header malformed")
        return e

    # -- sync and import ---------------------------------------------------
    def maybe_sync(self, conn):
        """Ask conn for blocks if it is ahead and no sync is running."""
        height = self.node.chain.head()[0]
        if self.syncing is not None or conn.remote_height <= height or not conn.ready:
            return
        self.syncing = conn
        conn.send("get_blocks", {"locator": self.locator(), "limit": self.sync_batch})
        # A peer that never answers must not stall sync for ever; the
        # timer belongs to this request and is cancelled by its answer.
        self._cancel_sync_timer()
        self._sync_timer = self.reactor.callLater(SYNC_TIMEOUT, self._sync_timeout, conn)

    def _cancel_sync_timer(self):
        timer, self._sync_timer = self._sync_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _sync_timeout(self, conn):
        self._sync_timer = None
        if self.syncing is conn:
            self.syncing = None
            self._log.warn("peer {peer} did not answer get_blocks; asking again", peer=conn.addr,
                           component="p2p", event="sync_timeout")
            for other in list(self.conns):
                self.maybe_sync(other)
                if self.syncing is not None:
                    break

    def locator(self):
        """Hashes of our chain at heights h, h-1, h-2, h-4, ... 0."""
        store = self.node.store
        height = self.node.chain.head()[0]
        out, step, h = [], 1, height
        while h > 0 and len(out) < 63:
            out.append(store.hash_at(h))
            if len(out) > 8:
                step *= 2
            h -= step
        out.append(store.hash_at(0))
        return out

    async def _sync_entries(self, conn, entries):
        """Import a run of blocks from conn, reorganising if it forked.

        Fork choice: the valid chain with the greater height wins; at
        equal height the current head stays.
        """
        store = self.node.store
        # Blocks we already hold (an answer that started lower than it had
        # to, e.g. because blocks arrived by gossip meanwhile) are skipped:
        # they are no fork.
        while entries and store.hash_at(entries[0]["block"]["header"]["height"]) == entries[0]["block"]["hash"]:
            entries = entries[1:]
        if not entries:
            return self.node.chain.head()[0] < conn.remote_height
        first = entries[0]["block"]["header"]
        fork_height = first["height"] - 1
        if store.hash_at(fork_height) != first["parent"]:
            raise PeerError("bad_block", "sync answer does not start on our chain")
        height = self.node.chain.head()[0]
        if fork_height < height:
            if conn.remote_height <= height:
                return False  # not longer than ours: keep the current head
            if height - fork_height > store.undo_depth():
                self._log.warn("fork deeper than undo data; ignoring peer {peer}", peer=conn.addr,
                               component="p2p", event="fork_too_deep")
                return False
            # Keep our branch until the new one proves valid and longer.
            ours = [self.node.block_entry(h) for h in range(fork_height + 1, height + 1)]
            self.node.rollback(fork_height)
            progressed = await self._import_entries(conn, entries)
            reached = self.node.chain.head()[0]
            if reached < fork_height + len(entries) and reached <= height:
                # The new branch broke before it overtook ours: restore ours.
                self.node.rollback(fork_height)
                for entry in ours:
                    txs = [self.node.parse(w) for w in entry["txs"]]
                    await self.node.import_block_async(entry["block"], txs)
                return False
            return progressed
        return await self._import_entries(conn, entries)

    async def _import_entries(self, conn, entries):
        imported = 0
        for entry in entries:
            block = entry["block"]
            if store_has(self.node.store, block["hash"]):
                continue
            try:
                txs = self._block_txs(block, entry["txs"])
                self._importing_from = conn
                try:
                    await self.node.import_block_async(block, txs)
                finally:
                    self._importing_from = None
            except AitError as e:
                self.penalize(conn, "bad_block", e.message)
                return imported > 0
            self.seen_block.add(block["hash"])
            imported += 1
            # Let the reactor breathe between blocks.
            await _yield(self.reactor)
        return imported > 0

    # -- gossip ----------------------------------------------------------------
    def _block_txs(self, block, wires):
        """The block's transactions: those already in the mempool (parsed and
        checked on arrival) are taken from it, by the hashes the block
        commits to; only the others are parsed from the wire."""
        hashes = block.get("txs")
        if type(hashes) is not list or len(hashes) != len(wires):
            raise AitError("bad_block", "block transaction list does not match")
        mempool = self.node.mempool
        out = []
        for h, wire in zip(hashes, wires):
            tx = mempool.get(h) if type(h) is str else None
            out.append(tx if tx is not None else self.node.parse(wire))
        return out

    def on_local_block(self, block):
        self.seen_block.add(block["hash"])
        if self.conns:
            entry = self.node.block_entry(block["header"]["height"])
            # Not back to the peer it came from: it has it.
            self.broadcast("block", entry, exclude=self._importing_from)

    def on_local_tx(self, tx):
        self.seen_tx.add(tx.hash)
        if self.conns:
            data = {"tx": tx.to_wire()}
            att = self.node.attestations.get(tx.hash)
            if att is not None:
                data["attestation"] = att
            self.broadcast("tx", data)

    def broadcast(self, mtype, data, exclude=None):
        frame = encode(mtype, data)
        for conn in list(self.conns):
            # A connection being dropped stays in conns until onClose;
            # sending on it would raise (and stop the caller's loop).
            if conn is not exclude and conn.state == conn.STATE_OPEN:
                conn.sendMessage(frame, isBinary=True)

    # -- scores and bans ---------------------------------------------------
    def penalize(self, conn, kind, reason):
        who = conn.remote_id
        host = conn.addr.split(":")[0]
        key = who or host
        score = self.scores.get(key, 0) + PENALTY[kind]
        self.scores[key] = score
        self._log.warn("peer {peer} misbehaved ({kind}): {reason}; score {score}", peer=conn.addr, kind=kind,
                       reason=reason[:200], score=score, component="p2p", event="peer_penalized")
        if score <= BAN_SCORE:
            # A peer that proved a node id is banned by it.  One that never
            # finished the handshake is known only by its host, which honest
            # peers (behind the same NAT, or on the same machine) may share:
            # that ban is short, enough to stop a reconnect loop.
            seconds = BAN_SECONDS if who else HOST_BAN_SECONDS
            self.bans[key] = self.reactor.seconds() + seconds
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

    def is_banned(self, node_id=None, addr=None):
        now = self.reactor.seconds()
        for key in (node_id, addr):
            if key is not None and self.bans.get(key, 0) > now:
                return True
        return False

    def disconnected(self, conn):
        if conn in self.conns:
            self.conns.discard(conn)
            self._log.info("peer left {peer}", peer=conn.addr, component="p2p", event="peer_left")
        if self.syncing is conn:
            self.syncing = None
            self._cancel_sync_timer()
        self._update_peer_height()

    def peer_list(self):
        out = []
        for conn in self.conns:
            out.append({
                "node_id": conn.remote_id, "addr": conn.addr, "direction": conn.direction, "state": "ready",
                "height": conn.remote_height, "head": conn.remote_head,
                "score": self.scores.get(conn.remote_id, 0),
            })
        known = {c["node_id"] for c in out}
        for node_id, rec in self.node.store.peers().items():
            if node_id not in known:
                banned = self.is_banned(node_id=node_id)
                out.append(dict(rec, node_id=node_id, state="banned" if banned else "disconnected",
                                score=self.scores.get(node_id, rec.get("score", 0))))
        return {"node_id": self.node_id, "peers": out, "dialing": sorted(self.outgoing)}


def store_has(store, block_hash):
    block = store.block_by_hash(block_hash)
    return block is not None and store.hash_at(block["header"]["height"]) == block_hash


def _yield(reactor):
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d


