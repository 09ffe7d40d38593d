"""Voting: an authority's finality votes, the votes and evidence it hears,
and what its next block carries.

After each block that becomes the head, a non-jailed authority of that
block's set signs a vote for it (target the head, source the latest
justified block), but only if ``finality.SafeVoter`` allows it against the
last vote this node persisted; the record is written to LMDB (the local
``signing`` table) before the vote leaves, so a crash and restart cannot
make it vote twice.  Votes and evidence from peers are checked against the
authority set of their height and kept in pools; a vote that breaks a
voting rule together with one held becomes evidence, and so do two headers
by one proposer at one height.  The proposer of the next block takes the
votes for its parent and the evidence not yet recorded (``block_fields``).

A vote or a header signed with this node's own key that this node did not
make means another machine uses the key: the node logs an error, sets
``aitnode_authority_key_conflict`` and signs nothing until restarted.
"""

from twisted.logger import Logger

from aitnode import consensus as C, evidence as E, finality as F
from aitnode.errors import AitError

MAX_EVIDENCE_POOL = 256


class Ballot:
    _log = Logger()

    def __init__(self, chain, local, metrics, key=None):
        self.chain = chain
        self.local = local
        self.metrics = metrics
        self.key = key
        record = local.signed("vote")
        self.voter = F.SafeVoter(None if record is None else F.Record.from_json(record))
        self.votes = F.VotePool()
        self.evidence = {}  # id -> Evidence, not yet in a block on this chain
        self.vote_listeners = []  # called with each vote this node sends or relays (wire)
        self.evidence_listeners = []  # called with each new evidence (wire)
        self.pipeline = None  # the BlockPipeline whose signing a key conflict stops
        self._finality = None

    def attach(self, pipeline):
        """Follow pipeline's commits (compose calls this once)."""
        self.pipeline = pipeline
        pipeline.block_listeners.append(self.on_block)
        self._note_finality()

    # -- our own vote ------------------------------------------------------------
    def on_block(self, block):
        """A block was committed (built here or imported)."""
        header = block["header"]
        if header["proposer"] == getattr(self.key, "address", None) and header["height"] > (self.local.signed("proposal") or 0):
            self.key_conflict(f"block {block['hash']} at height {header['height']} is signed with this node's key")
        offenders = set()
        for ev in block.get("evidence") or ():
            try:
                parsed = E.parse_evidence(ev)
            except AitError:
                continue
            self.evidence.pop(parsed.id, None)
            offenders.add(parsed.offender)
        if offenders:
            self._note_jailed(block, offenders)
        self._note_finality()
        self.vote()

    def proposed(self, block):
        """This node committed a block it built (the head now): record its
        height and this authority's vote for it in one LMDB transaction, so
        one fsync covers both before either leaves; then send the vote."""
        vote = self._next_vote()
        records = {"proposal": block["header"]["height"]}
        if vote is not None:
            records["vote"] = F.Record.of(vote).to_json()
        self.local.put_signed_many(records)
        if vote is not None:
            self._send(vote)

    def vote(self):
        """Sign and send a vote for the head, if this node may."""
        vote = self._next_vote()
        if vote is None:
            return None
        self.local.put_signed("vote", F.Record.of(vote).to_json())  # before it leaves
        return self._send(vote)

    def _next_vote(self):
        """This authority's vote for the head, or None if it may not vote."""
        if self.key is None or self.pipeline is None or self.pipeline.signing_stopped:
            return None
        height, head = self.chain.head()
        if height == 0:
            return None
        view = self.chain.view()
        aset = C.parent_set_of(view, height + 1)  # the set of the head block
        if self.key.address not in aset.active:
            return None
        source = self.chain.finality(view).justified
        vote = F.sign_vote(self.key, self.chain.chain_id, height, head, source.height, source.hash)
        return vote if self.voter.may_vote(vote) else None

    def _send(self, vote):
        """A vote whose record is on disk: into the pool and to peers."""
        height, head, source = vote.height, vote.hash, vote.source
        self.voter.advance(F.Record.of(vote))
        self.votes.add(vote)
        self.metrics.vote_event("sent")
        self._log.info("vote sent height={height} source={source}", height=height, source=source.height,
                       hash=head, component="finality", event="vote_sent")
        wire = vote.to_wire()
        for listener in self.vote_listeners:
            listener(wire)
        return wire

    # -- what peers send ----------------------------------------------------------
    def receive_vote(self, wire):
        """A vote from a peer: True if new and kept (relay it), False if
        known or useless; AitError("bad_vote") if it is malformed or not an
        authority's signature (the peer misbehaved)."""
        vote = F.parse_vote(wire)
        height, _ = self.chain.head()
        final = self.chain.finality().finalized.height
        if vote.height <= final or vote.height > height + 1:
            return False  # settled already, or for a block this node cannot judge yet
        view = self.chain.view()
        aset = C.parent_set_of(view, vote.height + 1) if vote.height == height else C.set_of(view)
        pubkey = aset.keys.get(vote.voter)
        if pubkey is None:
            pubkey = C.pubkey_lookup(view)(vote.voter, vote.height)
        if pubkey is None or not F.verify_vote(vote, self.chain.chain_id, pubkey):
            self.metrics.vote_event("refused")
            raise AitError("bad_vote", "the vote is not signed by an authority")
        if self.key is not None and vote.voter == self.key.address and self.voter.not_mine(vote):
            self.key_conflict(f"a vote at height {vote.height} is signed with this node's key")
            return False
        added, conflict = self.votes.add(vote)
        if conflict is not None:
            self.metrics.vote_event("conflict")
            self.add_evidence(E.vote_evidence(conflict, vote))
            return False
        if added:
            self.metrics.vote_event("received")
        return added

    def receive_evidence(self, wire):
        """Evidence from a peer: True if new and kept (relay it);
        AitError("bad_evidence") if it does not check."""
        ev = E.parse_evidence(wire)
        E.check_evidence(ev, self.chain.chain_id, C.pubkey_lookup(self.chain.view()))
        return self.add_evidence(ev)

    def seen_header(self, header, sig):
        """A signed header a peer sent (gossip or sync), valid or not for our
        chain: two by one proposer at one height are evidence.  Compared
        with the block this node holds at that height."""
        height = header.get("height") if type(header) is dict else None
        if type(height) is not int or height < 1:
            return
        ours = self.chain.store.block_at(height)
        if ours is None or ours["header"]["proposer"] != header.get("proposer") or ours["header"] == header:
            return
        try:
            ev = E.proposal_evidence(ours["header"], ours["sig"], header, sig)
            E.check_evidence(ev, self.chain.chain_id, C.pubkey_lookup(self.chain.view()))
        except AitError:
            return
        if self.key is not None and header.get("proposer") == self.key.address:
            self.key_conflict(f"two headers at height {height} are signed with this node's key")
        self.add_evidence(ev)

    def add_evidence(self, ev):
        if ev.id in self.evidence or self.chain.view().get("evid", ev.id) is not None:
            return False
        if len(self.evidence) >= MAX_EVIDENCE_POOL:
            return False
        self.evidence[ev.id] = ev
        self.metrics.evidence_event(ev.offence)
        self._log.warn("evidence found: {offence} by {offender} at height {height}", offence=ev.offence,
                       offender=ev.offender, height=ev.height, id=ev.id, component="finality", event="evidence_found")
        wire = ev.to_wire()
        for listener in self.evidence_listeners:
            listener(wire)
        return True

    # -- the next block ---------------------------------------------------------
    def block_fields(self, chain):
        """(votes, evidence) the next block on chain's head carries: the
        votes for the head with the head's justified block as source, and
        the evidence not yet recorded (at most evidence.MAX_BLOCK_EVIDENCE)."""
        height, head = chain.head()
        view = chain.view()
        if height == 0:
            votes = []
        else:
            aset = C.parent_set_of(view, height + 1)
            source = chain.finality(view).justified
            votes = self.votes.for_block(F.Checkpoint(height, head), source, aset.keys, aset.jailed)
        pending = [ev for eid, ev in sorted(self.evidence.items()) if view.get("evid", eid) is None]
        return votes, E.block_evidence(pending[:E.MAX_BLOCK_EVIDENCE])

    # -- operator protection -------------------------------------------------------
    def key_conflict(self, what):
        if self.pipeline is not None and not self.pipeline.signing_stopped:
            self.pipeline.signing_stopped = True
            self.metrics.key_conflict()
            self._log.error("another node is using this authority key: {what}; this node signs nothing until restarted",
                            what=what, component="finality", event="authority_key_conflict")

    def _note_jailed(self, block, offenders):
        """Log authority_jailed for each offender the block's evidence
        jailed (from the next block on)."""
        height = block["header"]["height"]
        view = self.chain.view()
        after = C.set_of(view).jailed
        # The set the block itself was made under, when it is the head (after a
        # branch switch, the head is further on: every jailed offender is named).
        before = C.parent_set_of(view, height + 1).jailed if self.chain.head()[1] == block["hash"] else frozenset()
        for offender in sorted((offenders & after) - before):
            self._log.warn("authority jailed: {offender} by evidence in block {height}, from block {next} on",
                           offender=offender, height=height, next=height + 1, hash=block["hash"],
                           component="finality", event="authority_jailed")

    def _note_finality(self):
        now = self.chain.finality()
        before, self._finality = self._finality, now
        self.metrics.on_finality(now.justified.height, now.finalized.height)
        self.votes.prune(now.finalized.height)
        if before is not None and now.finalized.height > before.finalized.height:
            block = self.chain.store.block_at(now.finalized.height)
            now_ms = self.pipeline.now() if self.pipeline is not None else None
            latency = now_ms - block["header"]["timestamp"] if block and now_ms is not None else None
            self._log.info("block finalized height={height} latency_ms={latency_ms}", height=now.finalized.height,
                           hash=now.finalized.hash, latency_ms=latency, component="finality", event="block_finalized")
