"""Tests for aitnode.config."""

import os

from twisted.trial import unittest

from aitnode.config import config_from_string, load_config
from aitnode.errors import ConfigError

MINIMAL = """
[node]
chain_id = ait-test
genesis = genesis.json
"""


class ConfigTestBase(unittest.SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, text, name="node.ini"):
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text, environ=None):
        return load_config(self.write(text), environ={} if environ is None else environ)

    def refused(self, text, environ=None):
        """Return the one-line message of the ConfigError loading ``text`` gives."""
        e = self.assertRaises(ConfigError, self.load, text, environ)
        message = str(e)
        self.assertNotIn("\n", message)
        return message


class DefaultsTests(ConfigTestBase):
    def test_defaults(self):
        cfg = self.load(MINIMAL)
        self.assertEqual(cfg.node.chain_id, "ait-test")
        self.assertEqual(cfg.node.data_dir, os.path.join(self.dir, "data"))
        self.assertIsNone(cfg.node.key)
        self.assertEqual(cfg.node.map_size, 17179869184)
        self.assertEqual(cfg.rpc.listen, "tcp:8080:interface=127.0.0.1")
        self.assertIsNone(cfg.rpc.admin_token_file)
        self.assertEqual(cfg.rpc.max_body_bytes, 65536)
        self.assertEqual(cfg.rpc.max_batch_bytes, 16777216)
        self.assertEqual(cfg.rpc.max_batch_items, 20000)
        self.assertEqual(cfg.rpc.request_deadline, 30.0)
        self.assertEqual(cfg.rpc.max_connections, 512)
        self.assertIsNone(cfg.p2p.listen)
        self.assertEqual(cfg.p2p.peers, [])
        self.assertEqual(cfg.proposer.interval, 0.02)
        self.assertIsNone(cfg.coordinator.url)
        self.assertEqual(cfg.coordinator.allow, [])
        self.assertEqual(cfg.coordinator.timeout, 5.0)
        self.assertEqual(cfg.coordinator.max_in_flight, 32)
        self.assertIs(cfg.coordinator.serve_mock, False)
        self.assertIsNone(cfg.coordinator.mock_key)
        self.assertEqual(cfg.mempool.max_size, 200000)
        self.assertEqual(cfg.mempool.max_per_sender, 1024)
        self.assertEqual(cfg.verifier.workers, 2)
        self.assertEqual(cfg.log.format, "text")
        self.assertEqual(cfg.log.level, "info")
        self.assertEqual(cfg.ratelimit.rate, 0.0)
        self.assertEqual(cfg.ratelimit.burst, 1000)

    def test_path_and_base_dir(self):
        path = self.write(MINIMAL)
        cfg = load_config(path, environ={})
        self.assertEqual(cfg.path, path)
        self.assertEqual(cfg.base_dir, self.dir)

    def test_get_matches_attributes(self):
        cfg = self.load(MINIMAL)
        self.assertEqual(cfg.get("rpc", "listen"), cfg.rpc.listen)
        self.assertEqual(cfg.get("node", "chain_id"), "ait-test")
        self.assertRaises(KeyError, cfg.get, "rpc", "nope")

    def test_default_lists_not_shared(self):
        a = self.load(MINIMAL)
        a.p2p.peers.append("ws://x")
        self.assertEqual(self.load(MINIMAL).p2p.peers, [])

    def test_config_from_string(self):
        cfg = config_from_string(MINIMAL, self.dir, environ={})
        self.assertIsNone(cfg.path)
        self.assertEqual(cfg.base_dir, self.dir)
        self.assertEqual(cfg.node.genesis, os.path.join(self.dir, "genesis.json"))


