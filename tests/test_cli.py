"""The `ait` command: offline commands in process, node commands against a
real node process (run as `python -m aitnode.cli`, so exit codes and the
one-line errors are what a user sees)."""

import json
import os
import stat
import sys

from twisted.internet import utils
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aitnode import cli
from aitnode.genesis import Genesis
from aitnode.crypto import KeyPair
from tests.common import ALICE, AUTHORITY, BOB
from tests.procs import REPO_ROOT, NodeProcess, inline


class OfflineTests(SynchronousTestCase):
    def run_cli(self, *argv):
        out, err = [], []
        real_out, real_err = sys.stdout, sys.stderr

        class Sink:
            def __init__(self, into):
                self.into = into

            def write(self, text):
                self.into.append(text)

            def flush(self):
                pass

        sys.stdout, sys.stderr = Sink(out), Sink(err)
        try:
            code = cli.main(list(argv))
        finally:
            sys.stdout, sys.stderr = real_out, real_err
        return code, "".join(out), "".join(err)

    def test_keygen_writes_a_0600_key_file_and_refuses_to_overwrite(self):
        path = os.path.join(self.mktemp())
        code, out, _ = self.run_cli("keygen", "--out", path, "--json")
        self.assertEqual(code, 0)
        shown = json.loads(out)
        key = KeyPair.load(path)
        self.assertEqual(shown["address"], key.address)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        code, _, err = self.run_cli("keygen", "--out", path)
        self.assertEqual(code, 1)
        self.assertIn("exists", err)
        self.assertEqual(err.count("\n"), 1)
        self.assertEqual(KeyPair.load(path).address, key.address)

    def test_genesis_writes_a_valid_document(self):
        keyfile, out = self.mktemp(), self.mktemp()
        AUTHORITY.save(keyfile)
        code, _, _ = self.run_cli("genesis", "--chain-id", "ait-x", "--authority", keyfile,
                                  "--account", f"{ALICE.address}=500", "--faucet", "--timestamp", "7", "--out", out)
        self.assertEqual(code, 0)
        with open(out) as f:
            g = Genesis(json.load(f))
        self.assertEqual((g.chain_id, g.timestamp, g.accounts, g.params["faucet"]),
                         ("ait-x", 7, {ALICE.address: 500}, True))
        self.assertEqual(g.authorities[0]["address"], AUTHORITY.address)

    def test_bad_account_spec_is_one_line_error(self):
        keyfile = self.mktemp()
        AUTHORITY.save(keyfile)
        code, _, err = self.run_cli("genesis", "--chain-id", "ait-x", "--authority", keyfile, "--account", "nope")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("ait: error: --account takes ADDRESS=BALANCE"))

    def test_unreachable_node(self):
        code, _, err = self.run_cli("head", "--node", "http://127.0.0.1:1")
        self.assertEqual(code, 1)
        self.assertIn("cannot reach http://127.0.0.1:1", err)


class NodeTests(TestCase):
    timeout = 120

    async def ait(self, *argv):
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        env = {k: v for k, v in env.items() if not k.startswith("AITNODE_")}
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "aitnode.cli", *argv], env=env, path=REPO_ROOT)
        return code, out.decode(), err.decode()

    @inline
    async def test_a_users_day(self):
        node = NodeProcess(self)
        await node.start()
        url = node.url
        keyfile = os.path.abspath(self.mktemp())
        ALICE.save(keyfile)

        code, out, _ = await self.ait("head", "--node", url, "--json")
        self.assertEqual(code, 0)
        self.assertIn("hash", json.loads(out))

        code, out, err = await self.ait("transfer", "--key", keyfile, "--to", BOB.address, "--amount", "1234",
                                        "--wait", "--node", url, "--json")
        self.assertEqual(code, 0, err)
        sent = json.loads(out)
        self.assertEqual(sent["status"], "included")

        code, out, _ = await self.ait("tx", sent["txHash"], "--node", url, "--json")
        tx = json.loads(out)
        self.assertEqual((tx["status"], tx["tx"]["payload"]), ("included", {"to": BOB.address, "amount": 1234}))

        code, out, _ = await self.ait("block", str(sent["height"]), "--node", url, "--json")
        self.assertIn(sent["txHash"], json.loads(out)["txs"])

        code, out, _ = await self.ait("balance", BOB.address, "--node", url)
        self.assertEqual(code, 0)
        self.assertIn(f"balance: {10**6 + 1234}", out)  # readable lines, not JSON

        # Errors: one line, non-zero exit.
        code, _, err = await self.ait("balance", "ait1nope", "--node", url)
        self.assertEqual((code, err.count("\n")), (1, 1))
        self.assertIn("bad_address", err)
        code, _, err = await self.ait("transfer", "--key", keyfile, "--to", BOB.address, "--amount",
                                      str(10**15), "--node", url)
        self.assertEqual(code, 1)
        self.assertIn("insufficient_balance", err)
        code, _, err = await self.ait("tx", "ab" * 32, "--node", url)
        self.assertEqual(code, 1)
        self.assertIn("not_found", err)
