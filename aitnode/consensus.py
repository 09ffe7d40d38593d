"""Consensus among authorities: the authority set as state, turns, and what
a block's votes, evidence and epoch boundary do to the state.

The set lives in the state as ``("chain", "authorities")``: a list of
``{"address", "public_key", "jailed"}`` in rotation order.  The set in
effect for block h is the one in the state its parent left, so a change
(jailing, or the authority updates approved in an epoch) counts from the
block after the one that made it.  A block carries the whole set
(``block["authorities"]``) whenever it differs from its parent's (always
at the first block of an epoch whose set changed, and after a jailing);
every header commits to the set in effect (``authorities_hash``), so a
client holding headers follows every change.

Turns: the non-jailed authorities in set order are the rotation; for
height h the authority at index ``h mod n`` is in turn, and the one at
rank r after it (``(index - h) mod n``) may propose once
``timestamp >= parent.timestamp + block_interval_ms * (1 + 2r)``.

Block processing order (chain.build_steps and verify_block share it):
``begin_block`` (the votes for the parent, then the evidence), the
transactions, the fees, ``end_block`` (at an epoch's last block, the
approved authority updates).  Nothing here imports Twisted or LMDB.
"""

from aitnode import crypto, evidence as E, finality as F
from aitnode.encoding import canonical, is_hex, require_fields, sha256_hex
from aitnode.errors import AitError

ACTIONS = ("add", "remove", "unjail")


# -- the set ---------------------------------------------------------------

def genesis_set(authorities):
    return [{"address": a["address"], "public_key": a["public_key"], "jailed": False} for a in authorities]


def authorities_hash(members):
    return sha256_hex(canonical(members))


class AuthoritySet:
    """The authority set in effect for one block."""

    def __init__(self, members):
        self.members = members
        self.keys = {m["address"]: bytes.fromhex(m["public_key"]) for m in members}
        self.jailed = frozenset(m["address"] for m in members if m["jailed"])
        self.active = [m["address"] for m in members if not m["jailed"]]
        self.hash = authorities_hash(members)

    @property
    def quorum(self):
        return F.quorum(len(self.active))

    def rank(self, address, height):
        """How many turns after the in-turn one this authority's is; None
        when it may not propose (not an authority, or jailed)."""
        if address not in self.active:
            return None
        return (self.active.index(address) - height) % len(self.active)

    def earliest(self, address, height, parent_timestamp, interval_ms):
        """The earliest timestamp (ms) at which address may propose block
        height on a parent stamped parent_timestamp; None if never."""
        r = self.rank(address, height)
        return None if r is None else parent_timestamp + interval_ms * (1 + 2 * r)


def set_of(view):
    """The authority set in the state of view (the one in effect for the
    block built on it)."""
    return AuthoritySet(view.get("chain", "authorities"))


def parent_set_of(view, height):
    """The set that was in effect for the parent of block height, from the
    state the parent left (see _replace_set)."""
    if view.get("chain", "set_since") == height:
        return AuthoritySet(view.get("chain", "prev_authorities"))
    return set_of(view)


def carries_set(view, height):
    """Whether block height, built on view, carries the whole set: the first
    block of each epoch, and any block whose set differs from its parent's."""
    return (height - 1) % view.param("epoch_length") == 0 or view.get("chain", "set_since") == height


def _replace_set(ctx, members):
    """Make members the set from the next block on, keeping the set of
    this block for the next block's votes (which target this one)."""
    if ctx.view.get("chain", "set_since") != ctx.height + 1:
        ctx.view.put("chain", "prev_authorities", ctx.view.get("chain", "authorities"))
        ctx.view.put("chain", "set_since", ctx.height + 1)
    ctx.view.put("chain", "authorities", members)


def finality_of(view, genesis_hash):
    raw = view.get("chain", "finality")
    return F.Finality.genesis(genesis_hash) if raw is None else F.Finality.from_json(raw)


def is_epoch_end(height, params):
    return height % params["epoch_length"] == 0


# -- AUTHORITY_UPDATE ---------------------------------------------------------

