"""Peers: CBOR messages over autobahn WebSockets (wire), the peer manager
with gossip (peers), scores and bans (book), block sync (sync), answering
get_blocks (serve), blocks from the future (held) and the per-second look
at every connection (watch)."""

from aitnode.p2p.book import BAN_SCORE, BAN_SECONDS, HOST_BAN_SECONDS, PENALTY
from aitnode.p2p.peers import SEEN_SIZE, P2P, LRUSet
from aitnode.p2p.sync import SYNC_BATCH, SYNC_TIMEOUT
from aitnode.p2p.wire import (
    CLOSE_BANNED, CLOSE_FULL, CLOSE_PROTOCOL, MAX_MESSAGE, VERSION, ClientPeer, PeerError, ServerPeer, auth_bytes, encode, set_options,
)

_options = set_options

__all__ = [
    "BAN_SCORE", "BAN_SECONDS", "HOST_BAN_SECONDS", "CLOSE_BANNED", "CLOSE_FULL", "CLOSE_PROTOCOL", "LRUSet", "MAX_MESSAGE", "P2P", "PENALTY", "SYNC_BATCH",
    "SEEN_SIZE", "SYNC_TIMEOUT", "VERSION", "ClientPeer", "PeerError", "ServerPeer", "auth_bytes", "encode", "set_options",
]
