"""The one-command devnet: real processes, receipts minting, clean Ctrl-C,
several authorities taking turns."""

import contextlib
import io
import json
import os
import re
import signal
import socket
import stat
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aitnode import devnet
from aitnode.crypto import KeyPair
from aitnode.errors import ConfigError
from aitnode.genesis import Genesis
from tests.procs import REPO_ROOT, _NodeProtocol, get, inline, stop_process, twistd_environ, wait_for

DEVNET_AUTHORITY = os.path.join(REPO_ROOT, "etc", "devnet", "authority.key.json")


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


class LayoutTests(SynchronousTestCase):
    """Keys, genesis and ports of a devnet of N authorities (no processes)."""

    def test_the_banner_says_where_the_genesis_is(self):
        # ait verify needs it (README: Verify without trusting the node).
        text = devnet.banner(devnet.Layout(1, 8080, 7070), "/tmp/st", "/tmp/st/logs")
        self.assertIn("  genesis          /tmp/st/genesis.json   (ait verify balance|tx|receipt ... --genesis it)\n",
                      text)

    def test_keys_are_made_once_and_kept(self):
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        self.assertEqual(devnet.authority_keys(state, 1), [DEVNET_AUTHORITY])
        self.assertFalse(os.path.exists(os.path.join(state, "keys")), "one authority makes no key")
        paths = devnet.authority_keys(state, 3)
        self.assertEqual(paths[0], DEVNET_AUTHORITY)
        self.assertEqual(paths[1:], [os.path.join(state, "keys", f"authority{k}.key.json") for k in (2, 3)])
        for path in paths[1:]:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(state, "keys")).st_mode), 0o700)
        keys = [KeyPair.load(p).address for p in paths]
        self.assertEqual(len(set(keys)), 3)
        self.assertEqual([KeyPair.load(p).address for p in devnet.authority_keys(state, 3)], keys)

    def test_genesis_lists_the_authorities_and_is_kept(self):
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        paths = devnet.authority_keys(state, 3)
        path = devnet.devnet_genesis(state, paths, 1.0)
        self.assertEqual(path, os.path.join(state, "genesis.json"))
        with open(path) as f:
            doc = json.load(f)
        with open(os.path.join(REPO_ROOT, "genesis.json")) as f:
            repo = json.load(f)
        g = Genesis(doc)
        self.assertEqual([a["address"] for a in g.authorities], [KeyPair.load(p).address for p in paths])
        self.assertEqual({k: v for k, v in doc.items() if k != "authorities"},
                         {k: v for k, v in repo.items() if k != "authorities"})
        mtime = os.stat(path).st_mtime_ns
        self.assertEqual(devnet.devnet_genesis(state, paths, 1.0), path)
        self.assertEqual(os.stat(path).st_mtime_ns, mtime, "a restart keeps the genesis")
        # Another number of authorities on the same state is refused.
        for other in (devnet.authority_keys(state, 2), devnet.authority_keys(state, 4)):
            with self.assertRaises(ConfigError) as cm:
                devnet.devnet_genesis(state, other, 1.0)
            self.assertIn("--reset", str(cm.exception))

    def test_one_authority_is_the_repository_genesis(self):
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        path = devnet.devnet_genesis(state, devnet.authority_keys(state, 1), 1.0)
        with open(path) as f, open(os.path.join(REPO_ROOT, "genesis.json")) as g:
            self.assertEqual(Genesis(json.load(f)).hash, Genesis(json.load(g)).hash)

    def test_a_state_of_one_authority_from_before_is_refused_for_three(self):
        state = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(state, "follower"))
        with self.assertRaises(ConfigError):
            devnet.devnet_genesis(state, devnet.authority_keys(state, 3), 1.0)
        self.assertFalse(os.path.exists(os.path.join(state, "genesis.json")))

    def test_ports_and_full_mesh(self):
        for n in (1, 3, devnet.MAX_AUTHORITIES):
            layout = devnet.Layout(n, 8080, 7070)
            rpc = [a[1] for a in layout.authorities] + [layout.follower[1], layout.coordinator]
            p2p = [a[2] for a in layout.authorities] + [layout.follower[2]]
            self.assertEqual(len(set(rpc)), n + 2, n)
            self.assertEqual(len(set(p2p)), n + 1, n)
            self.assertEqual(layout.authorities[0][:2], ("authority", 8080))
            self.assertEqual((layout.follower[1], layout.coordinator), (8081, 8090))
            # every pair of nodes has exactly one dial between them
            dials = {(k, url) for k in range(1, n + 1) for url in layout.authority_peers(k)}
            dials |= {(0, url) for url in layout.follower_peers()}
            urls = [layout.ws(a[2]) for a in layout.authorities]
            pairs = {frozenset((k, urls.index(url) + 1)) for k, url in dials}
            self.assertEqual(len(dials), (n + 1) * n // 2)
            self.assertEqual(len(pairs), (n + 1) * n // 2)

    def test_authorities_bounds(self):
        for bad in ("0", "10", "-1"):
            err = io.StringIO()
            with self.assertRaises(SystemExit), contextlib.redirect_stderr(err):
                devnet.run(["--authorities", bad])
            self.assertIn("--authorities must be from 1 to 9", err.getvalue())


class SeveralAuthoritiesTests(TestCase):
    timeout = 150
    verbose = False

    @inline
    async def test_three_authorities_take_turns_and_restart(self):
        state = os.path.abspath(self.mktemp())
        base = p2p = None
        for _ in range(20):
            a, b = free_ports(2)
            if all(_free(p) for p in (a, a + 1, a + 2, a + 3, a + 10, b, b + 1, b + 2, b + 3)):
                base, p2p = a, b
                break
        self.assertIsNotNone(base, "no free ports")
        follower = f"http://127.0.0.1:{base + 1}"
        authorities = [f"http://127.0.0.1:{port}" for port in (base, base + 2, base + 3)]

        async def start():
            proto = _NodeProtocol(self)
            argv = [sys.executable, "-m", "aitnode.devnet", "--authorities", "3", "--state", state,
                    "--port", str(base), "--p2p-port", str(p2p), "--interval", "0.4", "--no-miner"]
            reactor.spawnProcess(proto, sys.executable, argv, env=twistd_environ(), path=REPO_ROOT)
            self.addCleanup(stop_process, proto, signal.SIGTERM)

            def out():
                return (bytes(proto.out) + bytes(proto.err)).decode("utf-8", "replace")

            await wait_for(lambda: "devnet is up" in out() or proto.done, timeout=60, message=out)
            self.assertIn("devnet is up: 3 authorities", out())
            return proto, out

        async def stop(proto, out):
            proto.transport.signalProcess("INT")  # Ctrl-C
            await wait_for(lambda: proto.done, timeout=40, message=lambda: "the devnet to stop:\n" + out())
            for port in (base, base + 1, base + 2, base + 3, base + 10):
                self.assertFalse(_listening(port), port)

        proto, out = await start()
        for url in authorities:  # every node's URL is printed
            self.assertIn(url + "/", out())
        with open(os.path.join(state, "genesis.json")) as f:
            listed = [a["address"] for a in json.load(f)["authorities"]]
        self.assertEqual(len(listed), 3)

        async def height(url):
            status, head = await get(url + "/rpc/getHead")
            return head["height"] if status == 200 else -1

        async def grown():
            return await height(follower) >= 12

        await wait_for(grown, timeout=60, message=lambda: "12 blocks on the follower:\n" + out())
        top = await height(follower)
        proposers = []
        for h in range(top - 8, top + 1):
            status, block = await get(follower + f"/rpc/getBlock/{h}")
            self.assertEqual(status, 200, block)
            proposers.append(block["proposer"])
        self.assertLessEqual(set(proposers), set(listed))
        self.assertGreater(len(set(proposers)), 1, f"one proposer made blocks {top - 8}..{top}: {proposers}")
        # every authority follows the same chain
        _, block = await get(follower + f"/rpc/getBlock/{top}")
        for url in authorities:
            async def caught_up(url=url):
                return await height(url) >= top
            await wait_for(caught_up, timeout=20, message=f"{url} to reach {top}")
            _, theirs = await get(url + f"/rpc/getBlock/{top}")
            self.assertEqual(theirs["hash"], block["hash"], url)
        # With finality (getHead says "finalized"), it advances everywhere
        # and every node finalized the same block at that height.
        _, head = await get(follower + "/rpc/getHead")
        if "finalized" in head:
            for url in [follower] + authorities:
                async def finalized(url=url):
                    _, h = await get(url + "/rpc/getHead")
                    return h["finalized"]["height"] >= 3 and h["finalized"]
                final = await wait_for(finalized, timeout=30, message=f"{url} to finalize block 3")
                async def held(h=final["height"]):
                    status, b = await get(follower + f"/rpc/getBlock/{h}")
                    return status == 200 and b
                ours = await wait_for(held, timeout=20, message=f"the follower to hold block {final['height']}")
                self.assertEqual(ours["hash"], final["hash"], url)
        await stop(proto, out)
        logs = os.path.join(state, "logs")
        for name in ("authority", "authority2", "authority3", "follower"):
            with open(os.path.join(logs, f"{name}.log")) as f:
                self.assertRegex(f.read(), r"node stopped, mempool of \d+ saved", name)

        # A restart keeps the keys, the genesis and the chain.
        keys = [KeyPair.load(os.path.join(state, "keys", f"authority{k}.key.json")).address for k in (2, 3)]
        self.assertEqual(keys, listed[1:])
        proto, out = await start()
        self.assertGreaterEqual(await height(follower), top)
        _, again = await get(follower + f"/rpc/getBlock/{top}")
        self.assertEqual(again["hash"], block["hash"])
        async def going_on():
            return await height(follower) > top + 2
        await wait_for(going_on, timeout=30, message=lambda: "blocks after the restart:\n" + out())
        await stop(proto, out)


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

