"""The client page: GET / and /static/*, served from aitnode/static.

A handful of fixed files, read once when the node starts, each with its
content type and a Content-Security-Policy that lets the page load
nothing but its own files and talk to nothing but this node (no inline
script, no CDN, no framing).  Paths outside the fixed set are 404; there
is no directory listing and no way out of the folder.  A page file read
with any method but GET or HEAD is 405 `method_not_allowed` (JSON, as RPC).
"""

import os

from twisted.web import resource

from aitnode.errors import AitError
from aitnode.httpjson import json_response

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

CSP = b"default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}

# The page's files: index.html is served at /, the others under /static/.
FILES = ("index.html", "app.js", "verify.js", "style.css", "favicon.svg")


def _headers(request, content_type):
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")
    # Small files that change with the node's version: always revalidate.
    request.setHeader(b"cache-control", b"no-cache")


class StaticFile(resource.Resource):
    """One file's bytes (GET; twisted.web answers HEAD from render_GET)."""

    isLeaf = True

    def __init__(self, data, content_type):
        super().__init__()
        self.data = data
        self.content_type = content_type

    def render(self, request):
        # Left to twisted.web, any other method gets an HTML 501 (POST a 405).
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            err = AitError("method_not_allowed", "the page is read with GET or HEAD", 405)
            return json_response(request, err.as_json(), err.status)
        return super().render(request)

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return NotFound().render(request)
        _headers(request, self.content_type)
        return self.data


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.setResponseCode(404)
        _headers(request, b"text/plain; charset=utf-8")
        return b"not found\n"


class StaticDir(resource.Resource):
    """/static/NAME for NAME in a fixed set; everything else is 404."""

    def __init__(self, files):
        super().__init__()
        self.files = files

    def getChild(self, name, request):
        return self.files.get(name) or NotFound()

    def render(self, request):
        return NotFound().render(request)


def load(static_dir=STATIC_DIR):
    """{name (bytes): StaticFile} for every page file (OSError if one is missing)."""
    out = {}
    for name in FILES:
        with open(os.path.join(static_dir, name), "rb") as f:
            data = f.read()
        out[name.encode()] = StaticFile(data, TYPES[os.path.splitext(name)[1]])
    return out


def children(static_dir=STATIC_DIR):
    """[(name, resource)] serving the page from a root whose named children
    take precedence (web.Root): / (the empty child) is index.html,
    /static/* the assets."""
    files = load(static_dir)
    return [(b"", files[b"index.html"]), (b"static", StaticDir({k: v for k, v in files.items() if k != b"index.html"}))]


def install(root, static_dir=STATIC_DIR):
    """Serve the page from root (see children)."""
    for name, child in children(static_dir):
        root.putChild(name, child)
    return root
