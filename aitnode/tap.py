"""`twistd aitnode --config FILE`: options and the service tree.

Everything that must hold before the node serves (config, genesis, key,
LMDB, the chain's genesis block) is done synchronously in makeService, so
a node that cannot start says why in one line and exits before listening.
"""

import os
import sys

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.web import resource

from aitnode.attest import Attestor
from aitnode.chain import Chain, Genesis
from aitnode.coordinator import MockCoordinator
from aitnode.config import load_config
from aitnode.crypto import KeyPair
from aitnode.errors import ConfigError
from aitnode.logs import make_observer
from aitnode.mempool import Mempool
from aitnode import page
from aitnode.node import Node
from aitnode.p2p import P2P
from aitnode.proposer import ProposerService
from aitnode.ratelimit import RateLimiter
from aitnode.rpc import RPC
from aitnode.state import Store
from aitnode.verifier import InlineVerifier, PoolVerifier
from aitnode.web import connection_cap, make_site, open_files_limit


class Options(usage.Options):
    synopsis = "--config FILE"
    optParameters = [["config", "c", None, "path to the node's ini file (see etc/node.ini)"]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


class ListenService(service.Service):
    """Listen on an endpoint string; log the address once listening."""

    _log = Logger()

    def __init__(self, reactor, description, factory, name):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.name = name
        self.port = None

    def startService(self):
        super().startService()
        d = serverFromString(self.reactor, self.description).listen(self.factory)

        def listening(port):
            self.port = port
            addr = port.getHost()
            self._log.info(
                "{name} listening on http://{host}:{port}",
                name=self.name, host=addr.host, port=addr.port,
                component="node", event="listening",
            )

        def failed(f):
            self._log.failure("cannot listen on {description}", f, description=self.description,
                              component="node", event="listen_failed")
            self.reactor.callLater(0, self.reactor.stop)

        d.addCallbacks(listening, failed)
        return d

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class NodeService(service.MultiService):
    """The node's own lifecycle: restore and save the mempool, close LMDB."""

    _log = Logger()

    def __init__(self, node, store, verifier):
        super().__init__()
        self.node = node
        self.store = store
        self.verifier = verifier

    log_observer = None

    def setServiceParent(self, parent):
        # Under twistd the parent is the Application: offer it our log
        # observer (JSON lines or text, with the configured level), which
        # twistd uses unless --logger names another.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def startService(self):
        self.verifier.start()
        restored = self.node.restore_mempool()
        height, head = self.node.chain.head()
        self._log.info(
            "node started chain={chain} height={height} head={head} proposer={proposer} restored={restored}",
            chain=self.node.chain_id, height=height, head=head, proposer=self.node.is_proposer,
            restored=restored, component="node", event="start",
        )
        super().startService()

    def stopService(self):
        d = service.MultiService.stopService(self)

        def save(result):
            if self.node.attestor is not None:
                self.node.attestor.close()
            self.node.save_mempool()
            self.verifier.stop()
            self._log.info("node stopped, mempool of {n} saved", n=len(self.node.mempool),
                           component="node", event="stop")
            self.store.close()
            return result

        d.addBoth(save)
        return d


def node_key(data_dir):
    """The node's own identity key for peers (made on first start)."""
    path = os.path.join(data_dir, "node_key.json")
    if not os.path.exists(path):
        KeyPair.generate().save(path)
    return KeyPair.load(path)


def build(cfg, reactor):
    """The service tree for a Config (raises ConfigError)."""
    genesis = Genesis.load(cfg.node.genesis)
    if genesis.chain_id != cfg.node.chain_id:
        raise ConfigError(
            f"[node] chain_id is {cfg.node.chain_id!r} but genesis {cfg.node.genesis} is for {genesis.chain_id!r}"
        )
    key = KeyPair.load(cfg.node.key) if cfg.node.key else None
    admin_token = None
    if cfg.rpc.admin_token_file:
        try:
            with open(cfg.rpc.admin_token_file) as f:
                admin_token = f.read().strip()
        except OSError as e:
            raise ConfigError(f"cannot read [rpc] admin_token_file {cfg.rpc.admin_token_file}: {e.strerror}")
        if len(admin_token) < 16:
            raise ConfigError(f"[rpc] admin_token_file {cfg.rpc.admin_token_file} must hold a token of 16 or more characters")
    store = Store(cfg.node.data_dir, map_size=cfg.node.map_size)
    try:
        chain = Chain(store, genesis)
    except ConfigError:
        store.close()
        raise
    if cfg.verifier.workers > 0:
        verifier = PoolVerifier(reactor, workers=cfg.verifier.workers)
    else:
        verifier = InlineVerifier()
    mempool = Mempool(max_size=cfg.mempool.max_size, max_per_sender=cfg.mempool.max_per_sender)
    attestor = None
    if cfg.coordinator.url:
        attestor = Attestor(
            reactor, cfg.coordinator.url, cfg.coordinator.allow,
            timeout=cfg.coordinator.timeout, max_in_flight=cfg.coordinator.max_in_flight,
        )
    mock = None
    if cfg.coordinator.serve_mock:
        if not cfg.coordinator.mock_key:
            raise ConfigError("[coordinator] serve_mock needs [coordinator] mock_key (the coordinator's key file)")
        mock = MockCoordinator(KeyPair.load(cfg.coordinator.mock_key), genesis.chain_id)
    node = Node(chain, mempool, verifier, key=key, clock=reactor, attestor=attestor)
    node.pause = lambda: deferLater(reactor, 0, lambda: None)

    top = NodeService(node, store, verifier)
    top.log_observer = make_observer(cfg.log.format, cfg.log.level)
    rpc = RPC(
        node, admin_token=admin_token, max_body=cfg.rpc.max_body_bytes,
        max_batch_bytes=cfg.rpc.max_batch_bytes, max_batch_items=cfg.rpc.max_batch_items,
        mock_coordinator=mock,
        limiter=RateLimiter(reactor, cfg.ratelimit.rate, cfg.ratelimit.burst),
    )
    max_connections = connection_cap(cfg.rpc.max_connections, open_files_limit())
    if max_connections < cfg.rpc.max_connections:
        Logger().warn("[rpc] max_connections lowered from {configured} to {cap} to stay under the open-files limit",
                      configured=cfg.rpc.max_connections, cap=max_connections, component="rpc", event="config")
    site, root = make_site(
        rpc.resource(), cfg.rpc.max_body_bytes, reactor, body_limits=rpc.body_limits(),
        request_deadline=cfg.rpc.request_deadline, max_connections=max_connections,
    )
    root.observe = rpc.observer()
    root.fast.update(rpc.fast_routes())
    page.install(root)  # the client page: GET / and /static/*
    ListenService(reactor, cfg.rpc.listen, site, "rpc").setServiceParent(top)
    if cfg.p2p.listen:
        p2p = P2P(node, node_key(cfg.node.data_dir), reactor, peers=cfg.p2p.peers)
        p2p.setServiceParent(top)
        root = resource.Resource()
        root.putChild(b"p2p", p2p.resource())
        # No connection cap here: peers' WebSocket upgrades leave HTTP (p2p bounds its peers).
        p2p_site, _ = make_site(root, 1024, reactor, request_deadline=cfg.rpc.request_deadline)
        ListenService(reactor, cfg.p2p.listen, p2p_site, "p2p").setServiceParent(top)
        rpc.p2p = p2p
        top.p2p = p2p
        node.metrics.peers.set_function(lambda: len(p2p.conns))
    elif cfg.p2p.peers:
        raise ConfigError("[p2p] peers needs [p2p] listen (the node's own peer address)")
    if node.is_proposer:
        ProposerService(node, reactor, cfg.proposer.interval, pause=node.pause).setServiceParent(top)
    top.node, top.rpc, top.site = node, rpc, site
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
