"""The light client: follow a chain by its headers from a trusted
checkpoint, trusting no node.

A ``LightClient`` holds one verified point: a finalized block's header and
hash, the authority set in effect for it and for its child, the finality
it leaves and the turn interval.  ``sync()`` fetches headers from there
(``GET /rpc/getHeaders``) and checks each one: chain id, height, parent
link, hash, the proposer's signature by a non-jailed authority of the set
in effect, its turn (docs/protocol.md 10.5), ``authorities_hash``, the
votes its child carries for it (``votes_root``, then
``finality.check_block_votes``), and every authority-set change (the set
the block carries must be the one its parent's state commits to, proven
against the parent's ``state_root``, and the parent must be justified by
the previous set).  It stops at the node's latest finalized block, which
its own count of the votes must finalize, and keeps that point in a cache
file.  State proofs are checked against that point's ``state_root``
(aitnode.light_proofs).  No Twisted, no LMDB: ``fetch(path)`` returns the
decoded JSON answer of a GET, however the caller gets it.
"""

import json
import os
import urllib.parse

from aitnode import consensus as C, crypto, finality as F, jmt
from aitnode.blocks import HEADER_FIELDS, block_hash
from aitnode.encoding import canonical, check_value, is_hex
from aitnode.errors import AitError

CACHE_VERSION = 1
PAGE = 256  # headers asked for at once (getHeaders' largest limit)
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


class LightError(Exception):
    """One line saying what did not verify."""


class NotYet(LightError):
    """What was asked is not (yet) in the verified finalized state or
    chain: a later finalized block may hold it (ait verify --wait)."""


class Point:
    """A verified block: its header and hash, the authority set in effect
    for it (its votes count against it) and for its child, the finality
    after it, and block_interval_ms in its state (as far as known)."""

    __slots__ = ("header", "hash", "set", "next_set", "finality", "interval")

    def __init__(self, header, hash, set, next_set, finality, interval):
        self.header, self.hash, self.set, self.next_set = header, hash, set, next_set
        self.finality, self.interval = finality, interval

    @property
    def height(self):
        return self.header["height"]

    def to_json(self):
        return {"header": self.header, "hash": self.hash, "set": self.set, "next_set": self.next_set,
                "finality": self.finality.to_json(), "interval": self.interval}

    @classmethod
    def from_json(cls, obj):
        header = obj["header"]
        if type(header) is not dict or set(header) != HEADER_FIELDS or block_hash(header) != obj["hash"]:
            raise ValueError("header and hash do not match")
        C.AuthoritySet(obj["set"]), C.AuthoritySet(obj["next_set"])
        if type(obj["interval"]) is not int:
            raise ValueError("interval is not an integer")
        return cls(header, obj["hash"], obj["set"], obj["next_set"], F.Finality.from_json(obj["finality"]),
                   obj["interval"])


def genesis_point(genesis):
    """The Point of a genesis (aitnode.genesis.Genesis): its block is
    computed here from the file, so it is trusted as the file is."""
    return Point(dict(genesis.header), genesis.hash, genesis.members, genesis.members,
                 F.Finality.genesis(genesis.hash), genesis.params["block_interval_ms"])


def parse_trust(text):
    """(height, hash) of a --trust HEIGHT:HASH argument, or LightError."""
    height, _, h = text.partition(":")
    if not height.isdigit() or not is_hex(h, 32):
        raise LightError(f"--trust takes HEIGHT:HASH (a block height and its 64-hex hash), got {text!r}")
    return int(height), h


