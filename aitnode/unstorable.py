"""Transactions that make a block fail to build or store without breaking
a rule (a node bug, or data LMDB cannot hold): find the one to blame, so
the proposer drops it and the chain goes on.  See pipeline._propose_steps.
"""

from aitnode.errors import AitError
from aitnode.rules import apply_tx
from aitnode.store import RESOURCE_ERRORS


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


def apply_in_build(ctx, tx):
    """apply_tx for a builder: an error that breaks no rule (a bug the
    transaction triggers; the view is then half written) is TxBreaksBlock."""
    try:
        return apply_tx(ctx, tx)
    except (AitError, *RESOURCE_ERRORS):
        raise
    except Exception as e:
        raise TxBreaksBlock(tx, AitError("tx_unprocessable", f"applying it raised {type(e).__name__}: {e}"))


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
        tree, changes = view.finish()
        view.release()
        if failed or chain.head() != head:
            raise _Inconclusive()  # not the same block any more
        try:
            chain.store.try_commit(block, records, changes, tree)
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
