"""What a node remembers of its peers: scores, bans and the peer table.

A score or a ban is kept under the node id a peer proved with ``auth``,
or under its host address before that; never under an id it only
claimed, which an honest peer may own.  Everything here is bounded: a
ban is forgotten when it ends, the score of a peer not connected for
SCORE_TTL seconds is forgotten, and past MAX_SCORES scores, MAX_BANS bans
or MAX_PEER_ROWS peer table rows the oldest go (docs/protocol.md, Scores
and bans).
"""

from twisted.logger import Logger

BAN_SCORE = -100
BAN_SECONDS = 600
HOST_BAN_SECONDS = 30
PENALTY = {"garbage": -50, "bad_tx": -10, "bad_block": -60, "oversized": -100, "protocol": -30}
SCORE_TTL = 3600
MAX_SCORES = 10_000
MAX_BANS = 10_000
MAX_PEER_ROWS = 10_000
PRUNE_INTERVAL = 60


class PeerBook:
    """Scores, bans and peer table rows of one node.

    local: the node-local tables (the peer table); clock: seconds();
    connected(): the keys (hosts and proven ids) of the open connections,
    whose scores are never forgotten.
    """

    _log = Logger()

    def __init__(self, local, clock, connected):
        self.local = local
        self.clock = clock
        self.connected = connected
        self.scores = {}  # node id (or host, before auth) -> score
        self.bans = {}  # node id or host -> until (seconds)
        self._seen = {}  # the keys of scores -> when that peer was last connected or penalised
        self._next_prune = 0

    # -- a peer comes and goes ---------------------------------------------
    def joined(self, conn):
        """conn proved its id and is ready."""
        self.scores.setdefault(conn.remote_id, 0)
        self._seen[conn.remote_id] = self.clock.seconds()
        self._bound_scores()
        self.record(conn)

    def left(self, conn):
        for key in (conn.host, conn.remote_id):
            if key in self._seen:
                self._seen[key] = self.clock.seconds()  # its time to be forgotten starts now

    def record(self, conn):
        """Write the peer table row of a peer that proved its id."""
        rec = {"addr": conn.addr, "last_seen": int(self.clock.seconds()), "score": self.scores.get(conn.remote_id, 0)}
        self.local.put_peer(conn.remote_id, rec)

    # -- offences ----------------------------------------------------------------
    def penalize(self, conn, kind, reason):
        """Count an offence of conn's; True if it is banned now."""
        who = conn.remote_id
        key = who or conn.host
        score = self.scores.get(key, 0) + PENALTY[kind]
        self.scores[key] = score
        self._seen[key] = self.clock.seconds()
        self._bound_scores()
        self._log.warn("peer {peer} misbehaved ({kind}): {reason}; score {score}", peer=conn.addr, kind=kind,
                       reason=reason[:200], score=score, component="p2p", event="peer_penalized")
        banned = score <= BAN_SCORE
        if banned:
            # A peer that proved a node id is banned by it.  One that never
            # finished the handshake is known only by its host, which honest
            # peers (behind the same NAT, or on the same machine) may share:
            # that ban is short, enough to stop a reconnect loop.
            seconds = BAN_SECONDS if who else HOST_BAN_SECONDS
            self.bans[key] = self.clock.seconds() + seconds
            self._bound_bans()
            if not who:
                self.scores[key] = 0  # start afresh once the short ban ends
            self._log.warn("peer {peer} banned for {s} s", peer=conn.addr, s=seconds, component="p2p", event="peer_banned")
        if who:
            self.record(conn)
        return banned

    def is_banned(self, node_id=None, addr=None):
        now = self.clock.seconds()
        for key in (node_id, addr):
            if key is not None and self.bans.get(key, 0) > now:
                return True
        return False

    # -- forgetting ----------------------------------------------------------------
    def maybe_prune(self):
        """prune, at most every PRUNE_INTERVAL seconds."""
        now = self.clock.seconds()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            self.prune()

    def prune(self):
        """Forget ended bans, and scores of peers gone for SCORE_TTL; keep
        both maps, and the peer table, within their bounds."""
        now = self.clock.seconds()
        for key in [k for k, until in self.bans.items() if until <= now]:
            del self.bans[key]
        connected = self.connected()
        for key in [k for k, seen in self._seen.items() if now - seen >= SCORE_TTL and k not in connected]:
            self.scores.pop(key, None)
            del self._seen[key]
        self._bound_scores(connected)
        self._bound_bans()
        if self.local.peer_count() > MAX_PEER_ROWS:
            rows = self.local.peers()
            old = sorted((rec.get("last_seen", 0), node_id) for node_id, rec in rows.items() if node_id not in connected)
            self.local.drop_peers([node_id for _, node_id in old[:len(rows) - MAX_PEER_ROWS]])

    def _bound_scores(self, connected=None):
        """Over MAX_SCORES, forget the scores of the peers gone longest, down
        to 90% of it (so the sorting is paid once per 1,000 new peers)."""
        if len(self.scores) <= MAX_SCORES:
            return
        connected = self.connected() if connected is None else connected
        old = sorted((seen, k) for k, seen in self._seen.items() if k not in connected)
        for _, key in old[:len(self.scores) - MAX_SCORES * 9 // 10]:
            self.scores.pop(key, None)
            del self._seen[key]

    def _bound_bans(self):
        """Over MAX_BANS, drop the bans that end soonest, down to 90% of it."""
        if len(self.bans) > MAX_BANS:
            for _, key in sorted((until, k) for k, until in self.bans.items())[:len(self.bans) - MAX_BANS * 9 // 10]:
                del self.bans[key]
