"""The client page (aitnode/page.py, aitnode/static): served in process
through the Site and Root that tap.build makes, with the RPC beside it.

The page running in a real browser is tests/test_browser.py.
"""

import json
import os
import re

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from aitnode import page

from tests.common import ALICE, built_node
from tests.test_protocol_vectors import load_vectors

BASE = "http://127.0.0.1"
STATIC = page.STATIC_DIR


def read_static(name):
    with open(os.path.join(STATIC, name), "rb") as f:
        return f.read()


class PageServedTests(SynchronousTestCase):
    def setUp(self):
        top = built_node(self)
        self.http = StubTreq(top.site.resource)

    def fetch(self, path, method="GET"):
        resp = self.successResultOf(self.http.request(method, BASE + path))
        body = self.successResultOf(self.http.content(resp))
        return resp, body

    def header(self, resp, name):
        values = resp.headers.getRawHeaders(name)
        self.assertIsNotNone(values, f"no {name} header")
        self.assertEqual(len(values), 1)
        return values[0]

    def assertPageHeaders(self, resp, content_type):
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.header(resp, b"content-type"), content_type)
        csp = self.header(resp, b"content-security-policy")
        self.assertTrue(csp.startswith(b"default-src 'self'"), csp)
        self.assertNotIn(b"unsafe", csp)
        self.assertEqual(self.header(resp, b"x-content-type-options"), b"nosniff")

    def test_root_is_the_index(self):
        resp, body = self.fetch("/")
        self.assertPageHeaders(resp, b"text/html; charset=utf-8")
        self.assertEqual(body, read_static("index.html"))
        self.assertIn(b'<script type="module" src="static/app.js"></script>', body)
        resp, body = self.fetch("/?anything=1")
        self.assertEqual((resp.code, body), (200, read_static("index.html")))

    def test_head_request(self):
        resp, body = self.fetch("/", method="HEAD")
        self.assertPageHeaders(resp, b"text/html; charset=utf-8")
        self.assertEqual(body, b"")

    def test_assets(self):
        for name, ctype in [
            ("app.js", b"text/javascript; charset=utf-8"),
            ("style.css", b"text/css; charset=utf-8"),
            ("favicon.svg", b"image/svg+xml"),
        ]:
            resp, body = self.fetch("/static/" + name)
            self.assertPageHeaders(resp, ctype)
            self.assertEqual(body, read_static(name), name)

    def test_other_methods_are_405(self):
        """Found by tests/test_soak.py: any method but GET, HEAD and POST on
        a page file got twisted.web's HTML 501 "Huh?" (POST its HTML 405)."""
        for path in ["/", "/static/app.js"]:
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FOO"]:
                resp, body = self.fetch(path, method)
                self.assertEqual(resp.code, 405, (path, method, body))
                self.assertEqual(self.header(resp, b"allow"), b"GET, HEAD")
                self.assertEqual(json.loads(body)["error"]["code"], "method_not_allowed")

    def test_nothing_else_under_static(self):
        for path in ["/static", "/static/", "/static/nope.js", "/static/..", "/static/../page.py",
                     "/static/%2e%2e/page.py", "/static/app.js/x", "/static/index.html", "/static/APP.JS"]:
            resp, body = self.fetch(path)
            self.assertEqual(resp.code, 404, path)
            self.assertEqual(body, b"not found\n", path)
            self.assertTrue(self.header(resp, b"content-security-policy").startswith(b"default-src 'self'"))

    def test_rpc_still_answers_beside_the_page(self):
        resp, body = self.fetch("/rpc/getHead")
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["height"], 0)
        resp, body = self.fetch(f"/rpc/getBalance/{ALICE.address}")
        self.assertEqual(resp.code, 200)
        resp, body = self.fetch("/nope")
        self.assertEqual(resp.code, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "not_found")
        resp, body = self.fetch("/index.html")
        self.assertEqual(json.loads(body)["error"]["code"], "not_found")


class PageFilesTests(SynchronousTestCase):
    """What the Content-Security-Policy demands of the files themselves."""

    def test_index_loads_only_served_files(self):
        html = read_static("index.html").decode()
        refs = re.findall(r'(?:src|href)="([^"]*)"', html)
        self.assertTrue(refs)
        for ref in refs:
            self.assertRegex(ref, r"^static/[a-z]+\.[a-z]+$", "the page loads only its own files")
            self.assertIn(ref.split("/")[1], page.FILES)
            self.assertNotEqual(ref, "static/index.html")

    def test_no_inline_code(self):
        html = read_static("index.html").decode()
        for tag in re.findall(r"<script\b[^>]*>", html):
            self.assertIn("src=", tag, "inline scripts are refused by the CSP")
        self.assertNotRegex(html, r"<style\b")
        self.assertNotRegex(html, r"\sstyle=")
        self.assertNotRegex(html, r"\son[a-z]+=")

    def test_nothing_external(self):
        for name in page.FILES:
            text = read_static(name).decode()
            urls = re.findall(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I)
            self.assertEqual([u for u in urls if not u.endswith("//www.w3.org")], [], name)
            self.assertNotIn("@import", text)
        js = read_static("app.js").decode()
        self.assertNotRegex(js, r"\beval\(|new Function\(|innerHTML|document\.write")

    def test_builtin_vectors_match_the_protocol_document(self):
        js = read_static("app.js").decode()
        m = re.search(r"const BUILTIN_VECTORS = String\.raw`(.*?)`;", js, re.S)
        self.assertIsNotNone(m)
        builtin = json.loads(m.group(1))
        doc = load_vectors()
        for case in builtin["cbor"]["cases"]:
            self.assertIn(case, doc["cbor"]["cases"])
        self.assertGreaterEqual(len(builtin["cbor"]["cases"]), 10)
        for name, k in builtin["keys"].items():
            if isinstance(k, str):
                self.assertEqual(k, doc["keys"][name])
            else:
                self.assertEqual(k, {f: doc["keys"][name][f] for f in k}, name)
        t = doc["transfer"]
        self.assertEqual(builtin["transfer"], {f: t[f] for f in builtin["transfer"]})
        self.assertTrue({"seed", "body", "body_cbor", "sign_bytes", "sig", "tx_hash"} <= set(builtin["transfer"]))

    def test_missing_files_are_an_error_at_start(self):
        self.assertRaises(OSError, page.load, self.mktemp())
