"""Objective evidence that an authority broke a signing rule.

Two kinds, each a pair of things one key signed:
- "proposal": two different block headers at one height, signed by their
  proposer (an honest proposer signs at most one header per height);
- "vote": two finality votes by one authority that break a voting rule
  (aitnode.finality.violation: double vote or surround vote).

Evidence is checked against the authority set of its height(s), has one
id (the pair in canonical order), and is recorded once; the offender is
jailed.  All evidence handling lives here, so slashing (the stake issue)
plugs in here.  Pure: no storage, no network.  docs/protocol.md,
"Finality votes and evidence", is the contract.
"""

from typing import NamedTuple

from aitnode import crypto
from aitnode.blocks import HEADER_FIELDS, block_hash
from aitnode.encoding import canonical, merkle_root, parse_hex, require_fields, require_int, sha256_hex
from aitnode.errors import AitError
from aitnode.finality import parse_vote, verify_vote, violation

PROPOSAL = "proposal"
VOTE = "vote"
DOUBLE_PROPOSAL = "double_proposal"
EVIDENCE_FIELDS = ("kind", "a", "b")
SIGNED_HEADER_FIELDS = ("header", "sig")
# Far above any valid header (about 330 bytes today): a bound on what a
# peer can make a node hash, not a rule about headers.
MAX_HEADER_BYTES = 16384
MAX_BLOCK_EVIDENCE = 16


class Evidence(NamedTuple):
    """Parsed evidence (from parse_evidence, proposal_evidence or vote_evidence)."""

    kind: str  # PROPOSAL or VOTE
    offence: str  # DOUBLE_PROPOSAL, finality.DOUBLE_VOTE or finality.SURROUND_VOTE
    offender: str  # the address that signed both
    heights: tuple  # (height of a, height of b): the authority sets that must hold the offender
    a: object  # {"header", "sig"} for a proposal, a finality.Vote for a vote
    b: object
    id: str  # H(canonical(wire form)): recorded once under this id

    @property
    def height(self):
        return max(self.heights)

    def to_wire(self):
        if self.kind == VOTE:
            return {"kind": VOTE, "a": self.a.to_wire(), "b": self.b.to_wire()}
        return {"kind": PROPOSAL, "a": self.a, "b": self.b}


def check_signed_header(header, sig, pubkey):
    """The block hash of header when sig (128 hex) is pubkey's signature of
    its 32 bytes; AitError bad_block otherwise.  The pure twin of
    Chain.check_signed_header, with the proposer's key given."""
    if type(header) is not dict or set(header) != HEADER_FIELDS:
        raise AitError("bad_block", "block header fields are wrong")
    try:
        h = block_hash(header)
        raw = parse_hex(sig, 64, "sig")
    except AitError as e:
        raise AitError("bad_block", f"signed header: {e.message}") from None
    if not crypto.verify(pubkey, raw, bytes.fromhex(h)):
        raise AitError("bad_block", "block signature is not the proposer's")
    return h


def _bad(message):
    return AitError("bad_evidence", message)


def _signed_header(obj, where):
    """The block hash of one half of a proposal pair, format checked only."""
    require_fields(obj, SIGNED_HEADER_FIELDS, where)
    header = obj["header"]
    if type(header) is not dict or set(header) != HEADER_FIELDS:
        raise _bad(f"{where}.header must have exactly the block header fields")
    if not all(type(v) in (str, int) for v in header.values()):
        raise _bad(f"{where}.header values must be text or integers")
    raw = canonical(header)
    if len(raw) > MAX_HEADER_BYTES:
        raise _bad(f"{where}.header is over {MAX_HEADER_BYTES} bytes")
    require_int(header["height"], f"{where}.header.height", 1)
    crypto.check_address(header["proposer"], f"{where}.header.proposer")
    parse_hex(obj["sig"], 64, f"{where}.sig")
    return sha256_hex(raw)


def _ordered(kx, ky, what):
    if kx == ky:
        raise _bad(f"the two {what} are the same")
    if kx > ky:
        raise _bad(f"a must sort below b (by {what[:-1]} hash)")


def _parse_proposal(obj):
    a, b = obj["a"], obj["b"]
    _ordered(_signed_header(a, "a"), _signed_header(b, "b"), "headers")
    ha, hb = a["header"], b["header"]
    if ha["height"] != hb["height"]:
        raise _bad("the two headers are at different heights")
    if ha["proposer"] != hb["proposer"]:
        raise _bad("the two headers have different proposers")
    wire = {"kind": PROPOSAL, "a": a, "b": b}
    return Evidence(PROPOSAL, DOUBLE_PROPOSAL, ha["proposer"], (ha["height"], hb["height"]), a, b,
                    sha256_hex(canonical(wire)))


