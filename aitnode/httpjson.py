"""JSON over HTTP: request bodies in, answers and errors out.

One place decodes JSON bodies (strictly: UTF-8, no duplicate keys, no NaN,
bounded nesting) and one renders every error any route raises as
``{"error": {"code", "message"}}`` with its status: Klein apps through
``add_json_error_handlers``, plain resources (the fast routes) through
``error_response``.
"""

import json
from itertools import accumulate

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from werkzeug.exceptions import MethodNotAllowed, NotFound

from aitnode.errors import AitError

_log = Logger()


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


class Refusal(resource.Resource):
    """Answers every request with one AitError, rendered like RPC's."""

    isLeaf = True

    def __init__(self, error):
        super().__init__()
        self.error = error

    def render(self, request):
        return error_response(request, self.error)
