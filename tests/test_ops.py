"""Operations: promtool accepts the metrics, systemd-analyze the unit."""

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aitnode.coordinator import MockCoordinator
from aitnode.receipts import sign_claim
from aitnode.tx import sign_tx
from tests.common import (
    ALICE, BOB, CHAIN_ID, COORDINATOR, ESCROW, MINER, make_node, make_rpc, transfer, wire,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        response = self.successResultOf(http.get("http://n/rpc/metrics"))
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        return node, self.successResultOf(response.content()).decode()

    def test_metrics_values(self):
        node, text = self.busy_node()
        lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
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

    def test_promtool_check_metrics(self):
        promtool = _tool("promtool")
        _, text = self.busy_node()
        run = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
        self.assertEqual(run.returncode, 0, (run.stdout + run.stderr).decode())
        self.assertEqual((run.stdout + run.stderr).strip(), b"")


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
