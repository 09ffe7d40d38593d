"""The chain: build, verify, commit and reorganise blocks on one Store.

This is the one commit path (after CometBFT's ``BlockExecutor.ApplyBlock``):
a block this node builds and a block from a peer are both applied through
``rules.apply_tx`` into a ``StateView`` and written by ``commit``; a
reorganisation verifies the whole competing branch in memory first and
then switches to it in one LMDB write transaction (``reorganise``).
Transactions of a block are applied in order; the fees they pay are
credited to the proposer after the last one.
"""

from aitnode import crypto
from aitnode.blocks import HEADER_FIELDS, block_bytes, block_hash, tx_bytes, tx_root
from aitnode.errors import AitError, ConfigError
from aitnode.params import block_limits
from aitnode.receipts import CLAIM
from aitnode.rules import BlockContext, apply_tx, finish_block
from aitnode.state import StateView
from aitnode.steps import run_steps
from aitnode.store import RESOURCE_ERRORS, check_format, encode_tx_records
from aitnode.tx import parse_tx

SLICE = 256  # transactions applied between two chances for the reactor to run
# Seconds a block's timestamp may be ahead of the verifying node's clock
# (block timestamps are whole seconds since 1970): more is block_in_future.
MAX_FUTURE_DRIFT = 15


class TxBreaksBlock(Exception):
    """A transaction made building or storing a block fail, other than by
    breaking a rule (that is an AitError, and the builder leaves it out):
    the proposer drops it from the mempool with ``error`` as the reason."""

    def __init__(self, tx, error):
        super().__init__(error.message)
        self.tx = tx
        self.error = error


class _Inconclusive(Exception):
    pass


def _apply_in_build(ctx, tx):
    """apply_tx for a builder: an error that breaks no rule (a bug the
    transaction triggers; the view is then half written) is TxBreaksBlock."""
    try:
        return apply_tx(ctx, tx)
    except (AitError, *RESOURCE_ERRORS):
        raise
    except Exception as e:
        raise TxBreaksBlock(tx, AitError("tx_unprocessable", f"applying it raised {type(e).__name__}: {e}"))


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