class LightClient:
    """Headers followed from a trusted point; see the module doc."""

    def __init__(self, fetch, point, checkpoint=None, cache_path=None):
        self.fetch = fetch
        self.point = point  # the latest verified finalized block
        self.chain_id = point.header["chain_id"]
        self.checkpoint = checkpoint or {"height": point.height, "hash": point.hash}
        self.cache_path = cache_path
        self.votes_seen = {}  # height -> (votes carried for it, quorum of its set)

    # -- starting points ------------------------------------------------------
    @classmethod
    def from_genesis(cls, fetch, genesis, cache_path=None):
        return cls._resumed(fetch, genesis_point(genesis), cache_path)

    @classmethod
    def from_trust(cls, fetch, height, trusted_hash, cache_path=None):
        """Trust block height by its hash: fetch its header, then prove from
        its state the sets in effect for it and its child, its finality and
        its turn interval."""
        cached = cls._load(cache_path, {"height": height, "hash": trusted_hash})
        if cached is not None:
            return cls(fetch, cached, {"height": height, "hash": trusted_hash}, cache_path)
        entry = guard(lambda: cls._page(fetch, height, 1)["headers"][0], "getHeaders")
        header = entry["header"]
        if type(header) is not dict or set(header) != HEADER_FIELDS or block_hash(header) != trusted_hash:
            raise LightError(f"trusted block {height}: the node's header there does not hash to {trusted_hash}")
        point = Point(header, trusted_hash, None, None, None, None)
        client = cls(fetch, point, None, cache_path)
        prove = client.prover(point, "trusted")
        members = prove("chain", "authorities", "authority set")
        since = prove("chain", "set_since", "set_since")
        point.next_set = members
        point.set = prove("chain", "prev_authorities", "previous authority set") if since == height + 1 else members
        raw = prove("chain", "finality", "finality")
        if raw is None and height != 0:
            raise LightError(f"trusted block {height}: nothing above genesis was finalized by then; "
                             "trust a later block or use the genesis file")
        point.finality = F.Finality.genesis(trusted_hash) if raw is None else guard(
            lambda: F.Finality.from_json(raw), "the proven finality")
        point.interval = prove("param", "block_interval_ms", "block_interval_ms")
        guard(lambda: (C.AuthoritySet(point.set), C.AuthoritySet(point.next_set), int(point.interval)),
               "the proven authority set")
        return client

    @classmethod
    def from_cache(cls, fetch, cache_path):
        """Resume from a cache alone (its own checkpoint)."""
        try:
            with open(cache_path) as f:
                checkpoint = json.load(f)["checkpoint"]
        except (OSError, *MALFORMED) as e:
            raise LightError(f"cache {cache_path} is unreadable ({e}); pass --genesis or --trust")
        point = cls._load(cache_path, checkpoint)
        if point is None:
            raise LightError(f"cache {cache_path} is of another version; pass --genesis or --trust")
        return cls(fetch, point, checkpoint, cache_path)

    @classmethod
    def _resumed(cls, fetch, point, cache_path):
        checkpoint = {"height": point.height, "hash": point.hash}
        return cls(fetch, cls._load(cache_path, checkpoint) or point, checkpoint, cache_path)

    # -- the cache --------------------------------------------------------------
    @staticmethod
    def _load(path, checkpoint):
        """The cached Point when the cache was started from this checkpoint."""
        if path is None or not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                obj = json.load(f)
            if obj.get("version") != CACHE_VERSION or obj.get("checkpoint") != checkpoint:
                return None
            return Point.from_json(obj["finalized"])
        except (OSError, *MALFORMED) as e:
            raise LightError(f"cache {path} is unreadable ({e}); remove it to start again from the checkpoint")

    def save(self):
        if self.cache_path is None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        tmp = self.cache_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"version": CACHE_VERSION, "chain_id": self.chain_id, "checkpoint": self.checkpoint,
                       "finalized": self.point.to_json()}, f)
        os.replace(tmp, self.cache_path)

    # -- following headers ------------------------------------------------------
    @staticmethod
    def _page(fetch, start, limit=PAGE):
        page = fetch(f"/rpc/getHeaders?from={start}&limit={limit}")
        if not page["headers"] or page["headers"][0]["header"]["height"] != start:
            raise LightError(f"node serves no header at height {start}")
        return page

    def sync(self):
        """Follow headers to the node's latest finalized block; that block's
        Point (also kept as self.point and in the cache)."""
        point = guard(lambda: self._sync(), "getHeaders")
        self.point = point
        self.save()
        return point

    def _sync(self):
        start = self.point
        page = self.fetch(f"/rpc/getHeaders?from={start.height}&limit={PAGE}")
        if not page["headers"] or page["headers"][0]["header"]["height"] != start.height:
            raise self._off_verified(f"node serves no header at height {start.height}")
        claimed = page["finalized"]
        target = claimed["height"]
        if type(target) is not int:
            raise LightError("node reports no finalized height")
        if target < start.height:
            raise self._off_verified(f"node reports finalized {target} below verified {start.height}")
        entries = page["headers"]
        if block_hash(entries[0]["header"]) != start.hash:
            if start.height == 0:
                raise LightError("node's genesis block is not the trusted one: it serves another chain")
            raise self._off_verified(f"node's block {start.height} is not the verified one")
        votes = entries[0]["votes"]
        tip, best, recent = start, start, {start.height: start}
        i = 1
        while tip.height < target + 2 and target > start.height:
            if i == len(entries):
                page = self.fetch(f"/rpc/getHeaders?from={tip.height + 1}&limit={PAGE}")
                entries, i = page["headers"], 0
                if not entries:
                    break
            entry = entries[i]
            i += 1
            tip = self._step(tip, entry, votes)
            votes = entry["votes"]
            recent[tip.height] = tip
            recent.pop(tip.height - 4, None)
            fin = tip.finality.finalized
            if fin.height > best.height:
                best = recent[fin.height]
                if best.hash != fin.hash:
                    raise LightError(f"block {tip.height}: finalizes a block {fin.height} that is not its ancestor")
        if best.height < target:
            raise LightError(self._why_not(target, tip, recent))
        if best.hash != claimed["hash"]:
            raise LightError(f"node reports finalized block {target} as {claimed['hash']}, its headers give {best.hash}")
        return best

    def _off_verified(self, message):
        """LightError(message) about a node that contradicts the verified
        point; when that point came from the cache, naming the cache: a
        chain started over from the same checkpoint (a devnet reset) reads
        to a light client as a node denying what it finalized before."""
        if self.cache_path is not None and self.point.height != self.checkpoint["height"]:
            message += (f" (block {self.point.height} was verified earlier, kept in {self.cache_path}:"
                        " if the chain was started over, remove that file)")
        return LightError(message)

    def _why_not(self, target, tip, recent):
        if tip.height < target:
            return f"node reports finalized {target} but serves headers only up to {tip.height}"
        for h in (target, target + 1):
            if h + 1 > tip.height:
                return f"node reports finalized {target} but serves no votes for block {h}"
            n, q = self.votes_seen[h]
            if n < q:
                return f"block {h}: votes below quorum ({n} of {q})"
        return f"node reports finalized {target} but its votes finalize only {recent[tip.height].finality.finalized.height}"

    def _step(self, tip, entry, votes):
        """The Point of the child of tip the entry holds, checked; votes: the
        votes it carries for tip (the entry of tip says which)."""
        h = tip.height + 1
        header = entry["header"]
        if type(header) is not dict or set(header) != HEADER_FIELDS:
            raise LightError(f"header {h}: not a block header")
        try:
            check_value(header)
        except AitError as e:
            raise LightError(f"header {h}: {e.message}")
        if header["height"] != h:
            raise LightError(f"header {h}: height {header['height']} where {h} was expected")
        if header["chain_id"] != self.chain_id:
            raise LightError(f"header {h}: chain_id {header['chain_id']!r} is not {self.chain_id!r}")
        if header["parent"] != tip.hash:
            raise LightError(f"header {h}: its parent is not the verified block {tip.height}")
        bh = block_hash(header)
        members, changed = tip.next_set, header["authorities_hash"] != C.authorities_hash(tip.next_set)
        if changed:
            members = entry.get("authorities")
            if members is None or guard(lambda: C.authorities_hash(members), "authorities") != header["authorities_hash"]:
                raise LightError(f"header {h}: authorities_hash is neither the set in effect nor a set it carries")
            if self.prover(tip, "verified")("chain", "authorities", "authority set") != members:
                raise LightError(f"header {h}: the set it carries is not the one block {tip.height}'s state commits to")
        aset = guard(lambda: C.AuthoritySet(members), "authorities")
        proposer = header["proposer"]
        if proposer not in aset.active:
            raise LightError(f"header {h}: signature by a non-authority")
        sig = entry["sig"]
        if not is_hex(sig, 64) or not crypto.verify(aset.keys[proposer], bytes.fromhex(sig), bytes.fromhex(bh)):
            raise LightError(f"header {h}: bad proposer signature")
        interval = tip.interval
        if header["timestamp"] < aset.earliest(proposer, h, tip.header["timestamp"], interval):
            # block_interval_ms may have changed since the last proof of it.
            interval = self.prover(tip, "verified")("param", "block_interval_ms", "block_interval_ms")
            if type(interval) is not int or header["timestamp"] < aset.earliest(
                    proposer, h, tip.header["timestamp"], interval):
                raise LightError(f"header {h}: stamped before its proposer's turn")
        fin = self._votes(tip, h, header, votes)
        if changed and fin.justified != F.Checkpoint(tip.height, tip.hash):
            n, q = self.votes_seen[tip.height]
            raise LightError(f"block {h}: authority set change not justified by the previous set "
                             f"(votes for block {tip.height}: {n} of {q})")
        return Point(header, bh, members, members, fin, interval)

    def _votes(self, tip, h, header, votes):
        """The finality after block h, whose votes for tip are votes."""
        try:
            root = F.votes_root(votes) if type(votes) is list else None
        except AitError:
            root = None
        if root != header["votes_root"]:
            raise LightError(f"block {h}: votes_root does not match the votes served for block {tip.height}")
        tipset = C.AuthoritySet(tip.set)
        self.votes_seen[tip.height] = (len(votes), tipset.quorum)
        if tip.height == 0:
            if votes:
                raise LightError("block 1: carries votes (genesis needs none)")
            return tip.finality
        try:
            return F.check_block_votes(self.chain_id, tip.hash, tip.height, votes, tipset.keys, tipset.jailed,
                                       tip.finality)
        except AitError as e:
            raise LightError(f"block {h}: {e.message}")

    # -- state at a verified block --------------------------------------------------
    def prover(self, point, label):
        """prove(ns, key, what): the value (None when absent) of a state
        entry at point, proven against its state_root."""

        def prove(ns, key, what):
            path = f"/rpc/getProof/{ns}/{urllib.parse.quote(key, safe='')}?height={point.height}"
            answer = self.fetch(path)
            return guard(lambda: check_state_proof(answer, point, ns, key, what, label), f"the {what} proof")

        return prove

    def prove(self, ns, key, what):
        """An entry at the latest verified finalized block."""
        return self.prover(self.point, "finalized")(ns, key, what)


