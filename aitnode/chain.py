"""The chain: build, verify, commit and reorganise blocks on one Store.

This is the one commit path (after CometBFT's ``BlockExecutor.ApplyBlock``):
a block this node builds and a block from a peer are both applied through
``rules.apply_tx`` into a ``StateView`` and written by ``commit``; a
reorganisation verifies the whole competing branch in memory first and
then switches to it in one LMDB write transaction (``reorganise``).
Transactions of a block are applied in order; the fees they pay are
credited to the proposer after the last one.
"""

from aitnode import consensus as C, evidence as E, finality as F
from aitnode.blocks import HEADER_FIELDS, block_bytes, block_hash, tx_bytes, tx_root
from aitnode.errors import AitError, ConfigError
from aitnode.params import block_limits
from aitnode.receipts import CLAIM
from aitnode.rules import BlockContext, apply_tx, finish_block
from aitnode.reorg import reorganise_steps
from aitnode.state import StateView, TreeBase
from aitnode.steps import run_steps
from aitnode.store import check_format, encode_tx_records
from aitnode.unstorable import apply_in_build
from aitnode.tx import parse_tx

SLICE = 256  # transactions applied between two chances for the reactor to run
# Seconds a block's timestamp may be ahead of the verifying node's clock
# (block timestamps are whole seconds since 1970): more is block_in_future.
MAX_FUTURE_DRIFT = 15_000  # ms a block may be stamped ahead of the verifying node's clock


def _limits(params, max_txs=None, max_bytes=None):
    """A block's (max_txs, max_bytes): those given, else the params' as the
    block starts (a PARAM_UPDATE inside a block does not change its own)."""
    txs, size = block_limits(params)
    return (txs if max_txs is None else max_txs), (size if max_bytes is None else max_bytes)


def _check_limits(txs, attestations, params):
    max_txs, max_bytes = _limits(params)
    if len(txs) > max_txs:
        raise AitError("bad_block", f"block holds {len(txs)} transactions, more than max_block_txs {max_txs}")
    size = block_bytes(txs, attestations)
    if size > max_bytes:
        raise AitError("bad_block", f"block holds {size} bytes, more than max_block_bytes {max_bytes}")


def _tx_records(block, applied):
    height = block["header"]["height"]
    atts = block.get("attestations", {})
    out = []
    for i, (tx, result) in enumerate(applied):
        rec = {"tx": tx.to_wire(), "height": height, "block": block["hash"], "index": i, "result": result}
        if tx.hash in atts:
            rec["attestation"] = atts[tx.hash]
        out.append((tx.hash, rec))
    return out


def _begin_built_block(chain, make_context, view, parent_hash, votes, evidence):
    """consensus.begin_block for a block this node builds; if the pool
    offered a vote or evidence that does not check, the block carries
    none.  (ctx, votes, evidence)."""
    ctx = make_context(view)
    try:
        # The pool's votes were checked as they arrived (or made here).
        C.begin_block(ctx, parent_hash, chain.genesis.hash, votes, evidence, signed=True)
        return ctx, votes, evidence
    except AitError:
        view.release()
    ctx = make_context(chain.view())
    C.begin_block(ctx, parent_hash, chain.genesis.hash, [], [])
    return ctx, [], []


def _kept_finalized(store, fin):
    """fin, with the finalized block kept by reorganise_steps (meta) when
    higher and still on the chain: what this node once reported final
    stays final, though the branch it took had not seen those votes."""
    kept = store.meta("finalized")
    if kept is None or kept[0] <= fin.finalized.height or store.hash_at(kept[0]) != kept[1]:
        return fin
    return F.Finality(fin.justified, F.Checkpoint(*kept))


def prune_tree(chain, budget):
    """Prune the state tree below chain.state_history blocks under the
    finalized block, at most budget nodes; True when more is left."""
    if chain.state_history is None or chain.store.closed:
        return False
    return chain.store.prune_tree(chain.finality().finalized.height - chain.state_history, budget)


