"""Finality votes and evidence between peers: checked by the node's
voting.Ballot, relayed once if new, and a cost to the peer that sent one
that does not check.

    vote      {vote}       a finality vote (see Finality votes and evidence)
    evidence  {evidence}   two signed headers, or two votes, of one offender
"""

from aitnode.encoding import canonical, sha256_hex
from aitnode.errors import AitError
from aitnode.p2p.wire import PeerError


class BallotGossip:
    def __init__(self, p2p, seen, ballot):
        self.p2p = p2p
        self.seen = seen  # LRUSet of sha256(canonical(wire)) relayed or received
        ballot.vote_listeners.append(lambda wire: self.gossip("vote", wire))
        ballot.evidence_listeners.append(lambda wire: self.gossip("evidence", wire))

    def received(self, conn, d, kind, receive):
        """A vote or evidence message: receive(wire) checks it (True: new)."""
        if type(d) is not dict or set(d) != {kind}:
            raise PeerError("protocol", f"{kind} message malformed")
        try:
            key = sha256_hex(canonical(d[kind]))
        except (AitError, RecursionError):
            raise PeerError("protocol", f"{kind} is not a consensus value")
        if key in self.seen:
            return
        try:
            new = receive(d[kind])
        except AitError as e:
            raise PeerError("bad_tx", f"{kind}: {e.message}")
        if new:
            self.gossip(kind, d[kind], exclude=conn)

    def gossip(self, kind, wire, exclude=None):
        """Send wire to every ready peer but exclude, once."""
        if self.seen.add(sha256_hex(canonical(wire))) and self.p2p.conns:
            self.p2p.broadcast(kind, {kind: wire}, exclude=exclude)
