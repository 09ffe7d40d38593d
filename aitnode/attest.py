"""Asking the coordinator to attest a compute receipt (Twisted's Agent).

Only hosts on the ``[coordinator] allow`` list are called, each call has a
timeout, and at most ``max_in_flight`` calls run at once; past that a claim
is refused (429) rather than queued without bound.  Every failure becomes
an AitError with its own code, so one bad coordinator answer refuses one
claim and touches nothing else.

An allow-listed coordinator is still not trusted with the node's memory
or its connections.  The request goes through a bare ``Agent`` (treq's
client follows redirects and asks for, then inflates, gzip bodies):

* a 3xx answer is refused (``coordinator_redirect``), never followed, so
  the node talks to no host that is not on its list;
* the node asks for the identity encoding and refuses an answer with any
  other ``Content-Encoding``, so nothing is ever inflated;
* the body is read with a running count: a ``Content-Length`` over
  ``MAX_ANSWER`` is refused before a byte of the body is read, and a body
  without one is cut, and its connection dropped, as soon as the count
  passes ``MAX_ANSWER``; no byte past the cap is kept;
* the body of an answer that is not a 200 is not read at all.
"""

import json
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from aitnode.errors import AitError

MAX_ANSWER = 64 * 1024


def _timed_out(result, timeout):
    """A call cancelled by its timeout timed out, whatever the cancelled
    Deferred failed with (the Agent wraps CancelledError in
    ResponseNeverReceived, which addTimeout would pass on as is)."""
    if isinstance(result, Failure):
        raise defer.TimeoutError(f"no answer within {timeout} s")
    return result


def _bad_answer(message):
    return AitError("coordinator_bad_answer", message, status=424)


@implementer(IBodyProducer)
class _Bytes:
    """A request body held in memory (no cooperator, no global reactor)."""

    def __init__(self, data):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _Body(Protocol):
    """A response body's reader; ``closed`` fires once the body ended or
    its connection is gone (so the attestor can wait for its hang-ups)."""

    def __init__(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)


class _HangUp(_Body):
    """Read nothing of a body: drop its connection."""

    def connectionMade(self):
        self.transport.loseConnection()


class _CappedBody(_Body):
    """Collect a response body of at most ``cap`` bytes.

    ``done`` fires with the body, or fails with AitError as soon as more
    than ``cap`` bytes arrived (the connection is dropped then, and what
    was read is let go).  Cancelling ``done`` (the timeout) drops the
    connection too, so a body that never ends holds nothing open.
    """

    def __init__(self, cap):
        super().__init__()
        self.cap = cap
        self.size = 0
        self.parts = []
        self.done = defer.Deferred(lambda _: self._hang_up())

    def _hang_up(self):
        self.parts = []
        if self.transport is not None:
            self.transport.loseConnection()  # stops reading at once

    def dataReceived(self, data):
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.cap:
            self._hang_up()
            self.done.errback(_bad_answer(f"the coordinator's answer is over {self.cap} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.done.called:
            return
        # PotentialDataLoss: a body without length or chunks ends with its
        # connection; a cut one does not parse or does not check.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class Attestor:
    def __init__(self, reactor, url, allow, timeout=5.0, max_in_flight=32, pool=None, agent=None):
        self.reactor = reactor
        self.url = url.rstrip("/") + "/attest/receipt"
        self.host = urlsplit(url).hostname
        self.allow = set(allow)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        if agent is None:
            self.pool = pool or HTTPConnectionPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = max_in_flight
            agent = Agent(reactor, pool=self.pool)
        else:
            self.pool = None
        self.agent = agent
        self._reading = set()  # _Body.closed of every body not yet ended

    def close(self):
        """Close idle connections; fires once every body being read or
        dropped has ended too."""
        d = defer.gatherResults(list(self._reading), consumeErrors=True)
        if self.pool is not None:
            # After those: a body dropped as its last bytes came may still
            # hand its connection back to the pool.
            d.addBoth(lambda _: self.pool.closeCachedConnections())
        return d

    def _deliver(self, response, body):
        self._reading.add(body.closed)
        body.closed.addBoth(lambda _: self._reading.discard(body.closed))
        response.deliverBody(body)
        return body

    def _discard(self, response):
        self._deliver(response, _HangUp())

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
            raw = await self._post(json.dumps(request).encode())
        finally:
            self.in_flight -= 1
        try:
            answer = json.loads(raw)
        except ValueError:
            raise _bad_answer("the coordinator's answer is not JSON")
        if type(answer) is not dict:
            raise _bad_answer("the coordinator's answer is not a JSON object")
        return answer

    async def _post(self, data):
        """The body of a 200 answer to POSTing data (at most MAX_ANSWER bytes)."""
        headers = Headers({
            b"content-type": [b"application/json"],
            b"accept-encoding": [b"identity"],
        })
        try:
            d = self.agent.request(b"POST", self.url.encode("ascii"), headers, _Bytes(data))
            d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
            response = await d
            if 300 <= response.code < 400:
                self._discard(response)
                raise AitError(
                    "coordinator_redirect",
                    f"the coordinator answered HTTP {response.code} (a redirect); the node follows none",
                    status=424,
                )
            if response.code != 200:
                self._discard(response)
                raise AitError("coordinator_error", f"the coordinator answered HTTP {response.code}", status=424)
            encodings = [e.strip().lower() for v in response.headers.getRawHeaders(b"content-encoding", [])
                         for e in v.split(b",") if e.strip()]
            if any(e != b"identity" for e in encodings):
                self._discard(response)
                raise _bad_answer("the coordinator's answer has a Content-Encoding; the node asks for identity only")
            if response.length is not UNKNOWN_LENGTH and response.length > MAX_ANSWER:
                self._discard(response)
                raise _bad_answer(f"the coordinator's answer is over {MAX_ANSWER} bytes")
            body = self._deliver(response, _CappedBody(MAX_ANSWER))
            body.done.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
            return await body.done
        except defer.TimeoutError:
            raise AitError("coordinator_timeout", f"the coordinator did not answer within {self.timeout} s", status=424)
        except AitError:
            raise
        except Exception as e:
            raise AitError("coordinator_unavailable", f"cannot reach the coordinator: {e.__class__.__name__}", status=424)