class ConversionTests(ConfigTestBase):
    def test_typed_values(self):
        cfg = self.load(MINIMAL + """
[rpc]
listen = tcp:9000
max_body_bytes = 1024
[p2p]
listen = tcp:7000
peers = ws://a.example:7000, wss://b.example/p2p ,
[proposer]
interval = 0.5
[coordinator]
url = http://coord.example
allow = a.example, b.example
serve_mock = yes
max_in_flight = 4
[verifier]
workers = 0
[log]
format = json
level = debug
[ratelimit]
rate = 12.5
burst = 50
""")
        self.assertEqual(cfg.rpc.listen, "tcp:9000")
        self.assertEqual(cfg.rpc.max_body_bytes, 1024)
        self.assertIsInstance(cfg.rpc.max_body_bytes, int)
        self.assertEqual(cfg.p2p.listen, "tcp:7000")
        self.assertEqual(cfg.p2p.peers, ["ws://a.example:7000", "wss://b.example/p2p"])
        self.assertEqual(cfg.proposer.interval, 0.5)
        self.assertEqual(cfg.coordinator.url, "http://coord.example")
        self.assertEqual(cfg.coordinator.allow, ["a.example", "b.example"])
        self.assertIs(cfg.coordinator.serve_mock, True)
        self.assertEqual(cfg.coordinator.max_in_flight, 4)
        self.assertEqual(cfg.verifier.workers, 0)
        self.assertEqual(cfg.log.format, "json")
        self.assertEqual(cfg.log.level, "debug")
        self.assertEqual(cfg.ratelimit.rate, 12.5)
        self.assertEqual(cfg.ratelimit.burst, 50)

    def test_bool_spellings(self):
        for raw, want in [("true", True), ("On", True), ("1", True),
                          ("false", False), ("NO", False), ("0", False)]:
            cfg = self.load(MINIMAL + f"[coordinator]\nserve_mock = {raw}\n")
            self.assertIs(cfg.coordinator.serve_mock, want, raw)

    def test_relative_paths_against_config_dir(self):
        cfg = self.load(MINIMAL + "key = keys/node.key\n"
                        "[rpc]\nadmin_token_file = ../token\n")
        self.assertEqual(cfg.node.genesis, os.path.join(self.dir, "genesis.json"))
        self.assertEqual(cfg.node.key, os.path.join(self.dir, "keys", "node.key"))
        self.assertEqual(cfg.rpc.admin_token_file,
                         os.path.join(os.path.dirname(self.dir), "token"))

    def test_relative_paths_not_against_cwd(self):
        cwd = os.getcwd()
        self.assertNotEqual(cwd, self.dir)
        cfg = self.load(MINIMAL)
        self.assertFalse(cfg.node.data_dir.startswith(cwd + os.sep + "data"))

    def test_absolute_path_kept(self):
        absolute = os.path.join(os.path.abspath(os.sep), "srv", "ait", "data")
        cfg = self.load(MINIMAL + f"data_dir = {absolute}\n")
        self.assertEqual(cfg.node.data_dir, absolute)

    def test_file_not_found_is_not_checked(self):
        cfg = self.load(MINIMAL + "key = does/not/exist\n")
        self.assertEqual(cfg.node.key, os.path.join(self.dir, "does", "not", "exist"))


class EnvironmentTests(ConfigTestBase):
    def test_env_beats_file(self):
        cfg = self.load(MINIMAL + "[rpc]\nlisten = tcp:9000\n",
                        environ={"AITNODE_RPC_LISTEN": "tcp:9100",
                                 "AITNODE_PROPOSER_INTERVAL": "0.25",
                                 "AITNODE_NODE_CHAIN_ID": "other"})
        self.assertEqual(cfg.rpc.listen, "tcp:9100")
        self.assertEqual(cfg.proposer.interval, 0.25)
        self.assertEqual(cfg.node.chain_id, "other")

    def test_env_supplies_required(self):
        cfg = self.load("[node]\nchain_id = c\n",
                        environ={"AITNODE_NODE_GENESIS": "/abs/genesis.json"})
        self.assertEqual(cfg.node.genesis, "/abs/genesis.json")

    def test_env_relative_path_against_cwd(self):
        cfg = self.load(MINIMAL, environ={"AITNODE_NODE_DATA_DIR": "elsewhere"})
        self.assertEqual(cfg.node.data_dir, os.path.join(os.getcwd(), "elsewhere"))
        self.assertNotEqual(cfg.node.data_dir, os.path.join(self.dir, "elsewhere"))

    def test_unrelated_env_ignored(self):
        cfg = self.load(MINIMAL, environ={"HOME": "/x", "AITNODEX": "1"})
        self.assertEqual(cfg.node.chain_id, "ait-test")

    def test_unknown_env_var(self):
        message = self.refused(MINIMAL, environ={"AITNODE_RPC_LISTN": "tcp:1"})
        self.assertIn("AITNODE_RPC_LISTN", message)
        self.assertIn("AITNODE_RPC_LISTEN", message)

    def test_bad_env_value_names_variable(self):
        message = self.refused(MINIMAL, environ={"AITNODE_MEMPOOL_MAX_SIZE": "lots"})
        self.assertIn("mempool.max_size", message)
        self.assertIn("AITNODE_MEMPOOL_MAX_SIZE", message)

    def test_defaults_to_os_environ(self):
        self.patch(os, "environ", {"AITNODE_LOG_LEVEL": "warn"})
        cfg = load_config(self.write(MINIMAL))
        self.assertEqual(cfg.log.level, "warn")


