"""The HTTP site: the Site, its channel limits, and make_web_server.

Limits hold in the channel, before a resource sees the request:

- a body is checked against its route's limit as the headers arrive
  (``Content-Length``) and counted as it streams (chunked): past it the
  answer is 413 ``body_too_large`` at once and the connection closes, so
  nothing over a route's limit is ever buffered;
- a request must arrive whole (request line, headers and body) within
  ``request_deadline`` seconds of its first byte, or it is answered 408
  ``request_timeout`` and closed: trickling bytes no longer holds a socket;
- at most ``max_connections`` connections are open; past the cap a new
  connection is closed as it is accepted.

Every error is rendered by httpjson, as ``{"error": {"code", "message"}}``.
Timers run on the reactor given to ``make_site`` (a Clock in tests).
"""

import resource as _rlimit
import time
from io import BytesIO

from twisted.logger import Logger
from twisted.web import http, resource, server

from aitnode.errors import AitError, ConfigError
from aitnode.httpjson import Refusal, dump


# File descriptors kept for everything but RPC connections: the p2p
# listener and peers, LMDB, logs, verifier pipes, coordinator requests.
RESERVED_FDS = 128


def open_files_limit():
    """The soft RLIMIT_NOFILE, or None when unlimited."""
    soft, _ = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
    return None if soft == _rlimit.RLIM_INFINITY else soft


def connection_cap(configured, soft_limit):
    """[rpc] max_connections, lowered to stay RESERVED_FDS under the
    open-files limit (so accepting never runs the process out of files)."""
    if soft_limit is None:
        return configured
    room = soft_limit - RESERVED_FDS
    if room < 16:
        raise ConfigError(
            f"the open-files limit ({soft_limit}) leaves no room for RPC connections; "
            f"raise it (ulimit -n) to at least {RESERVED_FDS + 16 + configured}")
    return min(configured, room)


class LimitedRequest(server.Request):
    """A request whose body is counted against ``body_limit`` (set by the
    channel from its route before the body is read)."""

    body_limit = 0

    def gotLength(self, length):
        self._body_size = 0
        self.content = BytesIO()

    def handleContentChunk(self, data):
        self._body_size += len(data)
        if self._body_size > self.body_limit:
            self.channel.refuse(413, "body_too_large", f"request body is over {self.body_limit} bytes (this route's limit)")
            return
        self.content.write(data)


class LimitedChannel(http.HTTPChannel):
    """An HTTPChannel that enforces the site's body limits, request
    deadline and connection count (see the module docstring)."""

    _refused = False
    _deadline = None

    def connectionMade(self):
        self.site.open_connections += 1
        super().connectionMade()

    def connectionLost(self, reason):
        self.site.open_connections -= 1
        self._stop_deadline()
        super().connectionLost(reason)

    def dataReceived(self, data):
        if self._refused:
            return
        if self._deadline is None and not self._handlingRequest and self.site.request_deadline:
            # The first byte of a request: it has this long to arrive whole.
            self._deadline = self.callLater(self.site.request_deadline, self._too_slow)
        super().dataReceived(data)

    def lineReceived(self, line):
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data):
        if not self._refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self):
        # _path: the request target HTTPChannel keeps until the body is in.
        limit = self.site.body_limit(self._path)
        if self.length is not None and self.length > limit:
            return self.refuse(413, "body_too_large", f"request body of {self.length} bytes is over {limit} bytes (this route's limit)")
        self.requests[-1].body_limit = limit
        super().allHeadersReceived()

    def allContentReceived(self):
        if self._refused:
            return
        self._stop_deadline()
        super().allContentReceived()

    def _stop_deadline(self):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self):
        self._deadline = None
        self.refuse(408, "request_timeout", f"the request did not arrive whole within {self.site.request_deadline} s")

    def refuse(self, status, code, message):
        """Answer the request being received with a JSON error and close,
        reading nothing more (the response has not started: the request
        was never handed to a resource)."""
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        body = dump(AitError(code, message).as_json())
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, http.RESPONSES[status], len(body), body))
        # A client that does not read its answer is cut off (this timer
        # replaces the idle timeout, which would set one of its own).
        self.setTimeout(None)
        self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


