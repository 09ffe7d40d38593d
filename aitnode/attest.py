"""Asking the coordinator to attest a compute receipt (treq).

Only hosts on the ``[coordinator] allow`` list are called, each call has a
timeout, and at most ``max_in_flight`` calls run at once; past that a claim
is refused (429) rather than queued without bound.  Every failure becomes
an AitError with its own code, so one bad coordinator answer refuses one
claim and touches nothing else.
"""

import json
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from aitnode.errors import AitError

MAX_ANSWER = 64 * 1024


def _timed_out(result, timeout):
    """A call cancelled by its timeout timed out, whatever the cancelled
    Deferred failed with (the Agent wraps CancelledError in
    ResponseNeverReceived, which addTimeout would pass on as is)."""
    if isinstance(result, Failure):
        raise defer.TimeoutError(f"no answer within {timeout} s")
    return result


class Attestor:
    def __init__(self, reactor, url, allow, timeout=5.0, max_in_flight=32, pool=None, http=None):
        self.reactor = reactor
        self.url = url.rstrip("/") + "/attest/receipt"
        self.host = urlsplit(url).hostname
        self.allow = set(allow)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        if http is None:
            self.pool = pool or HTTPConnectionPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = max_in_flight
            http = HTTPClient(Agent(reactor, pool=self.pool))
        else:
            self.pool = None
        self.http = http

    def close(self):
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)

    async def attest(self, request):
        """POST the request; the decoded answer (a dict) or AitError."""
        if self.host not in self.allow:
            raise AitError(
                "coordinator_not_allowed",
                f"coordinator host {self.host!r} is not on the [coordinator] allow list",
                status=424,
            )
        if self.in_flight >= self.max_in_flight:
            raise AitError("coordinator_busy", "too many attestation calls in flight; retry shortly", status=429)
        self.in_flight += 1
        try:
            d = self.http.post(
                self.url, data=json.dumps(request).encode(),
                headers={b"content-type": [b"application/json"]},
            )
            d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
            try:
                response = await d
                body = response.content()
                body.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
                if response.code != 200:
                    await body
                    raise AitError("coordinator_error", f"the coordinator answered HTTP {response.code}", status=424)
                raw = await body
            except defer.TimeoutError:
                raise AitError("coordinator_timeout", f"the coordinator did not answer within {self.timeout} s", status=424)
            except AitError:
                raise
            except Exception as e:
                raise AitError("coordinator_unavailable", f"cannot reach the coordinator: {e.__class__.__name__}", status=424)
        finally:
            self.in_flight -= 1
        if len(raw) > MAX_ANSWER:
            raise AitError("coordinator_bad_answer", "the coordinator's answer is too large", status=424)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise AitError("coordinator_bad_answer", "the coordinator's answer is not JSON", status=424)
        if type(answer) is not dict:
            raise AitError("coordinator_bad_answer", "the coordinator's answer is not a JSON object", status=424)
        return answer
