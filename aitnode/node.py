"""The node's core objects, and the one function that composes them.

``compose`` builds Store, LocalStore, Chain, Mempool, Admission,
BlockPipeline and Queries and wires them together by constructor
injection.  twistd (tap.build), the test fixtures and the benchmarks all
call it, so each runs the same node.  The network and HTTP shells (p2p,
rpc, web) are composed around a Node by tap.
"""

from aitnode.admission import Admission
from aitnode.chain import Chain
from aitnode.errors import ConfigError
from aitnode.local import LocalStore
from aitnode.mempool import Mempool
from aitnode.metrics import Metrics
from aitnode.pipeline import BlockPipeline
from aitnode.pruner import Pruner
from aitnode.queries import Queries
from aitnode.store import Store
from aitnode.verifier import InlineVerifier
from aitnode.voting import Ballot


class Node:
    """One node's parts (see compose); nothing here but references."""

    def __init__(self, **parts):
        self.__dict__.update(parts)

    @property
    def is_proposer(self):
        return self.pipeline.is_proposer


def compose(data_dir, genesis, clock, key=None, verifier=None, mempool=None, attestor=None,
            metrics=None, pause=None, map_size=1 << 34, state_history=256, tree_worker=None):
    """A Node on data_dir (opened, or made from genesis).

    clock: the reactor or a Clock; key: an authority KeyPair (ignored
    unless genesis lists it); pause: cooperate.pause_for(reactor) to slice
    long work, None to do it in one go; state_history: blocks below the
    finalized one whose state tree is kept (None: all); tree_worker: a
    treeworker.TreeWorker on data_dir for the proposer's tree updates
    (None: in process).  Raises ConfigError.
    """
    store = Store(data_dir, map_size=map_size)
    try:
        chain = Chain(store, genesis, state_history=state_history)
    except ConfigError:
        store.close()
        raise
    local = LocalStore(store)
    mempool = mempool if mempool is not None else Mempool()
    verifier = verifier if verifier is not None else InlineVerifier()
    metrics = metrics if metrics is not None else Metrics()
    key = key if key is not None and chain.is_authority(key.address) else None
    admission = Admission(chain, mempool, verifier, metrics, local, attestor=attestor, key=key, pause=pause)
    ballot = Ballot(chain, local, metrics, key=key)
    pipeline = BlockPipeline(chain, mempool, admission, verifier, local, metrics, clock, key=key, ballot=ballot)
    if tree_worker is not None:
        pipeline.tree_jobs = tree_worker.run
    ballot.attach(pipeline)
    queries = Queries(chain, mempool, local)
    pruner = Pruner(chain, clock)
    pipeline.block_listeners.append(pruner.on_block)
    metrics.mempool_size.set_function(lambda: len(mempool))
    metrics.block_height.set_function(lambda: chain.head()[0])
    metrics.tree_nodes.set_function(lambda: store.tree_counts()["tree"])
    metrics.tree_stale.set_function(lambda: store.tree_counts()["stale"])
    metrics.tree_kept_from.set_function(store.tree_kept_from)
    metrics.sync_lag.set_function(lambda: max(0, pipeline.best_verified_height - chain.head()[0]))
    return Node(
        store=store, local=local, chain=chain, mempool=mempool, verifier=verifier, metrics=metrics,
        admission=admission, pipeline=pipeline, queries=queries, ballot=ballot, key=key,
        clock=clock, chain_id=chain.chain_id, pause=pause, pruner=pruner, tree_worker=tree_worker,
    )
