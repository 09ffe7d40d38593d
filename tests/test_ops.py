"""Operations: promtool accepts the metrics and the alert rules (and their
unit tests), systemd-analyze the unit."""

import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aitnode.coordinator import MockCoordinator
from aitnode.metrics import EVIDENCE_KINDS, VOTE_RESULTS, Metrics
from aitnode.receipts import sign_claim
from aitnode.tx import sign_tx
from tests.common import (
    ALICE, BOB, CHAIN_ID, COORDINATOR, ESCROW, MINER, make_node, make_rpc, transfer, wire, built_node,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALERTS = os.path.join(ROOT, "etc", "prometheus", "aitnode-alerts.yml")
ALERT_TESTS = os.path.join(ROOT, "etc", "prometheus", "aitnode-alerts.test.yml")


def samples(text):
    """{series: value} of a metrics page."""
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                     if line and not line.startswith("#"))}


class _Attestor:
    def __init__(self, mock):
        self.mock = mock

    async def attest(self, request):
        return self.mock.attest(request)


def _tool(name):
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing; .ci/run installs it")
        raise SkipTest(f"{name} is not installed (CI installs it)")
    return path


class MetricsTests(SynchronousTestCase):
    def busy_node(self):
        """A node that has seen blocks, transfers, a receipt, refusals and requests."""
        node = make_node(self)
        node.admission.attestor = _Attestor(MockCoordinator(COORDINATOR, CHAIN_ID))
        rpc, http = make_rpc(node)
        root = http._agent._rootResource
        root.observe = rpc.observer()
        pay = transfer(ALICE, 1, ESCROW, 5000)
        self.successResultOf(http.post("http://n/rpc/sendTx", json=wire(pay)))
        self.successResultOf(http.post("http://n/rpc/sendTx", data=b"{not json"))
        self.successResultOf(http.get("http://n/rpc/getTx/" + "ab" * 32))
        node.pipeline.propose()
        claim = sign_tx(MINER, CHAIN_ID, "RECEIPT_CLAIM", 1, 1_000, sign_claim(
            MINER, CHAIN_ID, receipt_id="r1", job_id="job_7", client_addr=ALICE.address,
            miner_addr=MINER.address, compute_units=4, price=5000, output_hash="sha256:00",
            client_payment_tx=pay.hash))
        response = self.successResultOf(http.post("http://n/rpc/submitReceipt", json=wire(claim)))
        self.assertEqual(self.successResultOf(response.json()), {"txHash": claim.hash})
        node.pipeline.propose()
        node.admission.submit(wire(transfer(BOB, 1, ALICE, 1)))
        # what the finality code reports
        node.metrics.on_finality(2, 1)
        node.metrics.vote_event("sent")
        node.metrics.vote_event("received", 3)
        node.metrics.evidence_event("double_vote")
        response = self.successResultOf(http.get("http://n/rpc/metrics"))
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        return node, self.successResultOf(response.content()).decode()

    def test_metrics_values(self):
        node, text = self.busy_node()
        lines = samples(text)
        self.assertEqual(float(lines["aitnode_block_height"]), 2.0)
        self.assertEqual(float(lines["aitnode_mempool_size"]), 1.0)
        self.assertEqual(float(lines["aitnode_receipts_claimed_total"]), 1.0)
        self.assertEqual(float(lines["aitnode_minted_total"]), 4 * 1000.0)
        self.assertEqual(float(lines['aitnode_txs_total{result="included",type="TRANSFER"}']), 1.0)
        self.assertEqual(float(lines['aitnode_txs_total{result="refused",type="invalid"}']), 1.0)
        self.assertEqual(float(lines['aitnode_rpc_requests_total{code="404",route="/rpc/getTx/{tx_hash}"}']), 1.0)
        self.assertEqual(float(lines['aitnode_rpc_requests_total{code="400",route="/rpc/sendTx"}']), 1.0)
        self.assertEqual(float(lines["aitnode_block_txs_count"]), 2.0)
        self.assertEqual(float(lines["aitnode_sync_lag_blocks"]), 0.0)
        # Raw paths never become labels.
        self.assertNotIn("ab" * 32, text)
        self.assertEqual(lines["aitnode_justified_height"], 2.0)
        self.assertEqual(lines["aitnode_finalized_height"], 1.0)
        # The node's own votes (one per block it committed: 2) and the one counted by hand.
        self.assertEqual(lines['aitnode_votes_total{result="sent"}'], 3.0)
        self.assertEqual(lines['aitnode_votes_total{result="received"}'], 3.0)
        self.assertEqual(lines['aitnode_evidence_total{kind="double_vote"}'], 1.0)
        self.assertEqual(lines["aitnode_authority_key_conflict"], 0.0)
        self.assertEqual(lines["aitnode_p2p_enabled"], 0.0)  # make_node runs no peer service
        # The state tree: nodes stored, those a later height replaced, and
        # the lowest provable height (make_node keeps every height).
        counts = node.store.tree_counts()
        self.assertGreater(counts["tree"], 0)
        self.assertEqual(lines["aitnode_state_tree_nodes"], float(counts["tree"]))
        self.assertEqual(lines["aitnode_state_tree_stale_nodes"], float(counts["stale"]))
        self.assertEqual(lines["aitnode_state_tree_kept_from"], 0.0)

    def test_finality_metrics_exist_from_the_start(self):
        """Every label value shows 0 before anything happened, so alert
        rules and dashboards never meet a missing series."""
        m = Metrics()
        lines = samples(m.render().decode())
        for name in ("aitnode_justified_height", "aitnode_finalized_height", "aitnode_authority_key_conflict",
                     "aitnode_p2p_enabled", "aitnode_peers"):
            self.assertEqual(lines[name], 0.0, name)
        self.assertEqual(set(VOTE_RESULTS), {"sent", "received", "included", "refused", "conflict"})
        self.assertEqual(set(EVIDENCE_KINDS), {"double_proposal", "double_vote", "surround_vote"})
        for result in VOTE_RESULTS:
            self.assertEqual(lines[f'aitnode_votes_total{{result="{result}"}}'], 0.0, result)
        for kind in EVIDENCE_KINDS:
            self.assertEqual(lines[f'aitnode_evidence_total{{kind="{kind}"}}'], 0.0, kind)

    def test_finality_methods(self):
        m = Metrics()
        m.on_finality(7, 6)
        m.on_finality(9, 8)
        for result in VOTE_RESULTS:
            m.vote_event(result)
        m.vote_event("included", 4)
        for kind in EVIDENCE_KINDS:
            m.evidence_event(kind)
        m.evidence_event("surround_vote")
        m.key_conflict()
        m.key_conflict()
        m.watch_peers(lambda: 3)
        lines = samples(m.render().decode())
        self.assertEqual((lines["aitnode_justified_height"], lines["aitnode_finalized_height"]), (9.0, 8.0))
        self.assertEqual(lines['aitnode_votes_total{result="included"}'], 5.0)
        self.assertEqual(lines['aitnode_votes_total{result="conflict"}'], 1.0)
        self.assertEqual(lines['aitnode_evidence_total{kind="surround_vote"}'], 2.0)
        self.assertEqual(lines['aitnode_evidence_total{kind="double_proposal"}'], 1.0)
        self.assertEqual(lines["aitnode_authority_key_conflict"], 1.0)
        self.assertEqual((lines["aitnode_peers"], lines["aitnode_p2p_enabled"]), (3.0, 1.0))
        # Labels are a fixed set: a typo is a programming error, not a new series.
        self.assertRaises(KeyError, m.vote_event, "sent ")
        self.assertRaises(KeyError, m.evidence_event, "proposal")
        self.assertNotIn('kind="proposal"', m.render().decode())
        self.assertNotIn('result="sent "', m.render().decode())

    def test_a_node_with_p2p_says_so(self):
        """The no-peers alert needs to know which nodes run the peer service."""
        top = built_node(self, "[p2p]\nlisten = tcp:0:interface=127.0.0.1\n")
        lines = samples(top.node.metrics.render().decode())
        self.assertEqual((lines["aitnode_p2p_enabled"], lines["aitnode_peers"]), (1.0, 0.0))

    def test_promtool_check_metrics(self):
        promtool = _tool("promtool")
        _, text = self.busy_node()
        run = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
        self.assertEqual(run.returncode, 0, (run.stdout + run.stderr).decode())
        self.assertEqual((run.stdout + run.stderr).strip(), b"")


