"""Peer frames and the connection that owns its handshake.

Every message is one binary WebSocket frame, canonical CBOR of
``{"type", "data"}``.  A connection starts with a handshake in both
directions:

    hello  {chain_id, genesis, version, node_id, challenge, height, head}
    auth   {sig}   the ed25519 signature, by the node_id key, of
                   sha256(canonical({"chain_id", "challenge": the other
                   side's challenge, "node_id": own id}))

A peer on another chain or genesis, or speaking another version, gets
``reject {reason}`` and is closed.  The peer's node id is ``remote_id``
only once its ``auth`` proved it; until then it is only ``claimed_id``.
"""

import os

import cbor2
from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from twisted.logger import Logger

from aitnode import crypto
from aitnode.encoding import canonical, is_hex, sha256

VERSION = 1
MAX_MESSAGE = 16 * 1024 * 1024
# Output a peer has not read yet (pending_output):
SEND_LOW = 1024 * 1024  # a get_blocks waits while more than this is pending
SEND_HIGH = 8 * 1024 * 1024  # gossip to the peer is skipped while more than this is pending
SEND_DEADLINE = 60  # seconds over SEND_LOW without draining below it: the peer is dropped
# Close codes: autobahn lets an application send only 1000 or 3000-4999
# (1002/1008 are the library's own), so ours are in the private range.
CLOSE_PROTOCOL = 4002  # garbage or a protocol violation
CLOSE_BANNED = 4008  # the peer is banned
CLOSE_FULL = 4029  # the node has as many incoming peer connections as it takes


def encode(mtype, data):
    return cbor2.dumps({"type": mtype, "data": data}, canonical=True)


def is_u64(n):
    return type(n) is int and 0 <= n < 1 << 64


def _cbor_head(major, n):
    """The head of a CBOR item of major type major and length n (RFC 8949 3.1)."""
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 24:
            return bytes([major << 5 | n])
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("too long for CBOR")


def blocks_frame(encoded_entries, height):
    """encode("blocks", {"blocks": entries, "height": height}), built from
    entries each already encoded as canonical CBOR (so an answer's size is
    known, and each entry encoded once, as it is put together)."""
    return b"".join([
        b"\xa2\x64data\xa2\x66blocks", _cbor_head(4, len(encoded_entries)), *encoded_entries,
        b"\x66height", cbor2.dumps(height), b"\x64type\x66blocks",
    ])


def auth_bytes(chain_id, challenge, node_id):
    return sha256(canonical({"chain_id": chain_id, "challenge": challenge, "node_id": node_id}))


