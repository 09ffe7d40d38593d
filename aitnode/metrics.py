"""Prometheus metrics for one node, in a registry of its own.

GET /rpc/metrics renders them with prometheus_client.generate_latest on
the reactor thread: the registry is small, so rendering takes well under
a millisecond and needs no thread pool.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
disable_created_metrics()  # no *_created samples: they double the output and help nobody here


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.block_height = Gauge("aitnode_block_height", "Height of the head block", registry=r)
        self.block_interval = Histogram(
            "aitnode_block_interval_seconds", "Seconds between consecutive blocks committed by this node",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60), registry=r)
        self.block_txs = Histogram(
            "aitnode_block_txs", "Transactions per committed block",
            buckets=(0, 1, 10, 100, 500, 1000, 2500, 5000, 10000), registry=r)
        self.mempool_size = Gauge("aitnode_mempool_size", "Transactions waiting in the mempool", registry=r)
        self.peers = Gauge("aitnode_peers", "Peers with a completed handshake", registry=r)
        self.txs = Counter("aitnode_txs", "Transactions seen, by type and result", ["type", "result"], registry=r)
        self.receipts = Counter("aitnode_receipts_claimed", "Compute receipts settled in committed blocks", registry=r)
        self.minted = Counter("aitnode_minted", "AIT minted in committed blocks (receipts and faucet)", registry=r)
        self.rpc_requests = Counter("aitnode_rpc_requests", "RPC requests by route template and status",
                                    ["route", "code"], registry=r)
        self.rpc_latency = Histogram(
            "aitnode_rpc_latency_seconds", "RPC request latency",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        self.sync_lag = Gauge(
            "aitnode_sync_lag_blocks",
            "Blocks between the head and the highest block header this node verified (signed by an authority, "
            "on a parent it holds); peers' claimed heights never count", registry=r)
        self._last_block_at = None
        self._tx_children = {}
        self._rpc_children = {}

    def tx_event(self, ttype, result):
        """Count one transaction; label children are cached (labels() is slow)."""
        child = self._tx_children.get((ttype, result))
        if child is None:
            child = self._tx_children[(ttype, result)] = self.txs.labels(ttype, result)
        child.inc()

    def render(self):
        return generate_latest(self.registry)

    def on_block(self, block, records, now):
        self.block_txs.observe(len(block["txs"]))
        if self._last_block_at is not None:
            self.block_interval.observe(max(0.0, now - self._last_block_at))
        self._last_block_at = now
        for _, rec in records:
            ttype = rec["tx"]["type"]
            self.tx_event(ttype, "included")
            minted = rec["result"].get("minted", 0)
            if minted:
                self.minted.inc(minted)
            if ttype == "RECEIPT_CLAIM":
                self.receipts.inc()

    def observe_request(self, route, code, seconds):
        child = self._rpc_children.get((route, code))
        if child is None:
            child = self._rpc_children[(route, code)] = self.rpc_requests.labels(route, str(code))
        child.inc()
        self.rpc_latency.observe(seconds)


class RouteTemplates:
    """Map request paths to the route templates of a Klein app.

    /rpc/getTx/abc... becomes /rpc/getTx/{tx_hash}; a path no route knows
    is "other", so labels stay bounded whatever clients send.
    """

    def __init__(self, klein_app, extra=()):
        self._exact = {path: path for path in extra}
        self._prefix = {}
        for rule in klein_app.url_map.iter_rules():
            text = rule.rule
            if "<" in text:
                prefix, _, arg = text.partition("<")
                self._prefix[prefix] = prefix + "{" + arg.rstrip(">").split(":")[-1] + "}"
            else:
                self._exact[text] = text

    def __call__(self, path):
        if path in self._exact:
            return self._exact[path]
        cut = path.rfind("/") + 1
        return self._prefix.get(path[:cut], "other") if cut else "other"