def _parse_votes(obj):
    a, b = parse_vote(obj["a"]), parse_vote(obj["b"])
    if a.voter != b.voter:
        raise _bad("the two votes have different voters")
    _ordered(a.leaf(), b.leaf(), "votes")
    offence = violation(a, b)
    if offence is None:
        raise _bad("the two votes break no voting rule")
    wire = {"kind": VOTE, "a": a.to_wire(), "b": b.to_wire()}
    return Evidence(VOTE, offence, a.voter, (a.height, b.height), a, b, sha256_hex(canonical(wire)))


def parse_evidence(obj):
    """The Evidence of a wire form, or AitError bad_evidence: the format,
    the canonical order (a's hash below b's) and that the pair is an
    offence on its face.  Signatures and authority sets: check_evidence."""
    try:
        require_fields(obj, EVIDENCE_FIELDS, "evidence")
        if obj["kind"] == PROPOSAL:
            return _parse_proposal(obj)
        if obj["kind"] == VOTE:
            return _parse_votes(obj)
    except AitError as e:
        if e.code == "bad_evidence":
            raise
        raise _bad(f"evidence: {e.message}") from None
    raise _bad("evidence kind must be 'proposal' or 'vote'")


def check_evidence(ev, chain_id, pubkey_of):
    """The offender's address if both halves of ev were signed on chain_id
    by a key that the authority set of each half's height holds; else
    AitError bad_evidence.  pubkey_of(address, height) gives the 32-byte
    public key of an authority of that height's set (jailed or not), or
    None (not an authority, or a height the node cannot answer for)."""
    for where, part, height in (("a", ev.a, ev.heights[0]), ("b", ev.b, ev.heights[1])):
        pubkey = pubkey_of(ev.offender, height)
        if pubkey is None or crypto.address_of(pubkey) != ev.offender:
            raise _bad(f"{ev.offender} is not an authority at height {height}")
        if ev.kind == VOTE:
            if not verify_vote(part, chain_id, pubkey):
                raise _bad(f"{where}: the vote's signature is not the voter's on this chain")
        else:
            if part["header"]["chain_id"] != chain_id:
                raise _bad(f"{where}: the header is for another chain")
            try:
                check_signed_header(part["header"], part["sig"], pubkey)
            except AitError as e:
                raise _bad(f"{where}: {e.message}") from None
    return ev.offender


def proposal_evidence(header_a, sig_a, header_b, sig_b):
    """Evidence from two signed headers (in either order); bad_evidence if they are none."""
    a, b = {"header": header_a, "sig": sig_a}, {"header": header_b, "sig": sig_b}
    try:
        if block_hash(header_a) > block_hash(header_b):
            a, b = b, a
    except (AitError, TypeError) as e:
        raise _bad(f"evidence: a header is not a block header ({e})") from None
    return parse_evidence({"kind": PROPOSAL, "a": a, "b": b})


def vote_evidence(vote_a, vote_b):
    """Evidence from two finality.Vote (in either order); bad_evidence if they are none."""
    a, b = sorted((vote_a, vote_b), key=lambda v: v.leaf())
    return parse_evidence({"kind": VOTE, "a": a.to_wire(), "b": b.to_wire()})


# -- evidence in blocks ----------------------------------------------------


def block_evidence(evidence):
    """The block field for these Evidence: wire forms sorted by id."""
    return [ev.to_wire() for ev in sorted(evidence, key=lambda ev: ev.id)]


def evidence_root(wire_items):
    """Merkle root (as tx_root) over the ids, H(canonical(wire)), in block
    order; 64 zeros for none."""
    return merkle_root([sha256_hex(canonical(w)) for w in wire_items])


def check_block_evidence(wire_items, chain_id, pubkey_of, is_recorded):
    """The Evidence a block carries, each checked; AitError bad_block if
    the list is not at most MAX_BLOCK_EVIDENCE items sorted by id (each
    once), or one item is bad or already recorded (is_recorded(id))."""
    if type(wire_items) is not list:
        raise AitError("bad_block", "block evidence must be a list")
    if len(wire_items) > MAX_BLOCK_EVIDENCE:
        raise AitError("bad_block", f"block carries more than {MAX_BLOCK_EVIDENCE} pieces of evidence")
    out = []
    previous = ""
    for i, w in enumerate(wire_items):
        try:
            ev = parse_evidence(w)
            check_evidence(ev, chain_id, pubkey_of)
        except AitError as e:
            raise AitError("bad_block", f"block evidence {i}: {e.message}") from None
        if ev.id <= previous:
            raise AitError("bad_block", f"block evidence {i}: evidence must be sorted by id, each once")
        if is_recorded(ev.id):
            raise AitError("bad_block", f"block evidence {i}: {ev.id} is recorded already")
        previous = ev.id
        out.append(ev)
    return out
