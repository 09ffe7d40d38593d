"""Finality votes, after BNB Chain's BEP-126 (itself Casper FFG on blocks).

An authority votes for the head it chose: target (height, hash) and
source = the latest justified block below it.  The votes for block h ride
in block h+1.  h is *justified* when a quorum of the non-jailed
authorities of its epoch voted for it with the right source; a justified
block whose child is justified is *finalized*.  Two rules keep an honest
authority's votes safe to count; breaking one is slashable evidence
(aitnode.evidence).  Pure: no storage, no network.  docs/protocol.md,
"Finality votes and evidence", is the contract.
"""

from typing import NamedTuple

from aitnode import crypto
from aitnode.encoding import canonical, is_hex, merkle_root, parse_hex, require_fields, require_int, sha256, sha256_hex
from aitnode.errors import AitError

VOTE_FIELDS = ("voter", "height", "hash", "source_height", "source_hash", "sig")
RECORD_FIELDS = ("height", "hash", "source_height", "source_hash")
DOUBLE_VOTE = "double_vote"
SURROUND_VOTE = "surround_vote"


def quorum(n):
    """Votes needed among n >= 1 non-jailed authorities: n - floor((n-1)/3),
    the least q with 3q > 2n.  Two quorums share 2q - n > n/3 authorities,
    so two conflicting justifications need more than a third of the set
    (at least f + 1 of them, f = floor((n-1)/3)) to break a voting rule."""
    if type(n) is not int or n < 1:
        raise ValueError(f"quorum of {n!r} authorities")
    return n - (n - 1) // 3


class Checkpoint(NamedTuple):
    height: int
    hash: str

    def to_json(self):
        return {"height": self.height, "hash": self.hash}


class Finality(NamedTuple):
    """What a chain's blocks up to and including one block justify: the
    latest justified and the latest finalized block (both at or below the
    block's parent).  Kept per block; the same shape as getHead's."""

    justified: Checkpoint
    finalized: Checkpoint

    @classmethod
    def genesis(cls, genesis_hash):
        """Genesis is justified and finalized by definition."""
        return cls(Checkpoint(0, genesis_hash), Checkpoint(0, genesis_hash))

    def to_json(self):
        return {"justified": self.justified.to_json(), "finalized": self.finalized.to_json()}

    @classmethod
    def from_json(cls, obj):
        return cls(Checkpoint(**obj["justified"]), Checkpoint(**obj["finalized"]))


def sign_bytes(chain_id, height, hash, source_height, source_hash):
    """The 32 bytes an authority signs: H(canonical(the five-member map))."""
    return sha256(canonical({
        "chain_id": chain_id, "height": height, "hash": hash,
        "source_height": source_height, "source_hash": source_hash,
    }))


class Vote(NamedTuple):
    """A parsed vote; build one only with sign_vote or parse_vote."""

    voter: str
    height: int
    hash: str
    source_height: int
    source_hash: str
    sig: str

    @property
    def target(self):
        return Checkpoint(self.height, self.hash)

    @property
    def source(self):
        return Checkpoint(self.source_height, self.source_hash)

    @property
    def content(self):
        """What the signature covers besides chain_id: one vote, however signed."""
        return (self.height, self.hash, self.source_height, self.source_hash)

    def sign_bytes(self, chain_id):
        return sign_bytes(chain_id, *self.content)

    def to_wire(self):
        return dict(zip(VOTE_FIELDS, self))

    def leaf(self):
        """H(canonical(wire form)): its leaf in votes_root, and its order in evidence."""
        return sha256_hex(canonical(self.to_wire()))


def parse_vote(obj):
    """The Vote of a wire form, or AitError bad_vote.  Strict: exactly the
    six members, voter an ait1 address, hashes 64 lowercase hex, sig 128,
    1 <= height < 2**64, source_height < height.  The signature is not
    checked here (verify_vote)."""
    try:
        require_fields(obj, VOTE_FIELDS, "vote")
        crypto.check_address(obj["voter"], "voter")
        height = require_int(obj["height"], "height", 1)
        source_height = require_int(obj["source_height"], "source_height")
        parse_hex(obj["hash"], 32, "hash")
        parse_hex(obj["source_hash"], 32, "source_hash")
        parse_hex(obj["sig"], 64, "sig")
    except AitError as e:
        raise AitError("bad_vote", f"vote: {e.message}") from None
    if source_height >= height:
        raise AitError("bad_vote", "vote: source_height must be below height")
    return Vote(*(obj[f] for f in VOTE_FIELDS))