class PeerError(Exception):
    """A peer broke the protocol; kind is a peers.PENALTY key."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class PeerConnection:
    """What both sides of a connection share; mixed into the protocols.

    The connection keeps its own handshake state and checks the peer's
    hello and auth; the peer manager (``self.p2p``) decides what a ready
    connection's messages do.
    """

    _log = Logger()
    p2p = None
    direction = "?"
    frame_bytes = 0

    def onOpen(self):
        self.p2p = self.factory.p2p
        self.challenge = os.urandom(32).hex()
        self.claimed_id = None  # what hello said; proven by auth or never used
        self.remote_id = None  # the node id, once auth proved it
        self.remote_height = 0
        self.remote_head = None
        self.authed_in = False  # we checked their auth
        self.authed_out = False  # we sent ours
        self.ready = False
        self.waiting_request = None  # a get_blocks that waits for the output to drain
        self.stalled_since = None  # when pending_output went over SEND_LOW (checked each second)
        self.addr = self._peer_addr()
        self.host = self.addr.rsplit(":", 1)[0]
        self.opened_at = self.p2p.reactor.seconds()
        if self.p2p.is_banned(addr=self.host):
            self.sendClose(CLOSE_BANNED, "banned")
            return
        if self.direction == "in" and self.p2p.inbound_full():
            self.sendClose(CLOSE_FULL, "too many peers")
            return
        self.p2p.opened(self)
        self.send("hello", self.p2p.hello(self.challenge))

    def _peer_addr(self):
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def send(self, mtype, data):
        self.send_frame(encode(mtype, data))

    def send_frame(self, frame):
        if self.state == self.STATE_OPEN:  # a closing connection takes no more
            self.sendMessage(frame, isBinary=True)

    def pending_output(self):
        """Bytes written to this connection that the peer has not taken
        yet: autobahn's queue and the transport's send buffer (through a
        TLS wrapper to the TCP transport under it)."""
        n = sum(len(data) for data, _ in getattr(self, "send_queue", ()))
        t = self.transport
        for _ in range(3):
            if t is None:
                break
            if hasattr(t, "_tempDataLen"):  # twisted.internet.abstract.FileDescriptor (TCP)
                n += len(t.dataBuffer) - t.offset + t._tempDataLen
            elif type(getattr(t, "stream", None)) is list:  # twisted.test.iosim.FakeTransport
                n += sum(len(chunk) for chunk in t.stream)
            t = getattr(t, "transport", None)
        return n

    def onMessage(self, payload, isBinary):
        closing = self.state != self.STATE_OPEN
        try:
            if not isBinary:
                raise PeerError("garbage", "text frame")
            try:
                msg = cbor2.loads(payload)
            except Exception:
                raise PeerError("garbage", "frame is not CBOR")
            if type(msg) is not dict or set(msg) != {"type", "data"} or type(msg["type"]) is not str:
                raise PeerError("garbage", "message is not {type, data}")
            if closing and msg["type"] != "reject":
                return
            self.frame_bytes = len(payload)  # what the message being handled took on the wire
            self.p2p.received(self, msg["type"], msg["data"])
        except PeerError as e:
            # A closing connection (we refused it, or it broke the protocol
            # already) is neither acted on nor penalised again: only the
            # other side's reject is still read, to log its reason.
            if not closing:
                self.p2p.misbehaved(self, e.kind, str(e))

    # -- the handshake ---------------------------------------------------------
    def on_hello(self, d, mine):
        """Check the peer's hello against ours (mine: our hello's fields);
        answer with our auth.  Returns False if the connection was closed."""
        if self.claimed_id is not None:
            raise PeerError("protocol", "a second hello")
        if type(d) is not dict:
            raise PeerError("protocol", "hello is not a map")
        for field in ("chain_id", "genesis", "version"):
            if d.get(field) != mine[field] or type(d.get(field)) is not type(mine[field]):  # True == 1 in Python
                yours = repr(d.get(field))[:100]  # what the peer sent, cut short
                self.send("reject", {"reason": f"{field} differs: mine is {mine[field]!r}, yours {yours}"})
                self._log.warn("refused peer {peer}: {field} differs", peer=self.addr, field=field,
                               component="p2p", event="peer_refused")
                self.sendClose(1000, f"{field} differs")
                return False
        node_id, challenge = d.get("node_id"), d.get("challenge")
        if not is_hex(node_id, 32) or not is_hex(challenge, 32):
            raise PeerError("protocol", "hello node_id/challenge must be 32-byte hex")
        if node_id == mine["node_id"]:
            self.sendClose(1000, "self")
            return False
        self.claimed_id = node_id
        self.set_status(d)
        return challenge

    def on_auth(self, d, chain_id):
        """Check that the peer's auth proves the id its hello claimed."""
        if self.claimed_id is None or self.authed_in or type(d) is not dict or not is_hex(d.get("sig"), 64):
            raise PeerError("protocol", "auth before hello, twice, or malformed")
        msg = auth_bytes(chain_id, self.challenge, self.claimed_id)
        if not crypto.verify(bytes.fromhex(self.claimed_id), bytes.fromhex(d["sig"]), msg):
            raise PeerError("protocol", "auth signature does not prove node_id")
        self.authed_in = True
        self.remote_id = self.claimed_id

    def set_status(self, d):
        """A height and head the peer claims (hello, status): used to pick
        whom to ask for blocks, never trusted for anything else."""
        height, head = d.get("height"), d.get("head")
        if not is_u64(height) or not is_hex(head, 32):
            raise PeerError("protocol", "height/head malformed")
        self.remote_height, self.remote_head = height, head

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


def set_options(factory, reactor):
    factory.setProtocolOptions(
        maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
        autoPingInterval=10, autoPingTimeout=30, openHandshakeTimeout=10,
    )
    factory.reactor = reactor