class AlertRulesTests(SynchronousTestCase):
    """etc/prometheus/aitnode-alerts.yml loads as it is, and its unit tests
    fire and clear every alert."""

    NAMES = {"AitnodeNoNewBlock", "AitnodeFinalityStalled", "AitnodeAuthorityKeyConflict", "AitnodeNoPeers",
             "AitnodeBehindPeers", "AitnodeEvidenceSeen"}

    def rules(self):
        import yaml

        with open(ALERTS) as f:
            doc = yaml.safe_load(f)
        return [rule for group in doc["groups"] for rule in group["rules"]]

    def test_promtool_check_rules(self):
        promtool = _tool("promtool")
        run = subprocess.run([promtool, "check", "rules", ALERTS], capture_output=True, timeout=60)
        out = (run.stdout + run.stderr).decode()
        self.assertEqual(run.returncode, 0, out)
        self.assertIn(f"SUCCESS: {len(self.NAMES)} rules found", out)

    def test_promtool_unit_tests(self):
        promtool = _tool("promtool")
        run = subprocess.run([promtool, "test", "rules", os.path.basename(ALERT_TESTS)],
                             cwd=os.path.dirname(ALERT_TESTS), capture_output=True, timeout=120)
        out = (run.stdout + run.stderr).decode()
        self.assertEqual(run.returncode, 0, out)
        self.assertIn("SUCCESS", out)

    def test_every_alert_is_complete_tested_and_documented(self):
        import yaml

        rules = self.rules()
        self.assertEqual({r["alert"] for r in rules}, self.NAMES)
        with open(ALERT_TESTS) as f:
            tests = yaml.safe_load(f)["tests"]
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        metrics = set(samples(Metrics().render().decode()))
        for rule in rules:
            name = rule["alert"]
            self.assertIn("for", rule, name)
            self.assertIn(rule["labels"]["severity"], ("critical", "warning"), name)
            self.assertTrue(rule["annotations"]["summary"].strip(), name)
            self.assertGreater(len(rule["annotations"]["description"]), 100, name)
            self.assertIn(f"`{name}`", readme, f"README does not explain {name}")
            # Every metric the rule reads is one the node exports.
            for metric in set(re.findall(r"\baitnode_[a-z0-9_]+", rule["expr"])):
                self.assertTrue(any(s == metric or s.startswith(metric + "{") for s in metrics), (name, metric))
            # The unit tests see it fire and, later, clear.
            checks = sorted(((_seconds(c["eval_time"]), bool(c.get("exp_alerts")))
                             for t in tests for c in t["alert_rule_test"] if c["alertname"] == name))
            fired = [at for at, firing in checks if firing]
            self.assertTrue(fired, f"{name} never fires in {ALERT_TESTS}")
            self.assertTrue(any(at > fired[0] and not firing for at, firing in checks),
                            f"{name} never clears after firing in {ALERT_TESTS}")


def _seconds(duration):
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+)([hms])", duration))


class SystemdTests(SynchronousTestCase):
    def test_unit_verifies(self):
        analyze = _tool("systemd-analyze")
        with open(os.path.join(ROOT, "etc", "systemd", "aitnode.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/opt/aitnode/venv/bin/twistd --nodaemon --pidfile= aitnode --config /etc/aitnode/node.ini", unit)
        for line in ("User=aitnode", "StateDirectory=aitnode", "Restart=on-failure", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "PrivateTmp=yes"):
            self.assertIn(line, unit)
        # The unit names where a deployment installs twistd; verify it with
        # this machine's twistd in that place, everything else unchanged.
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            twistd = shutil.which("twistd") or sys.executable
        tmp = self.mktemp()
        os.makedirs(tmp)
        path = os.path.join(tmp, "aitnode.service")
        with open(path, "w") as f:
            f.write(unit.replace("/opt/aitnode/venv/bin/twistd", twistd))
        run = subprocess.run([analyze, "verify", path], capture_output=True, timeout=60)
        out = (run.stdout + run.stderr).decode()
        self.assertEqual(run.returncode, 0, out)
        self.assertNotIn("aitnode.service", out, out)
