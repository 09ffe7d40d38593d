"""Reorganisation: verify a competing branch on the state at its fork,
then switch to it in one LMDB write transaction if fork choice prefers it
(Chain.reorganise_steps; the one commit path for a branch)."""

from aitnode import consensus as C
from aitnode.errors import AitError
from aitnode.state import StateView
from aitnode.store import encode_tx_records

# The state-tree nodes a branch may write, held in memory until the
# switch: a peer's 64 MiB branch of transfers to new accounts could
# otherwise make a node hold gigabytes (each touched entry writes a leaf
# and a node per level of the tree).
MAX_BRANCH_TREE_BYTES = 256 * 1024 * 1024


def reorganise_steps(chain, fork_height, branch, now=None):
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

    Fork choice: the branch is switched to only if, verified, it is
    better than the node's chain: a higher justified block, then a
    greater height, then a lower head hash (AitError "branch_not_better"
    otherwise).  A finalized block is never reverted: a branch forking
    below the node's finalized block is refused ("fork_below_finalized").
    """
    head = chain.head()
    ours = chain.finality()
    if fork_height < ours.finalized.height:
        raise AitError("fork_below_finalized",
                       f"the branch forks at {fork_height}, below the finalized block {ours.finalized.height}")
    if head[0] - fork_height > chain.store.undo_depth():
        raise AitError("fork_too_deep", f"the fork is deeper than the {chain.store.undo_depth()} blocks of undo data")
    overlay, base = chain.store.state_at(fork_height)
    parent = chain.store.block_at(fork_height)["header"]
    writes = []
    tree_bytes = 0
    for block, txs in branch:
        yield
        view = StateView(chain.store, base=base, overlay=overlay)
        checked, records, view = chain.verify_block(block, txs, parent=parent, view=view, now=now)
        tree, changes = view.finish()
        view.release()
        for ident, (_, new) in changes.items():
            overlay[ident] = new
        tree_bytes += sum(len(k) + len(v) for k, v in tree.nodes.items())
        if tree_bytes > MAX_BRANCH_TREE_BYTES:
            raise AitError("branch_too_big", f"the branch writes more than {MAX_BRANCH_TREE_BYTES >> 20} MiB "
                           f"of state tree before block {checked['header']['height']}; it is not switched to")
        base = base.after(tree)
        writes.append((checked, encode_tx_records(records), changes, tree))
        parent = checked["header"]
    if chain.head() != head:
        raise AitError("head_moved", "the head changed while the branch was checked", status=409)
    theirs = chain.finality(StateView(chain.store, base=base, overlay=overlay))
    tip = writes[-1][0] if writes else None
    if tip is None or not C.better((theirs.justified.height, tip["header"]["height"], tip["hash"]),
                                  (ours.justified.height, head[0], head[1])):
        raise AitError("branch_not_better", "the branch is not better than this node's chain (fork choice)")
    if theirs.finalized.height < ours.finalized.height:  # it holds our finalized block, not the votes
        chain.store.set_meta(finalized=list(ours.finalized))  # on both chains: harmless if we crash here
    dropped = chain.store.switch_branch(fork_height, writes)
    return [w[0] for w in writes], dropped