class RefusalTests(ConfigTestBase):
    def test_unknown_section(self):
        message = self.refused(MINIMAL + "[rcp]\nlisten = tcp:1\n")
        self.assertIn("node.ini", message)
        self.assertIn("[rcp]", message)
        self.assertIn("rpc", message)
        self.assertIn("ratelimit", message)

    def test_default_section_refused(self):
        message = self.refused("[DEFAULT]\nlisten = tcp:1\n" + MINIMAL)
        self.assertIn("[DEFAULT]", message)

    def test_unknown_key(self):
        message = self.refused(MINIMAL + "[rpc]\nlisen = tcp:1\n")
        self.assertIn("node.ini", message)
        self.assertIn("[rpc]", message)
        self.assertIn("lisen", message)
        self.assertIn("max_body_bytes", message)

    def test_bad_int(self):
        message = self.refused(MINIMAL + "[rpc]\nmax_body_bytes = 64k\n")
        self.assertIn("rpc.max_body_bytes", message)
        self.assertIn("64k", message)
        self.assertIn("node.ini", message)

    def test_int_below_minimum(self):
        message = self.refused(MINIMAL + "[coordinator]\nmax_in_flight = 0\n")
        self.assertIn("coordinator.max_in_flight", message)
        self.assertIn(">= 1", message)
        self.refused(MINIMAL + "[verifier]\nworkers = -1\n")

    def test_bad_float(self):
        message = self.refused(MINIMAL + "[proposer]\ninterval = soon\n")
        self.assertIn("proposer.interval", message)

    def test_float_out_of_range(self):
        for raw in ["0", "-1.5", "nan", "inf"]:
            message = self.refused(MINIMAL + f"[proposer]\ninterval = {raw}\n")
            self.assertIn("proposer.interval", message)
        message = self.refused(MINIMAL + "[ratelimit]\nrate = -1\n")
        self.assertIn("ratelimit.rate", message)

    def test_rpc_limits(self):
        cfg = self.load(MINIMAL + "[rpc]\nrequest_deadline = 2.5\nmax_connections = 64\n")
        self.assertEqual((cfg.rpc.request_deadline, cfg.rpc.max_connections), (2.5, 64))
        for raw in ["0", "-1", "nan", "inf", "soon"]:
            self.assertIn("rpc.request_deadline", self.refused(MINIMAL + f"[rpc]\nrequest_deadline = {raw}\n"))
        for raw in ["0", "-5", "many"]:
            self.assertIn("rpc.max_connections", self.refused(MINIMAL + f"[rpc]\nmax_connections = {raw}\n"))

    def test_example_file_sets_every_rpc_limit(self):
        example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "node.ini")
        with open(example, encoding="utf-8") as f:
            text = f.read()
        for key in ("max_body_bytes", "max_batch_bytes", "max_batch_items", "request_deadline", "max_connections"):
            self.assertRegex(text, rf"\n{key} = ")
        cfg = load_config(example, environ={})
        self.assertEqual((cfg.rpc.request_deadline, cfg.rpc.max_connections), (30.0, 512))

    def test_bad_bool(self):
        message = self.refused(MINIMAL + "[coordinator]\nserve_mock = maybe\n")
        self.assertIn("coordinator.serve_mock", message)
        self.assertIn("maybe", message)

    def test_bad_log_format(self):
        message = self.refused(MINIMAL + "[log]\nformat = xml\n")
        self.assertIn("log.format", message)
        self.assertIn("json", message)

    def test_bad_log_level(self):
        message = self.refused(MINIMAL + "[log]\nlevel = loud\n")
        self.assertIn("log.level", message)

    def test_bad_peer_url(self):
        for peer in ["http://a.example", "a.example:7000", "ws://"]:
            message = self.refused(MINIMAL + f"[p2p]\npeers = ws://ok.example, {peer}\n")
            self.assertIn("p2p.peers", message)
            self.assertIn(peer, message)

    def test_missing_required(self):
        message = self.refused("[node]\ndata_dir = d\n")
        self.assertIn("chain_id", message)
        self.assertIn("genesis", message)
        message = self.refused("[node]\nchain_id = c\n")
        self.assertIn("genesis", message)
        self.assertNotIn("chain_id", message)

    def test_missing_file(self):
        path = os.path.join(self.dir, "absent.ini")
        e = self.assertRaises(ConfigError, load_config, path, environ={})
        self.assertIn("absent.ini", str(e))

    def test_unparseable_file(self):
        message = self.refused("chain_id = no section header\n")
        self.assertIn("node.ini", message)

    def test_string_unknown_key(self):
        e = self.assertRaises(ConfigError, config_from_string,
                              MINIMAL + "bogus = 1\n", self.dir, environ={})
        self.assertIn("bogus", str(e))
