"""Each second, a look at every open peer connection (on the reactor's
clock, a LoopingCall that no exception stops):

- a connection that has not finished its handshake HANDSHAKE_SECONDS
  after it opened is closed;
- a connection whose unread output (PeerConnection.pending_output) is
  back under wire.SEND_LOW gets the get_blocks answer that waited for it;
- one that stayed over SEND_LOW for wire.SEND_DEADLINE seconds does not
  read: it is dropped;
- and now and then the peer book is pruned.
"""

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from aitnode.p2p import wire

WATCH_INTERVAL = 1
HANDSHAKE_SECONDS = 10


class Watch:
    _log = Logger()

    def __init__(self, p2p, clock):
        self.p2p = p2p
        self.clock = clock
        self._loop = None

    def start(self):
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(WATCH_INTERVAL, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self):
        now = self.clock.seconds()
        try:
            self.p2p.book.maybe_prune()
        except Exception:
            self._log.failure("pruning peers failed", component="p2p", event="prune_error")
        for conn in list(self.p2p.open_conns):
            try:
                self.look_at(conn, now)
            except Exception:
                self._log.failure("watching peer {peer} failed", peer=conn.addr, component="p2p", event="watch_error")

    def look_at(self, conn, now):
        if conn.state != conn.STATE_OPEN:
            return
        if not conn.ready and now - conn.opened_at >= HANDSHAKE_SECONDS:
            self._log.info("peer {peer} did not finish the handshake in {s} s", peer=conn.addr, s=HANDSHAKE_SECONDS,
                           component="p2p", event="handshake_timeout")
            conn.sendClose(wire.CLOSE_PROTOCOL, "handshake timeout")
            return
        if conn.pending_output() <= wire.SEND_LOW:
            conn.stalled_since = None
            if conn.waiting_request is not None:
                request, conn.waiting_request = conn.waiting_request, None
                self.p2p.server.answer(conn, request)
        elif conn.stalled_since is None:
            conn.stalled_since = now
        elif now - conn.stalled_since >= wire.SEND_DEADLINE:
            self._log.warn("peer {peer} has not read {n} bytes for {s} s; dropping it", peer=conn.addr,
                           n=conn.pending_output(), s=wire.SEND_DEADLINE, component="p2p", event="peer_not_reading")
            conn.dropConnection(abort=True)
