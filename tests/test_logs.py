"""JSON log lines: one object per line with component and event."""

import io
import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from aitnode.logs import make_observer


class JSONLogTests(SynchronousTestCase):
    def emit(self, fmt="json", level="info"):
        stream = io.StringIO()
        log = Logger(namespace="aitnode.test", observer=make_observer(fmt, level, stream))
        return log, stream

    def lines(self, stream):
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    def test_event_fields(self):
        log, stream = self.emit()
        log.info("block proposed height={height}", component="proposer", event="block_proposed",
                 height=7, latency_ms=1.5, txHash="ab" * 32, peer="127.0.0.1:1", blob=object())
        (line,) = self.lines(stream)
        self.assertEqual(line["component"], "proposer")
        self.assertEqual(line["event"], "block_proposed")
        self.assertEqual((line["height"], line["latency_ms"], line["txHash"], line["peer"]),
                         (7, 1.5, "ab" * 32, "127.0.0.1:1"))
        self.assertEqual(line["message"], "block proposed height=7")
        self.assertEqual(line["level"], "info")
        self.assertNotIn("blob", line)  # only plain values are copied

    def test_plain_events_get_defaults_and_failures_a_traceback(self):
        log, stream = self.emit()
        log.info("hello")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke", Failure(), component="rpc", event="internal_error")
        first, second = self.lines(stream)
        self.assertEqual((first["component"], first["event"]), ("aitnode.test", "log"))
        self.assertEqual((second["level"], second["event"]), ("critical", "internal_error"))
        self.assertIn("ZeroDivisionError", second["traceback"])

    def test_level_filter(self):
        log, stream = self.emit(level="warn")
        log.info("quiet")
        log.warn("loud", component="p2p", event="peer_banned")
        self.assertEqual([line["event"] for line in self.lines(stream)], ["peer_banned"])

    def test_text_format(self):
        log, stream = self.emit(fmt="text")
        log.info("hello {x}", x=1)
        self.assertIn("hello 1", stream.getvalue())
        self.assertRaises(ValueError, json.loads, stream.getvalue())