def check_state_proof(answer, point, ns, key, what, label="finalized"):
    """The value answer (a getProof answer) proves for (ns, key) at point;
    LightError unless the proof holds against point's state_root."""
    height = point.height
    if answer["height"] != height or answer["block_hash"] != point.hash:
        raise LightError(f"{what} proof is for block {answer['height']}, not {label} block {height}")
    if answer["namespace"] != ns or answer["key"] != key:
        raise LightError(f"{what} proof is for another entry than {ns}/{key}")
    value, value_cbor = answer["value"], answer["value_cbor"]
    if value is None:
        if value_cbor is not None:
            raise LightError(f"{what} proof: value_cbor without a value")
        vh = None
    else:
        try:
            encoded = canonical(value)
        except AitError as e:
            raise LightError(f"{what} proof: {e.message}")
        if not is_hex(value_cbor) or bytes.fromhex(value_cbor) != encoded:
            raise LightError(f"{what} proof: value_cbor is not the value's canonical bytes")
        vh = jmt.value_hash(value)
    proof = answer["proof"]
    try:
        if not is_hex(proof):
            raise jmt.ProofError("proof is not hex")
        jmt.verify_proof(bytes.fromhex(point.header["state_root"]), jmt.key_hash(ns, key), vh, bytes.fromhex(proof))
    except jmt.ProofError:
        raise LightError(f"{what} proof does not match state_root of {label} block {height}")
    return value


def guard(thunk, what):
    """thunk(), with a malformed answer (a missing member, a wrong type)
    turned into LightError."""
    try:
        return thunk()
    except LightError:
        raise
    except AitError as e:
        raise LightError(f"malformed answer ({what}): {e.message}")
    except MALFORMED as e:
        raise LightError(f"malformed answer ({what}): {type(e).__name__} {e}")
