"""The one-command devnet: real processes, receipts minting, clean Ctrl-C."""

import os
import re
import signal
import socket
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.procs import REPO_ROOT, _NodeProtocol, get, inline, stop_process, twistd_environ, wait_for


def free_ports(n):
    """n distinct loopback ports that were free a moment ago."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class DevnetTests(TestCase):
    timeout = 150
    verbose = False

    @inline
    async def test_devnet_mints_and_stops_cleanly(self):
        state = os.path.abspath(self.mktemp())
        # The devnet takes a base port and uses +1 and +10 from it.
        base = None
        for _ in range(20):
            a, b = free_ports(2)
            if all(_free(p) for p in (a, a + 1, a + 10, b, b + 1)):
                base, p2p = a, b
                break
        self.assertIsNotNone(base, "no free ports")
        proto = _NodeProtocol(self)
        argv = [sys.executable, "-m", "aitnode.devnet", "--state", state, "--port", str(base),
                "--p2p-port", str(p2p), "--interval", "0.3", "--miner-interval", "0.1"]
        reactor.spawnProcess(proto, sys.executable, argv, env=twistd_environ(), path=REPO_ROOT)
        # SIGTERM, like Ctrl-C, so the devnet stops its children too (SIGKILL
        # would orphan them); stop_process escalates if that hangs.
        self.addCleanup(stop_process, proto, signal.SIGTERM)

        def out():
            return (bytes(proto.out) + bytes(proto.err)).decode("utf-8", "replace")

        await wait_for(lambda: "devnet is up" in out() or proto.done, timeout=60, message=lambda: out())
        self.assertIn(f"http://127.0.0.1:{base}/", out())
        follower = f"http://127.0.0.1:{base + 1}"

        async def minted():
            status, supply = await get(follower + "/rpc/getSupply")
            return status == 200 and supply["receipts"] > 0

        await wait_for(minted, timeout=60, message=lambda: "a receipt to mint:\n" + out())
        # and the miner reports what it earned
        await wait_for(lambda: re.search(r"\[miner\] job_\d+: block \d+ minted 10000", out()), timeout=30,
                       message=lambda: "the miner's report:\n" + out())
        _, head_a = await get(f"http://127.0.0.1:{base}/rpc/getHead")
        _, block = await get(follower + f"/rpc/getBlock/{head_a['height']}")
        self.assertEqual(block["hash"], head_a["hash"])  # the follower follows

        proto.transport.signalProcess("INT")  # Ctrl-C
        await wait_for(lambda: proto.done, timeout=40, message=lambda: "the devnet to stop:\n" + out())
        logs = os.path.join(state, "logs")
        for name in ("authority", "follower"):
            with open(os.path.join(logs, f"{name}.log")) as f:
                self.assertRegex(f.read(), r"node stopped, mempool of \d+ saved")
        self.assertFalse(_listening(base) or _listening(base + 1) or _listening(base + 10))


def _free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _listening(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        return s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        s.close()

