"""The HTTP site: one twisted.web Site for RPC (Klein) and, later, peers.

Bodies are read into memory up to a hard limit; past it the request is
marked ``body_too_large`` and the rest is discarded unread, so no client
can make the node buffer an unbounded upload.
"""

import time
from io import BytesIO

from twisted.web import resource, server

from aitnode.errors import AitError
from aitnode.rpc import error_response


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
    """Named children (putChild) first; every other path goes to the app.

    ``observe(request, seconds)``, when set, is called as each request the
    app serves finishes (metrics).
    """

    observe = None

    def __init__(self, app_resource):
        super().__init__()
        self.app_resource = app_resource
        self.fast = {}  # exact request path -> resource, served without the app

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
    it would cost more than the requests.  Metrics count them instead."""

    def log(self, request):
        pass


def make_site(app_resource, max_body):
    root = Root(app_resource)
    # No form parsing: every POST here is JSON, and parsing Content-Type with
    # the email package would cost more than admitting a transaction.
    site = QuietSite(root, parsePOSTFormSubmission=False)

    class Request(LimitedRequest):
        pass

    Request.max_body = max_body
    site.requestFactory = Request
    site.displayTracebacks = False
    return site, root
