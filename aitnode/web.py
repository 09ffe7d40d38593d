"""The HTTP site: the Site and its channel limits, JSON bodies and errors.

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

Every error any route raises is rendered here, as
``{"error": {"code", "message"}}``.  Timers run on the reactor given to
``make_site`` (a Clock in tests).
"""

import json
import resource as _rlimit
import time
from io import BytesIO
from itertools import accumulate

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from werkzeug.exceptions import MethodNotAllowed, NotFound

from aitnode.errors import AitError, ConfigError

_log = Logger()


# -- JSON in and out ---------------------------------------------------------

def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise AitError("duplicate_field", f"field {k!r} appears twice")
        out[k] = v
    return out


def _no_constants(name):
    raise AitError("float_not_allowed", f"{name} is not a number this node accepts")


# Arrays and objects nested in one another at most (a transaction in a
# sendTxs list is 3 deep).  Deeper JSON would reach Python's recursion
# limit in whatever walks it next (check_value, repr in a message).
MAX_JSON_DEPTH = 64
_BRACKETS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _depth_bound(data):
    """At least the nesting depth of JSON bytes (brackets inside strings
    count too): +1 per opening and -1 per closing bracket, highest sum."""
    steps = data.translate(_BRACKETS, _NOT_BRACKETS)
    if steps.count(1) <= MAX_JSON_DEPTH:
        return 0
    return max(accumulate(memoryview(steps).cast("b")))


def _too_deep(value):
    """Whether a decoded value nests deeper than MAX_JSON_DEPTH (no recursion)."""
    level = [value]
    for _ in range(MAX_JSON_DEPTH):  # after k rounds: what lies inside k containers
        level = [c for v in level if type(v) in (list, dict) for c in (v.values() if type(v) is dict else v)]
        if not level:
            return False
    return any(type(v) in (list, dict) for v in level)


def loads_json(data):
    """Decode a request body: UTF-8 JSON, no duplicate keys, no NaN, nested
    at most MAX_JSON_DEPTH arrays and objects deep."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AitError("malformed_json", "request body is not UTF-8")
    too_deep = AitError("malformed_json", f"request body is nested too deeply (more than {MAX_JSON_DEPTH} arrays and objects)")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError as e:
        raise AitError("malformed_json", f"request body is not valid JSON: {e}")
    except RecursionError:
        raise too_deep
    if _depth_bound(data) > MAX_JSON_DEPTH and _too_deep(value):
        raise too_deep
    return value


JSON = b"application/json"


def dump(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(request, obj, status=200):
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return dump(obj)


def add_json_error_handlers(app):
    """Render refusals, unknown routes and wrong methods of a Klein app
    (one whose routes are methods) as {"error": {"code", "message"}}."""

    @app.handle_errors(AitError)
    def _ait_error(self, request, failure):
        return json_response(request, failure.value.as_json(), failure.value.status)

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        return json_response(request, AitError("not_found", "no such route").as_json(), 404)

    @app.handle_errors(MethodNotAllowed)
    def _bad_method(self, request, failure):
        return json_response(request, AitError("method_not_allowed", "this route takes another HTTP method").as_json(), 405)

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        _log.failure("RPC handler failed", failure, component="rpc", event="internal_error")
        return json_response(request, AitError("internal_error", "the node failed to answer; see its log").as_json(), 500)


class FastRoute(resource.Resource):
    """One route served without Klein: a handler(request) that returns
    bytes or a Deferred of bytes, with RPC's JSON errors."""

    isLeaf = True
    _log = Logger()

    def __init__(self, handler, method):
        super().__init__()
        self.handler = handler
        self.method = method

    def render(self, request):
        if request.method != self.method:
            return error_response(request, AitError("method_not_allowed", "this route takes another HTTP method", 405))
        try:
            result = self.handler(request)
        except Exception as e:
            return error_response(request, e)
        if not isinstance(result, Deferred):
            return result
        result.addErrback(lambda f: error_response(request, f.value))
        result.addCallback(_finish, request)
        return server.NOT_DONE_YET


def _finish(body, request):
    if not request._disconnected:
        request.write(body)
        request.finish()


def error_response(request, exc):
    if not isinstance(exc, AitError):
        _log.failure("RPC handler failed", Failure(exc), component="rpc", event="internal_error")
        exc = AitError("internal_error", "the node failed to answer; see its log", status=500)
    return json_response(request, exc.as_json(), exc.status)


# -- the site ------------------------------------------------------------------

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


class Refusal(resource.Resource):
    """Answers every request with one AitError, rendered like RPC's."""

    isLeaf = True

    def __init__(self, error):
        super().__init__()
        self.error = error

    def render(self, request):
        return error_response(request, self.error)


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
