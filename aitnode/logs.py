"""Log output: one JSON object per line, or plain text, to a stream.

Events are emitted with twisted.logger and carry ``component`` and
``event`` keys, plus where they apply ``height``, ``latency_ms``, ``peer``
and ``txHash``.  The JSON observer writes those keys (and any other plain
keys of the event) beside ``time``, ``level`` and the formatted ``message``.
"""

import json
import sys
import time

from twisted.logger import (
    FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate,
    formatEvent, textFileLogObserver,
)
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
_PLAIN = (str, int, float, bool, type(None))


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, stream):
        self.stream = stream

    def __call__(self, event):
        out = {
            "time": round(event.get("log_time", time.time()), 3),
            "level": event["log_level"].name if "log_level" in event else "info",
            "component": event.get("component") or event.get("log_namespace", "-"),
            "event": event.get("event", "log"),
            "message": formatEvent(event),
        }
        for k, v in event.items():
            if not k.startswith("log_") and k not in out and isinstance(v, _PLAIN):
                out[k] = v
        failure = event.get("log_failure")
        if failure is not None:
            out["traceback"] = failure.getTraceback()
        try:
            line = json.dumps(out, default=str)
        except (TypeError, ValueError):
            line = json.dumps({"time": out["time"], "level": out["level"], "component": out["component"],
                               "event": out["event"], "message": str(out["message"])})
        self.stream.write(line + "\n")
        self.stream.flush()


def make_observer(fmt="text", level="info", stream=None):
    stream = stream or sys.stdout
    base = JSONLinesObserver(stream) if fmt == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    return FilteringLogObserver(base, [predicate])
