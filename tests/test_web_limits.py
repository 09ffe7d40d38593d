"""The RPC site's limits, driven byte by byte through a real HTTPChannel
(issue 9, defect 9): each route's body limit checked as the headers
arrive, a deadline for a request to arrive whole, and a cap on open
connections.  Time is a MemoryReactorClock; transports are StringTransports.
"""

import json

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aitnode.errors import ConfigError
from aitnode.rpc import RPC
from aitnode.web import Root, connection_cap, make_site
from tests.common import ADMIN_TOKEN, ALICE, BOB, make_node, transfer, wire
from tests.procs import NodeProcess, inline, wait_for

MAX_BODY = 1000
MAX_BATCH = 5000
DEADLINE = 30


def parse_response(data):
    """(status, headers {lower name: value}, body) of one HTTP/1.1 answer."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size, _, rest = rest.partition(b"\r\n")
            size = int(size, 16)
            if not size:
                return status, headers, body
            body, rest = body + rest[:size], rest[size + 2:]
    length = int(headers.get(b"content-length", len(rest)))
    return status, headers, rest[:length]


class SiteCase(SynchronousTestCase):
    max_connections = 8

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.node = make_node(self)
        self.rpc = RPC(self.node, admin_token=ADMIN_TOKEN, max_body=MAX_BODY, max_batch_bytes=MAX_BATCH)
        root = Root(self.rpc.resource(), fast=self.rpc.fast_routes())
        self.site = make_site(
            root, MAX_BODY, self.clock, body_limits=self.rpc.body_limits(),
            request_deadline=DEADLINE, max_connections=self.max_connections,
        )
        self.rendered = []
        observe = root.observe
        root.observe = lambda request, seconds: self.rendered.append(request.path)
        self.assertIsNone(observe)
        self.conns = []
        self.addCleanup(self.close_all)

    def connect(self, port=40000):
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port + len(self.conns)))
        if proto is None:
            return None, None
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port + len(self.conns)))
        proto.makeConnection(tr)
        self.conns.append((proto, tr))
        return proto, tr

    def close(self, proto, tr):
        if (proto, tr) in self.conns:
            self.conns.remove((proto, tr))
            proto.connectionLost(Failure(ConnectionDone()))

    def close_all(self):
        for proto, tr in list(self.conns):
            self.close(proto, tr)

    def trickle(self, proto, data):
        for i in range(len(data)):
            proto.dataReceived(data[i:i + 1])

    def head(self, method, path, length=None, extra=b""):
        h = b"%s %s HTTP/1.1\r\nHost: node\r\n" % (method, path)
        if length is not None:
            h += b"Content-Length: %d\r\n" % length
        return h + extra + b"\r\n"

    def assertRefused(self, tr, status, code):
        got, headers, body = parse_response(tr.value())
        self.assertEqual(got, status, tr.value())
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"connection"], b"close")
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], code)
        self.assertTrue(err["message"])
        self.assertTrue(tr.disconnecting, "the connection is closed after a refusal")


class BodyLimitTests(SiteCase):
    def test_declared_length_over_the_route_limit_is_refused_as_headers_arrive(self):
        cases = [
            (b"POST", b"/rpc/sendTx", MAX_BODY + 1),
            (b"POST", b"/rpc/sendTx", 16 << 20),
            (b"POST", b"/rpc/estimateFee", MAX_BODY + 1),
            (b"POST", b"/rpc/submitReceipt", MAX_BODY + 1),
            (b"POST", b"/admin/mintFaucet", MAX_BODY + 1),
            (b"POST", b"/rpc/nope", MAX_BODY + 1),
            (b"GET", b"/rpc/getHead", MAX_BODY + 1),
            # Only sendTxs takes a batch, and only up to max_batch_bytes.
            (b"POST", b"/rpc/sendTxs", MAX_BATCH + 1),
            (b"POST", b"/rpc/sendTxs?x=1", MAX_BATCH + 1),
            (b"POST", b"/rpc/sendTxs/", MAX_BODY + 1),
        ]
        for method, path, length in cases:
            proto, tr = self.connect()
            head = self.head(method, path, length)
            self.trickle(proto, head[:-1])
            self.assertEqual(tr.value(), b"", (path, "nothing is answered before the headers end"))
            proto.dataReceived(head[-1:])
            self.assertRefused(tr, 413, "body_too_large")
            # The body that follows is not read into the request.
            answered = tr.value()
            proto.dataReceived(b"x" * 4096)
            self.assertEqual(tr.value(), answered)
            self.assertEqual([r.content for r in proto.requests], [None], "no body buffer at all")
            self.close(proto, tr)
        self.assertEqual(self.rendered, [])
        self.assertEqual(len(self.node.mempool), 0)

    def test_no_100_continue_for_a_refused_body(self):
        proto, tr = self.connect()
        proto.dataReceived(self.head(b"POST", b"/rpc/sendTx", 1 << 20, b"Expect: 100-continue\r\n"))
        self.assertNotIn(b"100 Continue", tr.value())
        self.assertRefused(tr, 413, "body_too_large")

    def test_within_the_route_limit_is_served(self):
        tx = transfer(ALICE, 1, BOB, 5)
        body = json.dumps([wire(tx)]).encode() + b" " * (MAX_BATCH - 600)
        self.assertGreater(len(body), MAX_BODY)
        self.assertLessEqual(len(body), MAX_BATCH)
        proto, tr = self.connect()
        self.trickle(proto, self.head(b"POST", b"/rpc/sendTxs", len(body)) + body)
        status, _, out = parse_response(tr.value())
        self.assertEqual((status, json.loads(out)), (200, {"results": [{"txHash": tx.hash}]}))
        self.assertFalse(tr.disconnecting)
        # One byte under the single-transaction limit, on the same connection.
        tr.clear()
        tx2 = transfer(ALICE, 2, BOB, 5)
        body = json.dumps(wire(tx2)).encode()
        body += b" " * (MAX_BODY - len(body))
        proto.dataReceived(self.head(b"POST", b"/rpc/sendTx", len(body)) + body)
        status, _, out = parse_response(tr.value())
        self.assertEqual((status, json.loads(out)), (200, {"txHash": tx2.hash}))

    def chunked(self, proto, path, chunks, end=True):
        proto.dataReceived(self.head(b"POST", path, None, b"Transfer-Encoding: chunked\r\n"))
        for chunk in chunks:
            proto.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if end:
            proto.dataReceived(b"0\r\n\r\n")

    def test_chunked_body_is_counted_while_it_streams(self):
        proto, tr = self.connect()
        self.chunked(proto, b"/rpc/sendTx", [b" " * 300] * 3, end=False)
        self.assertEqual(tr.value(), b"")
        proto.dataReceived(b"%x\r\n%s\r\n" % (200, b" " * 200))  # 1100 > 1000
        self.assertRefused(tr, 413, "body_too_large")
        proto.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.rendered, [])
        # sendTxs counts against its own limit.
        proto, tr = self.connect()
        self.chunked(proto, b"/rpc/sendTxs", [b" " * 1000] * 5 + [b"[]"])
        self.assertRefused(tr, 413, "body_too_large")
        proto, tr = self.connect()
        self.chunked(proto, b"/rpc/sendTxs", [b" " * 1000] * 4 + [b"[]"])
        status, _, out = parse_response(tr.value())
        self.assertEqual((status, json.loads(out)), (200, {"results": []}))


class DeadlineTests(SiteCase):
    def test_trickled_headers_are_closed_at_the_deadline(self):
        proto, tr = self.connect()
        head = self.head(b"GET", b"/rpc/getHead") + b"X-Pad: " + b"a" * 100
        for i in range(DEADLINE):
            proto.dataReceived(head[i:i + 1])
            self.clock.advance(1)
            if i < DEADLINE - 1:
                self.assertEqual(tr.value(), b"", f"answered after {i + 1} s")
        self.assertRefused(tr, 408, "request_timeout")
        self.assertEqual(self.rendered, [])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [self.clock.seconds() + proto.abortTimeout])
        # A client that never reads is cut off a little later.
        self.assertFalse(tr.disconnected)
        self.clock.advance(proto.abortTimeout)
        self.assertTrue(tr.disconnected)
        self.close(proto, tr)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_trickled_body_is_closed_at_the_deadline(self):
        proto, tr = self.connect()
        proto.dataReceived(self.head(b"POST", b"/rpc/sendTx", 500))
        for _ in range(DEADLINE - 1):
            proto.dataReceived(b" ")
            self.clock.advance(1)
        self.assertEqual(tr.value(), b"")
        self.clock.advance(1)
        self.assertRefused(tr, 408, "request_timeout")
        self.assertEqual(self.rendered, [])

    def test_each_request_has_its_own_deadline(self):
        proto, tr = self.connect()
        for n in range(3):
            # Each request takes most of the deadline; together far more.
            head = self.head(b"GET", b"/rpc/getHead")
            step = (DEADLINE - 1) / len(head)
            for i in range(len(head)):
                proto.dataReceived(head[i:i + 1])
                self.clock.advance(step)
            status, _, out = parse_response(tr.value())
            self.assertEqual(status, 200, tr.value())
            self.assertFalse(tr.disconnecting)
            tr.clear()
            self.clock.advance(DEADLINE + 1)  # idle between requests: not a deadline
            self.assertEqual(tr.value(), b"")
        self.assertEqual(self.rendered, [b"/rpc/getHead"] * 3)

    def test_no_timer_is_left_behind(self):
        proto, tr = self.connect()
        proto.dataReceived(self.head(b"GET", b"/rpc/getHead"))
        self.assertEqual(parse_response(tr.value())[0], 200)
        self.close(proto, tr)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionCapTests(SiteCase):
    max_connections = 3

    def test_connections_past_the_cap_are_refused(self):
        conns = [self.connect() for _ in range(3)]
        self.assertTrue(all(p is not None for p, _ in conns))
        self.assertEqual(self.connect(), (None, None))
        self.assertEqual(self.connect(), (None, None))
        # One closes: one more may connect.
        self.close(*conns[0])
        proto, tr = self.connect()
        self.assertIsNotNone(proto)
        self.assertEqual(self.connect(), (None, None))
        # A connection refused with 413 frees its place once it is gone.
        proto.dataReceived(self.head(b"POST", b"/rpc/sendTx", 1 << 20))
        self.assertRefused(tr, 413, "body_too_large")
        self.close(proto, tr)
        self.assertIsNotNone(self.connect()[0])
        self.assertEqual(self.site.open_connections, 3)

    def test_a_served_connection_still_works_at_the_cap(self):
        conns = [self.connect() for _ in range(3)]
        proto, tr = conns[1]
        proto.dataReceived(self.head(b"GET", b"/rpc/getHead"))
        self.assertEqual(parse_response(tr.value())[0], 200)


class ConnectionCapBoundTests(SynchronousTestCase):
    def test_cap_stays_under_the_open_files_limit(self):
        self.assertEqual(connection_cap(512, soft_limit=1024), 512)
        self.assertEqual(connection_cap(512, soft_limit=None), 512)  # unlimited
        capped = connection_cap(512, soft_limit=600)
        self.assertLess(capped, 600 - 64)
        self.assertGreater(capped, 0)
        self.assertRaises(ConfigError, connection_cap, 512, soft_limit=100)


# -- a real node process ------------------------------------------------------

class Upload(Protocol):
    """Sends a request's headers; sends ``body`` bytes only if the node
    says 100 Continue; never finishes the body."""

    def __init__(self, head, body=0):
        self.head = head
        self.body = body
        self.received = b""
        self.sent_body = False
        self.closed = Deferred()
        self.is_closed = False

    def connectionMade(self):
        self.transport.write(self.head)

    def dataReceived(self, data):
        self.received += data
        if self.body and not self.sent_body and self.received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            self.sent_body = True
            self.received = self.received[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
            self.transport.write(b" " * self.body)

    def connectionLost(self, reason):
        self.is_closed = True
        self.closed.callback(None)

    def answer(self):
        return parse_response(self.received) if self.received else None


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


class SlowUploadProcessTests(TestCase):
    """The reproduction of defect 9 against a real node: forty uploads that
    declare 16 MiB and stall, and stalled batch uploads."""

    timeout = 120

    @inline
    async def test_stalled_uploads_cost_no_memory_and_are_refused(self):
        node = NodeProcess(self, sections={"rpc": {"request_deadline": "2"}}, interval=0.2)
        await node.start()
        pid = node.proto.transport.pid
        for _ in range(20):  # warm up the paths a request takes
            status, _ = await node.get("/rpc/getHead")
            self.assertEqual(status, 200)
            status, body = await node.post("/rpc/sendTx", raw=b"{}")
            self.assertEqual(status, 400, body)
        before = vm_rss_kib(pid)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", node.port)
        declared = 16 << 20  # = the default max_batch_bytes, over every other route's limit
        routes = [b"/rpc/sendTx", b"/rpc/estimateFee", b"/rpc/submitReceipt", b"/admin/mintFaucet"]
        uploads = []
        for n in range(40):
            head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (routes[n % len(routes)], declared))
            # Were the node to ask for the body, each would send 4 MiB of it and stall.
            uploads.append(await connectProtocol(endpoint, Upload(head, body=4 << 20)))
        # Batch uploads may declare 16 MiB, but must arrive by the deadline.
        batches = []
        for _ in range(5):
            head = (b"POST /rpc/sendTxs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n[" % declared)
            batches.append(await connectProtocol(endpoint, Upload(head)))

        await wait_for(lambda: all(u.is_closed for u in uploads), timeout=20,
                       message=lambda: f"{sum(not u.is_closed for u in uploads)} of 40 uploads to be closed")
        after = vm_rss_kib(pid)
        for u in uploads:
            self.assertFalse(u.sent_body, "the node asked for a body over its route's limit")
            status, headers, body = u.answer()
            self.assertEqual((status, json.loads(body)["error"]["code"]), (413, "body_too_large"))
        self.assertLess(after - before, 8 * 1024, f"RSS grew from {before} KiB to {after} KiB")

        await wait_for(lambda: all(b.is_closed for b in batches), timeout=20,
                       message="stalled batch uploads to be closed at the deadline")
        for b in batches:
            status, _, body = b.answer()
            self.assertEqual((status, json.loads(body)["error"]["code"]), (408, "request_timeout"))
        # The node goes on: it answers, and blocks keep coming.
        head = await node.head()
        await node.wait_height(head["height"] + 2)