class Root(resource.Resource):
    """Named children (putChild) first, then the fast routes (exact paths
    served without the app), then the app for every other path.

    ``observe(request, seconds)``, when given, is called as each request
    the app or a fast route serves finishes (metrics).
    """

    def __init__(self, app_resource, fast=None, observe=None):
        super().__init__()
        self.app_resource = app_resource
        self.fast = dict(fast or {})  # exact request path -> resource
        self.observe = observe

    def _watch(self, request):
        if self.observe is not None:
            started = time.perf_counter()
            request.notifyFinish().addBoth(lambda _: self.observe(request, time.perf_counter() - started))

    def getChild(self, name, request):
        self._watch(request)
        fast = self.fast.get(request.path)
        if fast is not None:
            return fast
        request.postpath.insert(0, request.prepath.pop())
        return self._app_for(request)

    def render(self, request):
        self._watch(request)
        return self._app_for(request).render(request)

    def _app_for(self, request):
        """The app, or a JSON refusal for a URL the app cannot decode
        (Klein would answer a text/html 400 and log a traceback)."""
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return Refusal(AitError("bad_path", "the URL path is not UTF-8 once percent-decoded"))
        try:
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return Refusal(AitError("bad_host", "the Host header is not UTF-8"))
        return self.app_resource


class QuietSite(server.Site):
    """No access log line per request: at thousands of requests a second
    it would cost more than the requests.  Metrics count them instead.

    Holds the channel's limits: ``max_body`` for every route but those in
    ``body_limits`` (exact path -> bytes), ``request_deadline`` seconds
    (None: no deadline) and ``max_connections`` (None: no cap).  The cap
    counts HTTP channels, so it suits a site whose connections stay HTTP
    (a WebSocket upgrade hands the socket to another protocol).
    """

    protocol = LimitedChannel
    _log = Logger()

    def __init__(self, root, reactor, max_body, body_limits=None, request_deadline=None, max_connections=None):
        # No form parsing: every POST here is JSON, and parsing Content-Type
        # with the email package would cost more than admitting a transaction.
        super().__init__(root, parsePOSTFormSubmission=False, reactor=reactor)
        self.max_body = max_body
        self.body_limits = dict(body_limits or {})
        self.request_deadline = request_deadline
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_connections = 0
        self._last_refusal_log = float("-inf")

    def body_limit(self, target):
        """The body limit of a request target (path and query, as sent)."""
        return self.body_limits.get(target.split(b"?", 1)[0], self.max_body)

    def buildProtocol(self, addr):
        if self.max_connections is not None and self.open_connections >= self.max_connections:
            self.refused_connections += 1
            now = self.reactor.seconds()
            if now - self._last_refusal_log >= 10:
                self._last_refusal_log = now
                self._log.warn(
                    "refusing connections: {open} open, the cap is {cap} ([rpc] max_connections); "
                    "{refused} refused so far", open=self.open_connections, cap=self.max_connections,
                    refused=self.refused_connections, component="rpc", event="connection_refused")
            return None  # the listening port closes the socket at once
        return super().buildProtocol(addr)

    def log(self, request):
        pass


def make_site(root, max_body, reactor, body_limits=None, request_deadline=None, max_connections=None):
    """A Site serving root with these limits (see QuietSite)."""
    site = QuietSite(root, reactor, max_body, body_limits, request_deadline, max_connections)
    site.requestFactory = LimitedRequest
    site.displayTracebacks = False
    return site


def make_web_server(rpc, reactor, extra=(), request_deadline=None, max_connections=None):
    """The node's HTTP Site: RPC (its Klein app and fast routes, counted in
    metrics, each route with its body limit) and extra (name, resource)
    children such as the client page."""
    root = Root(rpc.resource(), fast=rpc.fast_routes(), observe=rpc.observer())
    for name, child in extra:
        root.putChild(name, child)
    return make_site(root, rpc.max_body, reactor, body_limits=rpc.body_limits(),
                     request_deadline=request_deadline, max_connections=max_connections)