def validate_update_payload(p):
    require_fields(p, ("action", "address", "public_key"), "payload")
    if p["action"] not in ACTIONS:
        raise AitError("bad_authority_update", f"payload.action must be one of {', '.join(ACTIONS)}")
    crypto.check_address(p["address"], "payload.address")
    if not is_hex(p["public_key"], 32):
        raise AitError("bad_hex", "payload.public_key must be 64 lowercase hex characters")
    if not crypto.pubkey_matches(bytes.fromhex(p["public_key"]), p["address"]):
        raise AitError("pubkey_mismatch", "payload.public_key does not belong to payload.address")


def change_id(payload):
    return sha256_hex(canonical(payload))


def _check_change(members, p):
    """AitError if the change cannot apply to members as they are."""
    by_addr = {m["address"]: m for m in members}
    m = by_addr.get(p["address"])
    if p["action"] == "add" and m is not None:
        raise AitError("authority_exists", f"{p['address']} is an authority already")
    if p["action"] != "add":
        if m is None or m["public_key"] != p["public_key"]:
            raise AitError("authority_unknown", f"{p['address']} with this public_key is no authority")
        if p["action"] == "unjail" and not m["jailed"]:
            raise AitError("authority_not_jailed", f"{p['address']} is not jailed")
        if p["action"] == "remove" and [a for a in members if not a["jailed"] and a is not m] == []:
            raise AitError("last_authority", "the last non-jailed authority cannot be removed")


def check_update(view, tx):
    """The rules of an AUTHORITY_UPDATE against the state (admission and
    blocks alike); its change id and approval record."""
    p = tx.payload
    members = view.get("chain", "authorities")
    if tx.sender not in {m["address"] for m in members if not m["jailed"]}:
        raise AitError("not_authority", "only a non-jailed authority may send AUTHORITY_UPDATE")
    _check_change(members, p)
    cid = change_id(p)
    rec = view.get("authupd", cid) or {"change": p, "approvers": []}
    if tx.sender in rec["approvers"]:
        raise AitError("already_approved", "this authority approved this change already")
    return cid, rec


def unique_keys(tx):
    """Keys no two pending AUTHORITY_UPDATEs may share (mempool.UNIQUE):
    one approval of a change per authority."""
    return [(("authupd", change_id(tx.payload), tx.sender), "already_approved",
             "this authority's approval of this change is pending already")]


def apply_update(ctx, tx, bal, nonce):
    """The AUTHORITY_UPDATE executor: one approval of a change, by a
    non-jailed authority; the change applies at the end of the epoch in
    which q distinct authorities approved it."""
    cid, rec = check_update(ctx.view, tx)
    if bal < tx.fee:
        raise AitError("insufficient_balance", f"balance {bal} does not cover fee {tx.fee}")
    ctx.view.set_account(tx.sender, bal - tx.fee, nonce + 1)
    ctx.view.put("authupd", cid, dict(rec, approvers=sorted(rec["approvers"] + [tx.sender])))
    pending = ctx.view.get("chain", "pending_updates") or []
    if cid not in pending:
        ctx.view.put("chain", "pending_updates", sorted(pending + [cid]))
    return {"change": cid, "approvals": len(rec["approvers"]) + 1,
            "changes": [{"address": tx.sender, "delta": -tx.fee}] if tx.fee else []}


def end_block(ctx):
    """At an epoch's last block: apply, in id order, every pending change
    that q distinct authorities of the set in effect approved and that
    still applies; drop those that no longer can; keep the rest."""
    if not is_epoch_end(ctx.height, ctx.params):
        return
    pending = ctx.view.get("chain", "pending_updates") or []
    if not pending:
        return
    members = [dict(m) for m in ctx.view.get("chain", "authorities")]
    q = F.quorum(len([m for m in members if not m["jailed"]]))
    keep = []
    for cid in pending:
        rec = ctx.view.get("authupd", cid)
        p = rec["change"]
        try:
            _check_change(members, p)
        except AitError:
            ctx.view.put("authupd", cid, None)
            continue
        active = {m["address"] for m in members if not m["jailed"]}
        if len([a for a in rec["approvers"] if a in active]) < q:
            keep.append(cid)
            continue
        if p["action"] == "add":
            members.append({"address": p["address"], "public_key": p["public_key"], "jailed": False})
            ctx.view.put("authkey", p["address"], p["public_key"])
        elif p["action"] == "remove":
            members = [m for m in members if m["address"] != p["address"]]
        else:
            for m in members:
                if m["address"] == p["address"]:
                    m["jailed"] = False
        ctx.view.put("authupd", cid, None)
    _replace_set(ctx, members)
    ctx.view.put("chain", "pending_updates", keep or None)


