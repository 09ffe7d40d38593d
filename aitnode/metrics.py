"""Prometheus metrics for one node, in a registry of its own.

GET /rpc/metrics renders them with prometheus_client.generate_latest on
the reactor thread: the registry is small, so rendering takes well under
a millisecond and needs no thread pool.

Finality and evidence (issue 10) are fed by the node through
:meth:`Metrics.on_finality`, :meth:`Metrics.vote_event`,
:meth:`Metrics.evidence_event` and :meth:`Metrics.key_conflict`; every
label value exists from the start (at 0), so alert rules and dashboards
never meet a missing series.  etc/prometheus/aitnode-alerts.yml holds the
alert rules built on these metrics.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aitnode.evidence import DOUBLE_PROPOSAL
from aitnode.finality import DOUBLE_VOTE, SURROUND_VOTE

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
disable_created_metrics()  # no *_created samples: they double the output and help nobody here

# aitnode_votes_total{result}: what happened to a finality vote.
VOTE_RESULTS = (
    "sent",  # this node signed a vote and sent it to its peers
    "received",  # a valid vote from a peer, taken into the vote pool
    "included",  # a vote carried by a block this node committed
    "refused",  # a vote refused: bad format or signature, not an authority, jailed, stale
    "conflict",  # a vote that breaks a voting rule with one the node holds (it becomes evidence)
)
# aitnode_evidence_total{kind}: the offence (evidence.Evidence.offence).
EVIDENCE_KINDS = (DOUBLE_PROPOSAL, DOUBLE_VOTE, SURROUND_VOTE)
# aitnode_p2p_received_{messages,bytes}_total{type}: peer messages by type
# (p2p.peers and p2p.wire); any other type a peer sends counts as "other".
P2P_TYPES = ("hello", "auth", "reject", "status", "tx", "block", "get_blocks", "blocks", "vote", "evidence", "other")


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
        self.tree_nodes = Gauge("aitnode_state_tree_nodes", "State tree nodes stored (every kept height)", registry=r)
        self.tree_stale = Gauge("aitnode_state_tree_stale_nodes",
                                "State tree nodes replaced by a later height, kept until pruned", registry=r)
        self.tree_kept_from = Gauge("aitnode_state_tree_kept_from",
                                    "Lowest height whose state can still be proven (getProof)", registry=r)
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
        self.p2p_enabled = Gauge("aitnode_p2p_enabled", "1 when this node runs the peer service ([p2p] listen)",
                                 registry=r)
        self.justified_height = Gauge(
            "aitnode_justified_height", "Height of the latest justified block on this node's head chain", registry=r)
        self.finalized_height = Gauge(
            "aitnode_finalized_height", "Height of the latest finalized block on this node's head chain", registry=r)
        self.votes = Counter("aitnode_votes", "Finality votes by what happened to them: " + ", ".join(VOTE_RESULTS),
                             ["result"], registry=r)
        self.evidence = Counter(
            "aitnode_evidence", "Evidence of misbehaviour this node learned of, once per evidence id, by offence",
            ["kind"], registry=r)
        self.authority_key_conflict = Gauge(
            "aitnode_authority_key_conflict",
            "1 once this node saw a block or vote signed with its authority key that it did not make "
            "(another node is using the key); it stops signing until restarted", registry=r)
        self.p2p_messages = Counter(
            "aitnode_p2p_received_messages", "Peer messages received (decoded frames), by message type", ["type"],
            registry=r)
        self.p2p_bytes = Counter(
            "aitnode_p2p_received_bytes", "Bytes of the peer messages received (WebSocket payloads), by message type",
            ["type"], registry=r)
        self._last_block_at = None
        self._tx_children = {}
        self._rpc_children = {}
        self._vote_children = {result: self.votes.labels(result) for result in VOTE_RESULTS}
        self._evidence_children = {kind: self.evidence.labels(kind) for kind in EVIDENCE_KINDS}
        self._p2p_children = {t: (self.p2p_messages.labels(t), self.p2p_bytes.labels(t)) for t in P2P_TYPES}

    def watch_peers(self, count):
        """The node runs the peer service; count() is its number of peers."""
        self.peers.set_function(count)
        self.p2p_enabled.set(1)

    def on_finality(self, justified_height, finalized_height):
        """The head chain's latest justified and finalized heights (call at
        start-up and whenever the head changes)."""
        self.justified_height.set(justified_height)
        self.finalized_height.set(finalized_height)

    def vote_event(self, result, n=1):
        """Count n votes with one of VOTE_RESULTS (KeyError for any other:
        labels stay a fixed set)."""
        self._vote_children[result].inc(n)

    def evidence_event(self, kind):
        """Count one new piece of evidence; kind is one of EVIDENCE_KINDS
        (evidence.Evidence.offence), KeyError for any other."""
        self._evidence_children[kind].inc()

    def key_conflict(self):
        """Another node signs with this node's authority key: set the gauge
        (it stays 1 until the node restarts)."""
        self.authority_key_conflict.set(1)

    def p2p_received(self, mtype, nbytes):
        """Count one peer message of nbytes (its frame's payload)."""
        messages, size = self._p2p_children.get(mtype) or self._p2p_children["other"]
        messages.inc()
        size.inc(nbytes)

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