def sign_vote(key, chain_id, height, hash, source_height, source_hash):
    """key's vote for target (height, hash) with that source, on chain_id."""
    sig = key.sign(sign_bytes(chain_id, height, hash, source_height, source_hash)).hex()
    return parse_vote({"voter": key.address, "height": height, "hash": hash,
                       "source_height": source_height, "source_hash": source_hash, "sig": sig})


def verify_vote(vote, chain_id, pubkey):
    """True when pubkey (32 bytes) is the voter's key and signed this vote on chain_id."""
    if type(pubkey) is not bytes or len(pubkey) != 32 or crypto.address_of(pubkey) != vote.voter:
        return False
    return crypto.verify(pubkey, bytes.fromhex(vote.sig), vote.sign_bytes(chain_id))


def violation(a, b):
    """The voting rule two votes by one voter break together, if any.

    double_vote: two different votes for one target height (Casper FFG
    rule I, as BSC's slashing contract reads it: a different source counts
    too).  surround_vote: one vote's span strictly surrounds the other's,
    s1 < s2 and t2 < t1 (rule II).  The same vote twice (even with another
    signature) breaks nothing."""
    if a.voter != b.voter:
        raise ValueError("violation() compares two votes by one voter")
    if a.content == b.content:
        return None
    if a.height == b.height:
        return DOUBLE_VOTE
    if (a.source_height < b.source_height and b.height < a.height) or (
            b.source_height < a.source_height and a.height < b.height):
        return SURROUND_VOTE
    return None


# -- an authority's own votes ----------------------------------------------


class Record(NamedTuple):
    """The persisted last vote of an authority (its voter is the key's)."""

    height: int
    hash: str
    source_height: int
    source_hash: str

    def to_json(self):
        return dict(zip(RECORD_FIELDS, self))

    @classmethod
    def of(cls, vote):
        return cls(*vote.content)

    @classmethod
    def from_json(cls, obj):
        """ValueError unless obj is a record's to_json()."""
        if type(obj) is not dict or set(obj) != set(RECORD_FIELDS):
            raise ValueError(f"not a vote record: {obj!r}")
        rec = cls(*(obj[f] for f in RECORD_FIELDS))
        if not (type(rec.height) is int and type(rec.source_height) is int and 0 <= rec.source_height < rec.height
                and is_hex(rec.hash, 32) and is_hex(rec.source_hash, 32)):
            raise ValueError(f"not a vote record: {obj!r}")
        return rec


class SafeVoter:
    """Keeps one authority's votes clear of both rules, from its last vote.

    Rule: a new vote must have height > last.height and source_height >=
    last.source_height.  Why the last vote is enough: by induction every
    vote this guard allowed has a greater height and a source no lower
    than the one before, so the last vote holds the greatest target and the
    greatest source of them all.  A new vote n against any earlier vote e:
    n.height > e.height, so no double vote and e cannot surround n (that
    needs n.height < e.height); n surrounds e only if n.source_height <
    e.source_height, but n.source_height >= last.source_height >=
    e.source_height.  So the guard needs only Record(height, hash,
    source_height, source_hash) of the last vote (hash and source_hash let
    the node re-sign and re-send exactly that vote after a restart, and
    tell its own vote from another's at that height).

    Use: vote = sign_vote(...); if guard.may_vote(vote): persist
    Record.of(vote) durably (LMDB commit) *then* guard.advance(record), and
    only then send the vote.  A crash between the two steps at worst loses
    a vote; it never lets the node sign a second one at that height.
    """

    def __init__(self, record=None):
        self.last = record

    def may_vote(self, vote):
        last = self.last
        return last is None or (vote.height > last.height and vote.source_height >= last.source_height)

    def advance(self, record):
        """The record was persisted: from now on it is the last vote."""
        if not self.may_vote(record):
            raise ValueError(f"vote record {record} does not follow {self.last}")
        self.last = record

    def not_mine(self, vote):
        """True when vote, by this authority's own address, was certainly
        not signed by this node: above its last vote, or at that height but
        another vote (someone else holds the key).  Below, it cannot tell."""
        last = self.last
        if last is None:
            return True
        return vote.height > last.height or (vote.height == last.height and vote.content != tuple(last))


# -- votes in blocks -------------------------------------------------------


def block_votes(votes):
    """The block field for these votes: wire forms sorted by voter."""
    return [v.to_wire() for v in sorted(votes, key=lambda v: v.voter)]


