"""The HTTP site: the Site, JSON bodies and errors, and the fast routes.

Bodies are read into memory up to a hard limit; past it the request is
marked ``body_too_large`` and the rest is discarded unread, so no client
can make the node buffer an unbounded upload.  Every error any route
raises is rendered here as ``{"error": {"code", "message"}}``.
"""

import json
import time
from io import BytesIO

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from werkzeug.exceptions import MethodNotAllowed, NotFound

from aitnode.errors import AitError

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


def loads_json(data):
    """Decode a request body: UTF-8 JSON, no duplicate keys, no NaN."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AitError("malformed_json", "request body is not UTF-8")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError as e:
        raise AitError("malformed_json", f"request body is not valid JSON: {e}")
    except RecursionError:
        raise AitError("malformed_json", "request body is nested too deeply")


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

class LimitedRequest(server.Request):
    max_body = 16 * 1024 * 1024

    def gotLength(self, length):
        self.body_too_large = length is not None and length > self.max_body
        self._body_size = 0
        self.content = BytesIO()

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_size += len(data)
        if self._body_size > self.max_body:
            self.body_too_large = True
            self.content = BytesIO()
            return
        self.content.write(data)


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
        return self.app_resource

    def render(self, request):
        self._watch(request)
        return self.app_resource.render(request)


class QuietSite(server.Site):
    """No access log line per request: at thousands of requests a second
    it would cost more than the requests.  Metrics count them instead."""

    def log(self, request):
        pass


def make_site(root, max_body):
    """A Site serving root, with bodies limited to max_body bytes."""
    # No form parsing: every POST here is JSON, and parsing Content-Type with
    # the email package would cost more than admitting a transaction.
    site = QuietSite(root, parsePOSTFormSubmission=False)

    class Request(LimitedRequest):
        pass

    Request.max_body = max_body
    site.requestFactory = Request
    site.displayTracebacks = False
    return site


def make_web_server(rpc, max_body, extra=()):
    """The node's HTTP Site: RPC (its Klein app and fast routes, counted in
    metrics) and extra (name, resource) children such as the client page."""
    root = Root(rpc.resource(), fast=rpc.fast_routes(), observe=rpc.observer())
    for name, child in extra:
        root.putChild(name, child)
    return make_site(root, max_body)