def _write_genesis(store, g):
    view = StateView(store, base=TreeBase.empty())
    for ns, key, value in g.entries:
        view.put(ns, key, value)
    tree, changes = view.finish()
    assert view.root() == g.header["state_root"]
    block = {"header": g.header, "hash": g.hash, "sig": "", "txs": []}
    store.commit_block(block, [], changes, tree, genesis_hash=g.hash)


class Chain:
    """The chain on one Store: genesis, head, and block application."""

    def __init__(self, store, genesis, state_history=None):
        """state_history: blocks below the finalized one whose state tree is kept (None: all)."""
        self.store = store
        self.state_history = state_history
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self._params_at = self._set_at = self._finality_at = None
        self._params = self._set = self._finality = None
        self._init_or_check()

    def _init_or_check(self):
        store, g = self.store, self.genesis
        check_format(store)
        if store.is_empty():
            return _write_genesis(store, g)
        have = store.meta("genesis_hash")
        if have != g.hash:
            raise ConfigError(
                f"data_dir {store.path} was made with another genesis ({have[:16]}..., "
                f"this genesis is {g.hash[:16]}...): point [node] data_dir at a new folder or use the matching genesis"
            )

    # -- reads -------------------------------------------------------------
    def params(self):
        """The params at the head (cached per head; do not mutate)."""
        head = self.store.head()
        if self._params_at != head:
            self._params = dict(self.store.entries("param"))
            self._params_at = head
        return self._params

    def authority_set(self):
        """The authority set in effect for the next block (cached per head)."""
        head = self.store.head()
        if self._set_at != head:
            self._set = C.set_of(self.view())
            self._set_at = head
        return self._set

    def is_authority(self, address):
        return address in self.authority_set().keys

    def finality(self, view=None):
        """The justified and finalized checkpoints after the head (cached
        per head; finalized never below _kept_finalized), or after view's state."""
        if view is not None:
            return C.finality_of(view, self.genesis.hash)
        head = self.store.head()
        if self._finality_at != head:
            self._finality = _kept_finalized(self.store, C.finality_of(self.view(), self.genesis.hash))
            self._finality_at = head
        return self._finality

    def head(self):
        return self.store.head()

    def head_header(self):
        height, h = self.store.head()
        return self.store.block_by_hash(h)["header"]

    def view(self):
        return StateView(self.store)

    def context(self, view, proposer=None, height=None, timestamp=None, params=None, attestations=None,
                authorities=None):
        """A BlockContext on view; with no height, the next block's (admission)."""
        if height is None:
            height = self.head()[0] + 1
        if authorities is None:
            authorities = C.set_of(view).keys
        return BlockContext(self.chain_id, view, authorities, proposer, height, timestamp,
                            params=params, attestations=attestations)

    def block_entry(self, height):
        """A block with its whole transactions, as peers exchange it."""
        block = self.store.block_at(height)
        return {"block": block, "txs": [self.store.tx_record(h)["tx"] for h in block["txs"]]}

    def parse_stored_tx(self, wire):
        return parse_tx(wire, self.chain_id)

    # -- building ------------------------------------------------------------
    def build_block(self, candidates, key, timestamp, max_txs=None, attestations=None, max_bytes=None):
        """Apply candidates in order on the head; keep those that apply, up
        to the first that would pass max_txs or max_bytes (the params' by
        default; blocks.block_bytes).  (block, tx_records, view, failed):
        failed maps each transaction left out as invalid to (tx, AitError)."""
        return run_steps(self.build_steps(candidates, key, timestamp, max_txs, attestations, max_bytes=max_bytes))

    def build_steps(self, candidates, key, timestamp, max_txs=None, attestations=None, slice_size=SLICE,
                    max_bytes=None, votes=(), evidence=()):
        """build_block as a generator yielding every slice_size transactions
        (run it with steps.run_steps, or run_steps_async to keep the reactor
        answering while a large block is built).  timestamp (ms) is raised
        to the earliest the key's turn allows; votes (for the head) and
        evidence are wire lists the block carries (left out if they do not
        check)."""
        parent = self.head_header()
        parent_hash = self.store.hash_at(parent["height"])
        height = parent["height"] + 1
        view = self.view()
        aset = C.set_of(view)
        earliest = aset.earliest(key.address, height, parent["timestamp"], view.param("block_interval_ms"))
        if earliest is None:
            view.release()
            raise AitError("not_authority", f"{key.address} may not propose: it is no authority, or jailed")
        timestamp = max(timestamp, earliest)
        carries = C.carries_set(view, height)
        ctx, votes, evidence = _begin_built_block(
            self, lambda v: self.context(v, key.address, height, timestamp, attestations=attestations,
                                         authorities=aset.keys),
            view, parent_hash, list(votes), list(evidence))
        view = ctx.view
        max_txs, max_bytes = _limits(ctx.params, max_txs, max_bytes)
        included, records, failed, size = [], [], {}, 0
        for n, tx in enumerate(candidates, 1):
            if len(included) >= max_txs:
                break
            if n % slice_size == 0:
                yield
            cost = tx_bytes(tx, ctx.attestations.get(tx.hash) if tx.type == CLAIM else None)
            if size + cost > max_bytes:
                break
            try:
                result = apply_in_build(ctx, tx)
            except AitError as e:
                failed[tx.hash] = (tx, e)
                continue
            except Exception:
                view.release()
                raise
            included.append(tx)
            records.append((tx, result))
            size += cost
        finish_block(ctx)
        C.end_block(ctx)
        yield from view.finish_steps(slice_size)
        hashes = [tx.hash for tx in included]
        atts = {h: ctx.attestations[h] for h in hashes if h in ctx.attestations}
        header = {
            "chain_id": self.chain_id,
            "parent": parent_hash,
            "height": height,
            "timestamp": timestamp,
            "proposer": key.address,
            "tx_root": tx_root(hashes, atts),
            "state_root": view.root(),
            "votes_root": F.votes_root(votes),
            "evidence_root": E.evidence_root(evidence),
            "authorities_hash": aset.hash,
        }
        h = block_hash(header)
        block = {"header": header, "hash": h, "sig": key.sign(bytes.fromhex(h)).hex(), "txs": hashes, "attestations": atts,
                 "votes": votes, "evidence": evidence}
        if carries:
            block["authorities"] = aset.members
        tx_records = _tx_records(block, records)
        encoded = []
        for i in range(0, len(tx_records), slice_size):
            encoded += encode_tx_records(tx_records[i:i + slice_size])
            yield
        return block, encoded, view, failed

    # -- verifying -----------------------------------------------------------
    def verify_block(self, block, txs, parent=None, view=None, now=None):
        return run_steps(self.verify_steps(block, txs, parent, view, now))

    def verify_steps(self, block, txs, parent=None, view=None, now=None):
        """Check a block from elsewhere; return (block, tx_records, view) to
        commit (steps: verify_block runs them; they may yield a tree job).

        parent: the header it must extend (the head's by default); view:
        the state after parent (the head's by default).  txs are parsed
        Transactions whose signatures the caller checked.  now: the
        verifying node's time in ms; a block stamped more than
        MAX_FUTURE_DRIFT after it raises AitError("block_in_future")
        (None: no upper bound).  Raises AitError("bad_block", ...) naming
        the first problem: a turn not the proposer's, a wrong vote or
        evidence, a wrong authority set, a transaction or the state root.
        """
        header = block.get("header")
        if type(header) is not dict or set(header) != HEADER_FIELDS:
            raise AitError("bad_block", "block header fields are wrong")
        if parent is None:
            parent = self.head_header()
        if header["chain_id"] != self.chain_id:
            raise AitError("bad_block", "block is for another chain")
        if header["parent"] != block_hash(parent) or header["height"] != parent["height"] + 1:
            raise AitError("bad_block", "block does not extend the head")
        if type(header["timestamp"]) is not int or header["timestamp"] < parent["timestamp"]:
            raise AitError("bad_block", "block timestamp is before its parent's")
        if now is not None and header["timestamp"] > now + MAX_FUTURE_DRIFT:
            raise AitError("block_in_future", f"block timestamp is more than {MAX_FUTURE_DRIFT} ms ahead of this node's clock")
        h = self.check_signed_header(block)
        if view is None:
            view = self.view()
        aset = C.check_block_fields(block, header, parent, view)
        if [tx.hash for tx in txs] != block.get("txs", [tx.hash for tx in txs]):
            raise AitError("bad_block", "block transaction list does not match")
        atts = block.get("attestations") or {}
        # Only a claim carries an attestation: nothing else rides in the block.
        if type(atts) is not dict or not set(atts) <= {tx.hash for tx in txs if tx.type == "RECEIPT_CLAIM"}:
            raise AitError("bad_block", "block attestations do not belong to its claims")
        if tx_root([tx.hash for tx in txs], atts) != header["tx_root"]:
            raise AitError("bad_block", "tx_root does not match the transactions")
        ctx = self.context(view, header["proposer"], header["height"], header["timestamp"], attestations=atts,
                           authorities=aset.keys)
        _check_limits(txs, atts, ctx.params)
        C.begin_block(ctx, header["parent"], self.genesis.hash, block.get("votes", []), block.get("evidence", []))
        records = []
        for tx in txs:
            try:
                records.append((tx, apply_tx(ctx, tx)))
            except AitError as e:
                raise AitError("bad_block", f"transaction {tx.hash} is invalid: {e.message}")
        finish_block(ctx)
        C.end_block(ctx)
        yield from view.finish_steps()
        if view.root() != header["state_root"]:
            raise AitError("bad_block", "state_root does not match the state after the block")
        out = {"header": header, "hash": h, "sig": block["sig"], "txs": [tx.hash for tx in txs], "attestations": atts,
               "votes": block.get("votes", []), "evidence": block.get("evidence", [])}
        if "authorities" in block:
            out["authorities"] = block["authorities"]
        return out, _tx_records(out, records), view

    def check_signed_header(self, block, unknown_ok=False):
        """The block's hash matches its header and its proposer, an
        authority (now or before), signed it; the hash.  Needs no state of
        the block's parent: a peer's branch is checked this far as it arrives."""
        header = block.get("header")
        if type(header) is not dict or set(header) != HEADER_FIELDS:
            raise AitError("bad_block", "block header fields are wrong")
        if block.get("hash") not in (None, block_hash(header)):
            raise AitError("bad_block", "block hash does not match its header")
        raw = self.view().get("authkey", header["proposer"]) if type(header["proposer"]) is str else None
        if raw is None:
            if unknown_ok and type(header["proposer"]) is str:
                return None  # not known here yet: the full check (its parent's state) decides
            raise AitError("bad_block", "block proposer is not an authority")
        return E.check_signed_header(header, block.get("sig"), bytes.fromhex(raw))

    # -- committing ----------------------------------------------------------
    def commit(self, block, tx_records, view):
        tree, changes = view.finish()
        view.release()
        self.store.commit_block(block, tx_records, changes, tree)

    def rollback(self, height):
        """Undo blocks above height; the wire transactions they held, oldest first."""
        return self.store.rollback_to(height)

    def reorganise_steps(self, fork_height, branch, now=None):
        """See reorganise_steps below: verify a competing branch, then
        switch to it in one write transaction if fork choice prefers it."""
        return (yield from reorganise_steps(self, fork_height, branch, now))
