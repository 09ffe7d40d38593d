"""aitnode.launch: node.ini sections, the listening line, the stop sequence."""

import os
import signal
import subprocess
import sys

from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import Clock
from twisted.trial import unittest

from aitnode import launch
from aitnode.config import load_config
from tests.common import AUTHORITY, genesis_doc


class FakeTransport:
    def __init__(self):
        self.signals = []
        self.exited = False

    def signalProcess(self, sig):
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(sig)


class SectionsTests(unittest.SynchronousTestCase):
    def test_peers_alone_listen_on_an_ephemeral_loopback_port(self):
        sections = launch.node_sections("c", p2p=False, peers=["ws://127.0.0.1:1/p2p/ws"])
        self.assertEqual(sections["p2p"], {"listen": launch.LOOPBACK, "peers": "ws://127.0.0.1:1/p2p/ws"})

    def test_p2p_endpoint_and_none(self):
        self.assertEqual(launch.node_sections("c", p2p="tcp:7070")["p2p"]["listen"], "tcp:7070")
        self.assertEqual(launch.node_sections("c", p2p=True)["p2p"]["listen"], launch.LOOPBACK)
        self.assertNotIn("p2p", launch.node_sections("c"))

    def test_node_folder_writes_a_config_the_node_accepts(self):
        folder = launch.NodeFolder(self.mktemp(), genesis_doc(), key=AUTHORITY, admin_token="t" * 32,
                                   sections={"proposer": {"interval": "0.5"}, "rpc": {"admin_token_file": None}},
                                   peers=["ws://127.0.0.1:1/p2p/ws"])
        config = load_config(folder.config_path, environ={})
        self.assertEqual(config.node.data_dir, folder.data_dir)
        self.assertEqual(config.node.key, folder.key_path)
        self.assertEqual(config.proposer.interval, 0.5)
        self.assertIsNone(config.rpc.admin_token_file)  # None drops the key
        self.assertEqual(config.p2p.listen, launch.LOOPBACK)
        self.assertTrue(os.path.exists(folder.genesis_path) and os.path.exists(folder.token_path))
        self.assertEqual(folder.args, ["aitnode", "--config", folder.config_path])


class ListeningTests(unittest.SynchronousTestCase):
    def test_text_and_json_lines(self):
        out = (b"2024-01-01 [node] rpc listening on http://127.0.0.1:4321\n"
               b'{"event": "listening", "message": "p2p listening on http://127.0.0.1:7070", "port": 7070}\n')
        self.assertEqual(launch.listening(out), {"rpc": ("127.0.0.1", 4321), "p2p": ("127.0.0.1", 7070)})
        self.assertEqual(launch.listening(b"rpc is starting\n"), {})


class StopTests(unittest.SynchronousTestCase):
    def test_sigkill_after_the_grace_period(self):
        clock, transport, ended = Clock(), FakeTransport(), defer.Deferred()
        done = launch.stop_spawned(clock, transport, ended, grace=5)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        clock.advance(4.9)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        clock.advance(0.1)
        self.assertEqual(transport.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(done)
        ended.callback(0)
        self.successResultOf(done)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_sigkill_once_ended(self):
        clock, transport, ended = Clock(), FakeTransport(), defer.Deferred()
        done = launch.stop_spawned(clock, transport, ended, grace=5)
        transport.exited = True
        ended.callback(0)
        self.successResultOf(done)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(transport.signals, [signal.SIGTERM])

    def test_already_ended(self):
        clock, transport = Clock(), FakeTransport()
        self.successResultOf(launch.stop_spawned(clock, transport, defer.succeed(0)))
        self.assertEqual(transport.signals, [])

    def test_popen_child_ignoring_sigterm_is_killed(self):
        code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
        self.addCleanup(proc.stdout.close)
        self.assertEqual(proc.stdout.readline(), b"up\n")  # its SIGTERM handler is in place
        launch.stop_popen(proc, grace=0.2)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
