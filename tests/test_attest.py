"""aitnode.attest.Attestor against coordinators served on loopback.

Each test serves a twisted.web Site on 127.0.0.1, port 0 (the real
MockCoordinator, or a resource that misbehaves on purpose) and points a
real Attestor (Twisted's Agent, persistent pool) at it.  Cleanup closes the
attestor's pool and stops listening, so trial's reactor is left clean.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web import resource, server

from aitnode.attest import MAX_ANSWER, Attestor
from aitnode.genesis import Genesis
from aitnode.coordinator import MockCoordinator
from aitnode.errors import AitError
from aitnode.receipts import CLAIM, attestation_request, check_attestation, sign_claim
from aitnode.tx import sign_tx
from tests.common import ALICE, CHAIN_ID, COORDINATOR, ESCROW, MINER, genesis_doc, make_node, transfer, wire

PARAMS = Genesis(genesis_doc()).params


def payload(receipt_id="r1", job_id="job_1", payment="ab" * 32):
    return sign_claim(MINER, CHAIN_ID, receipt_id=receipt_id, job_id=job_id, client_addr=ALICE.address,
                      miner_addr=MINER.address, compute_units=2, price=100, output_hash="sha256:00",
                      client_payment_tx=payment)


class Scripted(resource.Resource):
    """Answers POSTs as ``behaviour`` says: "hang" (no answer at all),
    "slow_body" / "error_slow_body" (a 200 / 500 whose body never ends),
    "garbage", "list", "huge", or an HTTP code."""

    isLeaf = True

    def __init__(self, behaviour):
        super().__init__()
        self.behaviour = behaviour
        self.requests = []  # every request received
        self.hanging = []  # (request, Deferred firing when its connection ends)

    def render_POST(self, request):
        self.requests.append(json.loads(request.content.read()))
        b = self.behaviour
        if b in ("hang", "slow_body", "error_slow_body"):
            self.hanging.append((request, request.notifyFinish()))
            if b != "hang":
                # Headers and the start of the body, then nothing more.
                request.setResponseCode(200 if b == "slow_body" else 500)
                request.setHeader(b"content-length", b"1000")
                request.write(b'{"receipt_id": ')
            return server.NOT_DONE_YET
        if b == "garbage":
            return b"<html>this is not json</html>"
        if b == "list":
            return b"[1, 2, 3]"
        if b == "huge":
            return json.dumps({"pad": "x" * MAX_ANSWER}).encode()
        request.setResponseCode(b)
        return b'{"error": {"code": "boom", "message": "coordinator failed"}}'


class LoopbackTestCase(unittest.TestCase):
    """Serve resources on 127.0.0.1 and point real Attestors at them."""

    timeout = 30

    def serve(self, res):
        port = reactor.listenTCP(0, server.Site(res), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def attestor(self, url, allow=("127.0.0.1",), **kw):
        a = Attestor(reactor, url, list(allow), **kw)
        self.addCleanup(a.close)
        return a

    async def refused(self, attestor, code, request=None, status=424, in_flight=0):
        request = request or attestation_request(payload())
        with self.assertRaises(AitError) as cm:
            await attestor.attest(request)
        err = cm.exception
        self.assertEqual(err.code, code, err.message)
        self.assertEqual(err.status, status)
        self.assertTrue(400 <= err.status < 500)
        self.assertTrue(err.message)
        self.assertEqual(attestor.in_flight, in_flight)
        return err


class AttestorTests(LoopbackTestCase):

    def hang_cleanup(self, res):
        """Answer or drop every request still hanging, and wait for its end."""
        async def cleanup():
            for request, finished in res.hanging:
                if not finished.called:
                    request.channel.transport.abortConnection()
                try:
                    await finished
                except Exception:
                    pass
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(cleanup()))

    @defer.inlineCallbacks
    def test_success_is_a_signed_answer(self):
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        a = self.attestor(self.serve(mock.resource()))
        p = payload()
        answer = yield defer.Deferred.fromCoroutine(a.attest(attestation_request(p)))
        check_attestation(answer, p, PARAMS, CHAIN_ID)
        self.assertEqual((answer["exists"], answer["paid"], answer["not_double_spent"]), (True, True, True))
        self.assertEqual(answer["coordinator"], COORDINATOR.address)
        # Several in a row, through the pool.
        for i in range(2, 6):
            p = payload(receipt_id=f"r{i}", job_id=f"job_{i}")
            answer = yield defer.Deferred.fromCoroutine(a.attest(attestation_request(p)))
            check_attestation(answer, p, PARAMS, CHAIN_ID)
        self.assertEqual(mock.served, 5)
        self.assertEqual(a.in_flight, 0)

    @defer.inlineCallbacks
    def test_answers_that_say_no_still_come_back(self):
        """exists = false is an answer (the node refuses the claim, not the attestor)."""
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        a = self.attestor(self.serve(mock.resource()))
        p = payload(job_id="not_a_job")
        answer = yield defer.Deferred.fromCoroutine(a.attest(attestation_request(p)))
        self.assertIs(answer["exists"], False)
        with self.assertRaises(AitError) as cm:
            check_attestation(answer, p, PARAMS, CHAIN_ID)
        self.assertEqual(cm.exception.code, "job_not_found")

    async def _not_allowed(self):
        class NoCalls:
            def request(_, *a, **kw):
                self.fail("the attestor called a host that is not allowed")
        for url, allow in [
            ("http://10.1.2.3:8090", ["127.0.0.1"]),
            ("http://localhost:8090", ["127.0.0.1"]),
            ("http://127.0.0.1:8090", []),
            ("http://127.0.0.1.example.com:8090", ["127.0.0.1"]),
        ]:
            a = Attestor(reactor, url, allow, agent=NoCalls())
            await self.refused(a, "coordinator_not_allowed")
        # The real client too: no connection is attempted (nothing listens there).
        a = self.attestor("http://10.1.2.3:8090", allow=["127.0.0.2"])
        await self.refused(a, "coordinator_not_allowed")

    def test_host_not_on_the_allow_list(self):
        return defer.Deferred.fromCoroutine(self._not_allowed())

    async def closed_url(self):
        """The URL of a loopback port that was just closed (nothing listens)."""
        port = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        return f"http://127.0.0.1:{number}"

    async def _down(self):
        a = self.attestor(await self.closed_url(), timeout=5)
        await self.refused(a, "coordinator_unavailable")
        await self.refused(a, "coordinator_unavailable")

    def test_coordinator_down(self):
        return defer.Deferred.fromCoroutine(self._down())

    async def _slow(self):
        res = Scripted("hang")
        self.hang_cleanup(res)
        a = self.attestor(self.serve(res), timeout=0.5)
        started = reactor.seconds()
        err = await self.refused(a, "coordinator_timeout")
        self.assertIn("0.5", err.message)
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual(len(res.requests), 1)
        # The client gave up: the server sees the connection go.
        await res.hanging[0][1].addErrback(lambda f: None)

    def test_slow_coordinator_times_out(self):
        return defer.Deferred.fromCoroutine(self._slow())

    async def _slow_body(self):
        # An error's body is not read at all: refused as the status comes.
        for behaviour, code in (("slow_body", "coordinator_timeout"), ("error_slow_body", "coordinator_error")):
            res = Scripted(behaviour)
            self.hang_cleanup(res)
            a = self.attestor(self.serve(res), timeout=0.3, max_in_flight=1)
            started = reactor.seconds()
            await self.refused(a, code)
            self.assertLess(reactor.seconds() - started, 5)
            # The node hung up: the coordinator sees its connection go.
            await res.hanging[0][1].addErrback(lambda f: None)

    def test_answer_body_that_never_ends_times_out(self):
        """Headers came, the body never ends: the call still ends, its slot is
        freed, its connection is closed."""
        return defer.Deferred.fromCoroutine(self._slow_body())

    async def _bad_answers(self):
        for behaviour in ("garbage", "list", "huge"):
            a = self.attestor(self.serve(Scripted(behaviour)))
            await self.refused(a, "coordinator_bad_answer")

    def test_garbage_answer(self):
        return defer.Deferred.fromCoroutine(self._bad_answers())

    async def _http_errors(self):
        for code in (500, 503, 404, 400):
            a = self.attestor(self.serve(Scripted(code)))
            err = await self.refused(a, "coordinator_error")
            self.assertIn(str(code), err.message)
        # A URL without the route: the mock answers 404.
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        a = self.attestor(self.serve(mock.resource()) + "/elsewhere")
        await self.refused(a, "coordinator_error")

    def test_http_error(self):
        return defer.Deferred.fromCoroutine(self._http_errors())

    async def _busy(self):
        res = Scripted("hang")
        self.hang_cleanup(res)
        a = self.attestor(self.serve(res), max_in_flight=1, timeout=10)
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        first_request = attestation_request(payload())
        first = defer.Deferred.fromCoroutine(a.attest(first_request))
        await self.wait(lambda: res.hanging)
        self.assertEqual(a.in_flight, 1)
        await self.refused(a, "coordinator_busy", request=attestation_request(payload("r2", "job_2")),
                           status=429, in_flight=1)
        self.assertEqual(a.in_flight, 1)
        self.assertEqual(len(res.requests), 1, "the busy call reached the coordinator")
        # The hanging call is answered: the first call completes; a slot is free again.
        request, _ = res.hanging[0]
        request.write(json.dumps(mock.attest(first_request)).encode())
        request.finish()
        answer = await first
        check_attestation(answer, payload(), PARAMS, CHAIN_ID)
        self.assertEqual(a.in_flight, 0)
        res.behaviour = 500
        await self.refused(a, "coordinator_error")

    def test_max_in_flight(self):
        return defer.Deferred.fromCoroutine(self._busy())

    async def _timeout_frees_the_slot(self):
        res = Scripted("hang")
        self.hang_cleanup(res)
        a = self.attestor(self.serve(res), max_in_flight=1, timeout=0.3)
        await self.refused(a, "coordinator_timeout")
        res.behaviour = "garbage"
        await self.refused(a, "coordinator_bad_answer")

    def test_a_timed_out_call_frees_its_slot(self):
        return defer.Deferred.fromCoroutine(self._timeout_frees_the_slot())

    async def wait(self, predicate, timeout=5.0):
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail("condition not reached in time")
            await deferLater(reactor, 0.01, lambda: None)

    async def _node_end_to_end(self):
        """A node with a real Attestor admits a claim the loopback mock attests."""
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        node = make_node(self)
        node.admission.attestor = self.attestor(self.serve(mock.resource()))
        pay = transfer(ALICE, 1, ESCROW, 100)
        node.admission.submit(wire(pay))
        node.pipeline.propose()
        claim = sign_tx(MINER, CHAIN_ID, CLAIM, 1, 1000, payload(payment=pay.hash))
        self.assertEqual(await node.admission.submit(wire(claim)), claim.hash)
        block = node.pipeline.propose()
        self.assertEqual(block["txs"], [claim.hash])
        check_attestation(block["attestations"][claim.hash], claim.payload, PARAMS, CHAIN_ID)
        self.assertEqual(node.queries.get_balance(MINER.address)["balance"], 100 + 2 * 1000 - 1000)
        # The same node, coordinator gone: refused with a clear code, blocks go on.
        node.admission.attestor = self.attestor(await self.closed_url())
        pay2 = transfer(ALICE, 2, ESCROW, 100)
        node.admission.submit(wire(pay2))
        node.pipeline.propose()
        claim2 = sign_tx(MINER, CHAIN_ID, CLAIM, 2, 1000, payload("r2", "job_2", pay2.hash))
        with self.assertRaises(AitError) as cm:
            await node.admission.submit(wire(claim2))
        self.assertEqual((cm.exception.code, cm.exception.status), ("coordinator_unavailable", 424))
        height = node.queries.get_head()["height"]
        self.assertEqual(node.pipeline.propose()["header"]["height"], height + 1)
        self.assertEqual(len(node.mempool), 0)

    def test_node_with_a_loopback_coordinator(self):
        return defer.Deferred.fromCoroutine(self._node_end_to_end())


class Redirect(resource.Resource):
    """Answers every request with ``code`` and a Location header."""

    isLeaf = True

    def __init__(self, code, location):
        super().__init__()
        self.code = code
        self.location = location

    def render(self, request):
        request.setResponseCode(self.code)
        request.setHeader(b"location", self.location.encode())
        return b""


class Canned(resource.Resource):
    """Answers any method with one fixed, validly signed answer; counts hits."""

    isLeaf = True

    def __init__(self, answer):
        super().__init__()
        self.answer = json.dumps(answer).encode()
        self.hits = 0

    def render(self, request):
        self.hits += 1
        return self.answer


class Gzipped(resource.Resource):
    """A 200 whose body is gzip-encoded, whether asked for or not."""

    isLeaf = True

    def __init__(self, body):
        super().__init__()
        self.body = body
        self.accept_encoding = []

    def render_POST(self, request):
        self.accept_encoding.append(request.getHeader(b"accept-encoding"))
        request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-type", b"application/json")
        return self.body


class Endless(resource.Resource):
    """A ``code`` answer whose body never ends: 1 KiB of JSON-looking
    text every millisecond (chunked, no length), or, with ``length``, a
    Content-Length header and then nothing.  ``sent`` counts body bytes
    written; ``finished`` fires when the client hangs up."""

    isLeaf = True

    def __init__(self, code=200, length=None):
        super().__init__()
        self.code = code
        self.length = length
        self.sent = 0
        self.finished = []
        self.requests = []
        self.calls = []

    def render_POST(self, request):
        request.setResponseCode(self.code)
        gone = request.notifyFinish()
        gone.addErrback(lambda f: None)  # the client hanging up is the point
        self.finished.append(gone)
        self.requests.append(request)
        if self.length is not None:
            request.setHeader(b"content-length", str(self.length).encode())
            request.write(b'{"pad": "')
            return server.NOT_DONE_YET
        request.write(b'{"pad": "')
        self.sent += 9

        def more():
            if gone.called:
                return
            request.write(b"x" * 1024)
            self.sent += 1024
            self.calls.append(reactor.callLater(0.001, more))

        more()
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def stop(self):
        """Stop writing; close every connection the client left open."""
        for call in self.calls:
            if call.active():
                call.cancel()
        for request, gone in zip(self.requests, self.finished):
            if not gone.called:
                request.channel.transport.abortConnection()
            yield gone


class HostileCoordinatorTests(LoopbackTestCase):
    """An allow-listed coordinator cannot send the node elsewhere, nor make
    it inflate, buffer or wait on an answer beyond the 64 KiB cap."""

    async def _redirects(self):
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        request = attestation_request(payload())
        elsewhere = Canned(mock.attest(request))
        target = self.serve(elsewhere) + "/attest/receipt"
        for code in (301, 302, 303, 307, 308, 300, 304):
            a = self.attestor(self.serve(Redirect(code, target)))
            err = await self.refused(a, "coordinator_redirect", request=request)
            self.assertIn(str(code), err.message)
        self.assertEqual(elsewhere.hits, 0, "the node followed a redirect")

    def test_redirect_is_refused_never_followed(self):
        return defer.Deferred.fromCoroutine(self._redirects())

    async def _gzip(self):
        import gzip
        import tracemalloc
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        request = attestation_request(payload())
        # 32 MiB of zeros in 32 KiB on the wire, and a small valid answer.
        bomb = gzip.compress(b"0" * (32 << 20), compresslevel=9)
        self.assertLess(len(bomb), MAX_ANSWER)
        small = gzip.compress(json.dumps(mock.attest(request)).encode())
        for body in (bomb, small):
            res = Gzipped(body)
            a = self.attestor(self.serve(res))
            tracemalloc.start()
            try:
                err = await self.refused(a, "coordinator_bad_answer", request=request)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            self.assertLess(peak, 4 << 20, "the answer was inflated")
            self.assertIn("content-encoding", err.message.lower())
            # The node never asked for a compressed answer.
            self.assertEqual(len(res.accept_encoding), 1)
            self.assertIn(res.accept_encoding[0], (None, b"identity"))

    def test_compressed_answer_is_refused_not_inflated(self):
        return defer.Deferred.fromCoroutine(self._gzip())

    async def _endless(self):
        for code, expected in ((200, "coordinator_bad_answer"), (500, "coordinator_error")):
            res = Endless(code)
            a = self.attestor(self.serve(res), timeout=5)
            self.addCleanup(res.stop)
            started = reactor.seconds()
            await self.refused(a, expected)
            # Refused as the cap was passed (or at once for an error), not at the timeout...
            self.assertLess(reactor.seconds() - started, 2.5)
            # ...and the node hung up: the coordinator could not send much past the cap.
            await res.finished[0]
            self.assertLess(res.sent, 4 * MAX_ANSWER)

    def test_endless_body_is_cut_at_the_cap(self):
        return defer.Deferred.fromCoroutine(self._endless())

    async def _declared_too_long(self):
        for code, expected in ((200, "coordinator_bad_answer"), (500, "coordinator_error")):
            res = Endless(code, length=100 << 20)
            a = self.attestor(self.serve(res), timeout=5)
            self.addCleanup(res.stop)
            started = reactor.seconds()
            await self.refused(a, expected)
            self.assertLess(reactor.seconds() - started, 2.5)
            await res.finished[0]  # the node hung up without waiting for the body

    def test_content_length_over_the_cap_is_refused_before_the_body(self):
        return defer.Deferred.fromCoroutine(self._declared_too_long())