def votes_root(wire_votes):
    """Merkle root (as tx_root) over H(canonical(wire vote)) in block order;
    64 zeros for none."""
    return merkle_root([sha256_hex(canonical(w)) for w in wire_votes])


def check_block_votes(chain_id, parent_hash, parent_height, wire_votes, authorities, jailed, before, signed=False):
    """The Finality after a block whose parent is (parent_height,
    parent_hash) and which carries wire_votes; AitError bad_block if one
    vote is wrong.

    authorities: {address: 32-byte public key} in effect for the parent's
    height (the target's epoch); jailed: the addresses whose votes do not
    count; before: the parent's Finality.  Every vote must be by a distinct
    non-jailed authority, in voter order, signed, for target (parent_height,
    parent_hash) and source before.justified.  If they reach quorum of the
    non-jailed authorities, the parent is justified, and if its source is
    the parent's parent, that block is finalized.
    signed=True skips the signature checks: the votes come from this node's
    own pool, each checked when it arrived (a proposer building its block).
    """
    if before.justified.height >= parent_height and parent_height > 0:
        raise ValueError(f"justified {before.justified} is not below the parent {parent_height}")
    if type(wire_votes) is not list:
        raise AitError("bad_block", "block votes must be a list")
    active = [a for a in authorities if a not in jailed]
    if len(wire_votes) > len(active):
        raise AitError("bad_block", f"block carries {len(wire_votes)} votes for {len(active)} authorities")
    target = Checkpoint(parent_height, parent_hash)
    previous = ""
    for i, w in enumerate(wire_votes):
        try:
            v = parse_vote(w)
        except AitError as e:
            raise AitError("bad_block", f"block vote {i}: {e.message}") from None
        if v.voter <= previous:
            raise AitError("bad_block", f"block vote {i}: votes must be sorted by voter, each voter once")
        previous = v.voter
        pubkey = authorities.get(v.voter)
        if pubkey is None or v.voter in jailed:
            raise AitError("bad_block", f"block vote {i}: {v.voter} is not a non-jailed authority")
        if v.target != target:
            raise AitError("bad_block", f"block vote {i}: target is not the parent block")
        if v.source != before.justified:
            raise AitError("bad_block", f"block vote {i}: source is not the latest justified block")
        if not signed and not verify_vote(v, chain_id, pubkey):
            raise AitError("bad_block", f"block vote {i}: signature is not the voter's")
    if not wire_votes or len(wire_votes) < quorum(len(active)):
        return before
    finalized = before.justified if before.justified.height == parent_height - 1 else before.finalized
    return Finality(target, finalized)


# -- votes heard, waiting for a block ---------------------------------------

POOL_HEIGHTS_PER_VOTER = 64


class VotePool:
    """Votes heard from peers (and the node's own), one per voter and
    height, for the proposer of the next block; and the conflicting pairs
    they reveal.  The caller adds only votes it verified against the
    authority set of their height, for heights near its head (say from its
    finalized height to head + 1), and prunes below its finalized height.
    A voter keeps at most POOL_HEIGHTS_PER_VOTER heights (the lowest go)."""

    def __init__(self, per_voter=POOL_HEIGHTS_PER_VOTER):
        self._votes = {}  # voter -> {height: Vote}
        self._per_voter = per_voter

    def add(self, vote):
        """(added, conflict).  conflict: a kept vote of the same voter that
        breaks a rule together with this one (then this one is not kept:
        the pair is evidence).  added is False for a vote already held."""
        mine = self._votes.setdefault(vote.voter, {})
        held = mine.get(vote.height)
        if held is not None and held.content == vote.content:
            return False, None
        for other in mine.values():
            if violation(other, vote):
                return False, other
        mine[vote.height] = vote
        if len(mine) > self._per_voter:
            del mine[min(mine)]
        return True, None

    def for_block(self, target, source, authorities, jailed):
        """The block field for the child of target: the held votes for
        target with this source by non-jailed authorities, sorted by voter."""
        out = []
        for voter, mine in self._votes.items():
            v = mine.get(target.height)
            if v is not None and v.target == target and v.source == source and voter in authorities and voter not in jailed:
                out.append(v)
        return block_votes(out)

    def prune(self, below):
        """Forget the votes for heights below `below`."""
        for voter in list(self._votes):
            mine = self._votes[voter]
            for h in [h for h in mine if h < below]:
                del mine[h]
            if not mine:
                del self._votes[voter]

    def __len__(self):
        return sum(len(m) for m in self._votes.values())