# -- a block's own fields -----------------------------------------------------

def block_fields_root(block):
    """(votes_root, evidence_root) of a block's votes and evidence lists."""
    return F.votes_root(block.get("votes", [])), E.evidence_root(block.get("evidence", []))


def pubkey_lookup(view):
    """pubkey_of(address, height) for evidence: the key of any address that
    ever was an authority (keys never change, and an address that signed two
    headers or votes at one height with it misbehaved whatever its status)."""

    def pubkey_of(address, height):
        raw = view.get("authkey", address)
        return None if raw is None else bytes.fromhex(raw)

    return pubkey_of


def begin_block(ctx, parent_hash, genesis_hash, votes, evidence, signed=False):
    """Apply a block's votes (for its parent, parent_hash at ctx.height - 1)
    and evidence, before its transactions; AitError("bad_block") for a
    wrong vote or evidence.  Sets ctx.finality (after the votes) and
    ctx.jailed (offenders jailed from the next block on)."""
    before = finality_of(ctx.view, genesis_hash)
    parent_height = ctx.height - 1
    if parent_height == 0:
        if votes:
            raise AitError("bad_block", "block 1 carries no votes (genesis is final)")
        after = before
    else:
        pset = parent_set_of(ctx.view, ctx.height)
        after = F.check_block_votes(ctx.chain_id, parent_hash, parent_height, votes, pset.keys, pset.jailed, before,
                                    signed=signed)
    if after != before:
        ctx.view.put("chain", "finality", after.to_json())
    ctx.finality = after
    if evidence:
        found = E.check_block_evidence(evidence, ctx.chain_id, pubkey_lookup(ctx.view),
                                       lambda eid: ctx.view.get("evid", eid) is not None)
        members = [dict(m) for m in ctx.view.get("chain", "authorities")]
        for ev in found:
            ctx.view.put("evid", ev.id, {"height": ctx.height, "offender": ev.offender, "offence": ev.offence})
            active = [m for m in members if not m["jailed"]]
            for m in members:
                if m["address"] == ev.offender and not m["jailed"] and len(active) > 1:
                    m["jailed"] = True
                    ctx.jailed.append(ev.offender)
        if ctx.jailed:
            _replace_set(ctx, members)
    return after


# -- checking a block from elsewhere --------------------------------------------

def better(a, b):
    """Fork choice between two chains given as (justified height, height,
    head hash): the higher justified block, then the greater height, then
    the lower hash."""
    return (a[0], a[1], -int(a[2], 16)) > (b[0], b[1], -int(b[2], 16))


def check_block_fields(block, header, parent, view):
    """The block's turn and consensus fields against the state its parent
    left (view); the authority set in effect for it.  AitError bad_block."""
    aset = set_of(view)
    height = header["height"]
    earliest = aset.earliest(header["proposer"], height, parent["timestamp"], view.param("block_interval_ms"))
    if earliest is None:
        raise AitError("bad_block", "block proposer is not a non-jailed authority of its height")
    if header["timestamp"] < earliest:
        raise AitError("bad_block", f"block is stamped before its proposer's turn ({header['timestamp']} < {earliest})")
    if header["authorities_hash"] != aset.hash:
        raise AitError("bad_block", "authorities_hash is not the hash of the authority set in effect")
    if carries_set(view, height):
        if block.get("authorities") != aset.members:
            raise AitError("bad_block", "block does not carry the authority set in effect")
    elif "authorities" in block:
        raise AitError("bad_block", "block carries an authority set it need not")
    votes, evidence = block.get("votes", []), block.get("evidence", [])
    if type(votes) is not list or type(evidence) is not list:
        raise AitError("bad_block", "block votes and evidence must be lists")
    if (F.votes_root(votes), E.evidence_root(evidence)) != (header["votes_root"], header["evidence_root"]):
        raise AitError("bad_block", "votes_root or evidence_root does not match the block's votes and evidence")
    return aset