class Chain:
    """The chain on one Store: genesis, head, and block application."""

    def __init__(self, store, genesis):
        self.store = store
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self._params_at = None
        self._params = None
        self._init_or_check()
        self._authorities = {a["address"]: bytes.fromhex(a["public_key"]) for a in genesis.authorities}
        self.authority_list = [a["address"] for a in genesis.authorities]

    def _init_or_check(self):
        store, g = self.store, self.genesis
        check_format(store)
        if store.is_empty():
            view = StateView(store, acc=0)
            for ns, key, value in g.entries:
                view.put(ns, key, value)
            acc, changes = view.finish()
            assert acc == g.acc
            block = {"header": g.header, "hash": g.hash, "sig": "", "txs": []}
            store.commit_block(block, [], changes, acc, genesis_hash=g.hash)
            return
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

    def is_authority(self, address):
        return address in self._authorities

    def head(self):
        return self.store.head()

    def head_header(self):
        height, h = self.store.head()
        return self.store.block_by_hash(h)["header"]

    def view(self):
        return StateView(self.store)

    def context(self, view, proposer=None, height=None, timestamp=None, params=None, attestations=None):
        """A BlockContext on view; with no height, the next block's (admission)."""
        if height is None:
            height = self.head()[0] + 1
        return BlockContext(self.chain_id, view, self._authorities, proposer, height, timestamp,
                            params=params, attestations=attestations)

    def block_entry(self, height):
        """A block with its whole transactions, as peers exchange it."""
        block = self.store.block_at(height)
        return {"block": block, "txs": [self.store.tx_record(h)["tx"] for h in block["txs"]]}

    def parse_stored_tx(self, wire):
        return parse_tx(wire, self.chain_id)

    # -- building ------------------------------------------------------------
    def build_block(self, candidates, key, timestamp, max_txs=None, attestations=None, max_bytes=None):
        """Apply candidates in order on the head; keep those that apply,
        up to the first that would pass max_txs or max_bytes (the params'
        by default; blocks.block_bytes): it and the rest stay pending.
        Returns (block, tx_records, view, failed) where failed maps the
        hash of each transaction left out as invalid to (tx, AitError).
        """
        return run_steps(self.build_steps(candidates, key, timestamp, max_txs, attestations, max_bytes=max_bytes))

    def build_steps(self, candidates, key, timestamp, max_txs=None, attestations=None, slice_size=SLICE,
                    max_bytes=None):
        """build_block as a generator yielding every slice_size transactions
        (run it with steps.run_steps, or run_steps_async to keep the reactor
        answering while a large block is built)."""
        parent = self.head_header()
        height = parent["height"] + 1
        timestamp = max(timestamp, parent["timestamp"])
        view = self.view()
        ctx = self.context(view, key.address, height, timestamp, attestations=attestations)
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
                result = _apply_in_build(ctx, tx)
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
        yield from view.finish_steps(slice_size)
        hashes = [tx.hash for tx in included]
        atts = {h: ctx.attestations[h] for h in hashes if h in ctx.attestations}
        header = {
            "chain_id": self.chain_id,
            "parent": self.store.hash_at(parent["height"]),
            "height": height,
            "timestamp": timestamp,
            "proposer": key.address,
            "tx_root": tx_root(hashes, atts),
            "state_root": view.root(),
        }
        h = block_hash(header)
        block = {"header": header, "hash": h, "sig": key.sign(bytes.fromhex(h)).hex(), "txs": hashes, "attestations": atts}
        tx_records = self._tx_records(block, records)
        encoded = []
        for i in range(0, len(tx_records), slice_size):
            encoded += encode_tx_records(tx_records[i:i + slice_size])
            yield
        return block, encoded, view, failed

    @staticmethod
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

    # -- verifying -----------------------------------------------------------
    def verify_block(self, block, txs, parent=None, view=None, now=None):
        """Check a block from elsewhere; return (block, tx_records, view) to commit.

        parent: the header it must extend (the head's by default); view:
        the state after parent (the head's by default).  txs are parsed
        Transactions whose signatures the caller checked.  now: the
        verifying node's time in seconds; a block stamped more than
        MAX_FUTURE_DRIFT after it raises AitError("block_in_future")
        (None: no upper bound).  Raises AitError("bad_block", ...) naming
        the first problem.
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
            raise AitError("block_in_future", f"block timestamp is more than {MAX_FUTURE_DRIFT} s ahead of this node's clock")
        h = self.check_signed_header(block)
        if [tx.hash for tx in txs] != block.get("txs", [tx.hash for tx in txs]):
            raise AitError("bad_block", "block transaction list does not match")
        atts = block.get("attestations") or {}
        # Only a claim carries an attestation: nothing else rides in the block.
        if type(atts) is not dict or not set(atts) <= {tx.hash for tx in txs if tx.type == "RECEIPT_CLAIM"}:
            raise AitError("bad_block", "block attestations do not belong to its claims")
        if tx_root([tx.hash for tx in txs], atts) != header["tx_root"]:
            raise AitError("bad_block", "tx_root does not match the transactions")
        if view is None:
            view = self.view()
        ctx = self.context(view, header["proposer"], header["height"], header["timestamp"], attestations=atts)
        _check_limits(txs, atts, ctx.params)
        records = []
        for tx in txs:
            try:
                records.append((tx, apply_tx(ctx, tx)))
            except AitError as e:
                raise AitError("bad_block", f"transaction {tx.hash} is invalid: {e.message}")
        finish_block(ctx)
        if view.root() != header["state_root"]:
            raise AitError("bad_block", "state_root does not match the state after the block")
        out = {"header": header, "hash": h, "sig": block["sig"], "txs": [tx.hash for tx in txs], "attestations": atts}
        return out, self._tx_records(out, records), view

    def check_signed_header(self, block):
        """The block's hash matches its header and its proposer, an
        authority, signed it; the hash.  Needs no state: a peer's branch is
        checked this far as it arrives."""
        header = block.get("header")
        if type(header) is not dict or set(header) != HEADER_FIELDS:
            raise AitError("bad_block", "block header fields are wrong")
        h = block_hash(header)
        if block.get("hash") not in (None, h):
            raise AitError("bad_block", "block hash does not match its header")
        pk = self._authorities.get(header["proposer"])
        if pk is None:
            raise AitError("bad_block", "block proposer is not an authority")
        try:
            sig = bytes.fromhex(block["sig"])
        except (KeyError, TypeError, ValueError):
            raise AitError("bad_block", "block sig is not hex")
        if not crypto.verify(pk, sig, bytes.fromhex(h)):
            raise AitError("bad_block", "block signature is not the proposer's")
        return h

    # -- committing ----------------------------------------------------------
    def commit(self, block, tx_records, view):
        acc, changes = view.finish()
        view.release()
        self.store.commit_block(block, tx_records, changes, acc)

    def rollback(self, height):
        """Undo blocks above height; the wire transactions they held, oldest first."""
        return self.store.rollback_to(height)

    def reorganise_steps(self, fork_height, branch, now=None):
        """Verify a competing branch that forks after fork_height, then switch
        to it in one write transaction.

        branch: [(block, txs)] in height order, txs parsed Transactions whose
        signatures the caller checked.  Nothing is written unless every
        block verifies (headers, signatures, tx roots and state roots, each
        on the state its parent left); a generator yielding between blocks,
        run with steps.run_steps or run_steps_async.  Returns (committed
        blocks, wire transactions of the blocks undone, oldest first).
        Raises AitError("bad_block", ...) for the first block that fails
        (now: as for verify_block).
        """
        head = self.head()
        if head[0] - fork_height > self.store.undo_depth():
            raise AitError("fork_too_deep", f"the fork is deeper than the {self.store.undo_depth()} blocks of undo data")
        overlay, acc = self.store.state_at(fork_height)
        parent = self.store.block_at(fork_height)["header"]
        if acc is None:  # no block above fork_height: the head's accumulator
            acc = self.store.accumulator()
        writes = []
        for block, txs in branch:
            yield
            view = StateView(self.store, acc=acc, overlay=overlay)
            checked, records, view = self.verify_block(block, txs, parent=parent, view=view, now=now)
            acc, changes = view.finish()
            view.release()
            for ident, (_, new) in changes.items():
                overlay[ident] = new
            writes.append((checked, encode_tx_records(records), changes, acc))
            parent = checked["header"]
        if self.head() != head:
            raise AitError("head_moved", "the head changed while the branch was checked", status=409)
        dropped = self.store.switch_branch(fork_height, writes)
        return [w[0] for w in writes], dropped


def commit_built_steps(chain, block, tx_records, view, candidates, key):
    """chain.commit of a block this node built from candidates.  When
    storing it fails and one of its transactions is to blame, raise
    TxBreaksBlock naming it (tx_unstorable), so the proposer drops it and
    goes on; otherwise raise what storing raised.  A generator like
    Chain.build_steps."""
    try:
        return chain.commit(block, tx_records, view)
    except RESOURCE_ERRORS:
        raise
    except Exception as e:
        error = e
    by_hash = {tx.hash: tx for tx in candidates}
    txs = [by_hash[h] for h in block["txs"]]
    culprit = yield from _find_unstorable_steps(
        chain, txs, key, block["header"]["timestamp"], block["attestations"])
    if culprit is None:
        raise error
    raise TxBreaksBlock(culprit, AitError(
        "tx_unstorable", f"a block holding it could not be stored: {type(error).__name__}: {error}"))


def _find_unstorable_steps(chain, txs, key, timestamp, attestations):
    """The first of txs whose block does not store while the block of those
    before it does; None when no transaction is to blame (the block without
    any fails too, or the whole block stores now) or the head moved.  Builds
    about log2(len(txs)) trial blocks, each a prefix of txs (a prefix of a
    valid block is valid: its transactions apply on the same state in the
    same order), and writes each in a write transaction that is aborted."""
    head = chain.head()

    def stores(n):
        block, records, view, failed = yield from chain.build_steps(
            txs[:n], key, timestamp, max_txs=n, attestations=attestations)
        acc, changes = view.finish()
        view.release()
        if failed or chain.head() != head:
            raise _Inconclusive()  # not the same block any more
        try:
            chain.store.try_commit(block, records, changes, acc)
        except RESOURCE_ERRORS:
            raise
        except Exception:
            return False
        return True

    try:
        if not (yield from stores(0)) or (yield from stores(len(txs))):
            return None
        good, bad = 0, len(txs)
        while bad - good > 1:
            mid = (good + bad) // 2
            if (yield from stores(mid)):
                good = mid
            else:
                bad = mid
    except _Inconclusive:
        return None
    return txs[bad - 1]
