"""`twistd aitnode --config FILE`: options and the service tree.

Everything that must hold before the node serves (config, genesis, key,
LMDB, the chain's genesis block) is done synchronously in makeService, so
a node that cannot start says why in one line and exits before listening.
"""

import os
import sys

from twisted.application import service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.web import resource

from aitnode import page
from aitnode.attest import Attestor
from aitnode.config import load_config
from aitnode.cooperate import pause_for
from aitnode.coordinator import MockCoordinator
from aitnode.crypto import KeyPair
from aitnode.errors import ConfigError
from aitnode.genesis import Genesis
from aitnode.listen import listen_service
from aitnode.logs import make_observer
from aitnode.mempool import Mempool
from aitnode.node import compose
from aitnode.p2p import P2P
from aitnode.proposer import ProposerService
from aitnode.ratelimit import RateLimiter
from aitnode.rpc import RPC
from aitnode.treeworker import TreeWorker
from aitnode.verifier import InlineVerifier, PoolVerifier
from aitnode.web import connection_cap, make_site, make_web_server, open_files_limit


class Options(usage.Options):
    synopsis = "--config FILE"
    optParameters = [["config", "c", None, "path to the node's ini file (see etc/node.ini)"]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


class NodeService(service.MultiService):
    """The node's own lifecycle: restore and save the mempool, close LMDB."""

    _log = Logger()

    def __init__(self, node, site, log_observer=None):
        """site: the RPC Site (kept for tests that serve it in process)."""
        super().__init__()
        self.node = node
        self.site = site
        self.log_observer = log_observer

    def setServiceParent(self, parent):
        # Under twistd the parent is the Application: offer it our log
        # observer (JSON lines or text, with the configured level), which
        # twistd uses unless --logger names another.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    _node_started = False

    def _start_node(self):
        # Before any listener: twistd runs privilegedStartService (where
        # StreamServerEndpointService listens) before startService, and the
        # "listening" line must mean the mempool is back.
        if self._node_started:
            return
        self._node_started = True
        self.node.verifier.start()
        if self.node.tree_worker is not None:
            self.node.tree_worker.start()
        restored = self.node.admission.restore_mempool()
        height, head = self.node.chain.head()
        self._log.info(
            "node started chain={chain} height={height} head={head} proposer={proposer} restored={restored}",
            chain=self.node.chain_id, height=height, head=head, proposer=self.node.is_proposer,
            restored=restored, component="node", event="start",
        )

    def privilegedStartService(self):
        self._start_node()
        super().privilegedStartService()

    def startService(self):
        self._start_node()
        super().startService()

    def stopService(self):
        d = service.MultiService.stopService(self)

        def save(result):
            if self.node.admission.attestor is not None:
                self.node.admission.attestor.close()
            self.node.admission.save_mempool()
            self.node.verifier.stop()
            self.node.pruner.stop()
            if self.node.tree_worker is not None:
                self.node.tree_worker.stop()
            self._log.info("node stopped, mempool of {n} saved", n=len(self.node.mempool),
                           component="node", event="stop")
            self.node.store.close()
            return result

        d.addBoth(save)
        return d


def node_key(data_dir):
    """The node's own identity key for peers (made on first start)."""
    path = os.path.join(data_dir, "node_key.json")
    if not os.path.exists(path):
        KeyPair.generate().save(path)
    return KeyPair.load(path)


def read_admin_token(path):
    if not path:
        return None
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read [rpc] admin_token_file {path}: {e.strerror}")
    if len(token) < 16:
        raise ConfigError(f"[rpc] admin_token_file {path} must hold a token of 16 or more characters")
    return token


def build(cfg, reactor):
    """The service tree for a Config (raises ConfigError)."""
    genesis = Genesis.load(cfg.node.genesis)
    if genesis.chain_id != cfg.node.chain_id:
        raise ConfigError(
            f"[node] chain_id is {cfg.node.chain_id!r} but genesis {cfg.node.genesis} is for {genesis.chain_id!r}"
        )
    key = KeyPair.load(cfg.node.key) if cfg.node.key else None
    admin_token = read_admin_token(cfg.rpc.admin_token_file)
    mock = None
    if cfg.coordinator.serve_mock:
        if not cfg.coordinator.mock_key:
            raise ConfigError("[coordinator] serve_mock needs [coordinator] mock_key (the coordinator's key file)")
        mock = MockCoordinator(KeyPair.load(cfg.coordinator.mock_key), genesis.chain_id)
    if cfg.p2p.peers and not cfg.p2p.listen:
        raise ConfigError("[p2p] peers needs [p2p] listen (the node's own peer address)")
    attestor = None
    if cfg.coordinator.url:
        attestor = Attestor(
            reactor, cfg.coordinator.url, cfg.coordinator.allow,
            timeout=cfg.coordinator.timeout, max_in_flight=cfg.coordinator.max_in_flight,
        )
    verifier = PoolVerifier(reactor, workers=cfg.verifier.workers) if cfg.verifier.workers > 0 else InlineVerifier()
    node = compose(
        cfg.node.data_dir, genesis, reactor, key=key, verifier=verifier, attestor=attestor,
        mempool=Mempool(max_size=cfg.mempool.max_size, max_per_sender=cfg.mempool.max_per_sender),
        pause=pause_for(reactor), map_size=cfg.node.map_size, state_history=cfg.node.state_history,
        tree_worker=TreeWorker(reactor, cfg.node.data_dir) if cfg.node.tree_worker else None,
    )
    p2p = None
    if cfg.p2p.listen:
        p2p = P2P(node, node_key(cfg.node.data_dir), reactor, peers=cfg.p2p.peers)
        node.metrics.watch_peers(lambda: len(p2p.conns))
    rpc = RPC(
        node, admin_token=admin_token, max_body=cfg.rpc.max_body_bytes,
        max_batch_bytes=cfg.rpc.max_batch_bytes, max_batch_items=cfg.rpc.max_batch_items,
        mock_coordinator=mock, p2p=p2p,
        limiter=RateLimiter(reactor, cfg.ratelimit.rate, cfg.ratelimit.burst),
    )
    max_connections = connection_cap(cfg.rpc.max_connections, open_files_limit())
    if max_connections < cfg.rpc.max_connections:
        Logger().warn("[rpc] max_connections lowered from {configured} to {cap} to stay under the open-files limit",
                      configured=cfg.rpc.max_connections, cap=max_connections, component="rpc", event="config")
    site = make_web_server(rpc, reactor, extra=page.children(), request_deadline=cfg.rpc.request_deadline,
                           max_connections=max_connections)

    top = NodeService(node, site, make_observer(cfg.log.format, cfg.log.level))
    listen_service(reactor, cfg.rpc.listen, site, "rpc").setServiceParent(top)
    if p2p is not None:
        p2p.setServiceParent(top)
        p2p_root = resource.Resource()
        p2p_root.putChild(b"p2p", p2p.resource())
        # No connection cap here: peers' WebSocket upgrades leave HTTP (p2p bounds its peers).
        p2p_site = make_site(p2p_root, 1024, reactor, request_deadline=cfg.rpc.request_deadline)
        listen_service(reactor, cfg.p2p.listen, p2p_site, "p2p").setServiceParent(top)
    if node.is_proposer:
        ProposerService(node.pipeline, reactor, cfg.proposer.interval, pause=node.pause).setServiceParent(top)
    return top


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    try:
        cfg = load_config(options["config"])
        return build(cfg, reactor)
    except ConfigError as e:
        print(f"aitnode: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1)
