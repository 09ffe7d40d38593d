"""The client page in a real headless Chromium, against a real node process.

Drives Debian's ``chromium`` through ``chromedriver`` with selenium: the
page loads, its head height moves, its JavaScript CBOR/SHA-256/Ed25519/
bech32 code reproduces every vector of docs/protocol.md, a TRANSFER signed
in the browser is included and the balances change (checked on the page
and over RPC), and a refusal from the node is shown with its code.

Selenium blocks, so the browser part runs in a thread (deferToThread)
while the reactor keeps serving the node process.  The test is skipped,
saying why, only when chromium, chromedriver or selenium is missing
(``apt-get install chromium chromium-driver``, ``pip install selenium``);
AITNODE_TEST_CHROMIUM and AITNODE_TEST_CHROMEDRIVER name other binaries.
A screenshot of the page after the transfer is saved in the test's temp
dir, or where AITNODE_TEST_SCREENSHOT says.

The finality display (finalized and justified heights, finalized blocks
marked) is driven by a small stub node in the test process whose getHead
says whatever the test wants, so it stands alone.
"""

import hashlib
import json
import os
import shutil
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server

from aitnode import page
from aitnode.receipts import sign_claim
from aitnode.tx import sign_tx
from tests.common import ALICE, CAROL, CHAIN_ID, COORDINATOR, ESCROW, MINER, transfer, wire
from tests.procs import NodeProcess, inline, wait_for
from tests.test_protocol_vectors import load_vectors

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None


def _binary(env, *names):
    path = os.environ.get(env)
    if path:
        return path if os.access(path, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _binary("AITNODE_TEST_CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = _binary("AITNODE_TEST_CHROMEDRIVER", "chromedriver")

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1100",
)

AMOUNT = 123456
JSON_SAMPLE = '{"balance":18446744073709551615,"nonce":9007199254740993,"s":"\\u00fc\\"","l":[true,false,null,{}]}'


class BrowserDriver:
    """The blocking browser steps (run in a thread)."""

    def __init__(self, url, tmp):
        self.url = url
        self.tmp = tmp
        opts = Options()
        opts.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument("--user-data-dir=" + os.path.join(tmp, "profile"))
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER, log_output=os.path.join(tmp, "chromedriver.log"))
        self.d = webdriver.Chrome(service=service, options=opts)
        self.logs = []

    def quit(self):
        self.d.quit()

    # -- helpers -----------------------------------------------------------
    def find(self, id_):
        return self.d.find_element(By.ID, id_)

    def wait(self, what, predicate, timeout=30):
        try:
            waiter = WebDriverWait(self.d, timeout, poll_frequency=0.1,
                                   ignored_exceptions=(StaleElementReferenceException,))
            return waiter.until(lambda d: predicate())
        except TimeoutException:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}\n{self.diagnostics()}") from None

    def attr(self, id_, name):
        return self.find(id_).get_attribute(name)

    def height(self):
        text = self.attr("head-height", "data-height")
        return int(text) if text and text.lstrip("-").isdigit() else -1

    def rows(self, tbody_id):
        """A table's cells as [[{text, title}]], read at one instant (the
        page re-renders its tables, so element references go stale)."""
        return self.d.execute_script(
            "return [...document.getElementById(arguments[0]).rows].map("
            "tr => [...tr.cells].map(td => ({text: td.innerText, title: td.title})));", tbody_id)

    def type_into(self, id_, text):
        field = self.find(id_)
        field.clear()
        field.send_keys(text)

    def browser_log(self):
        self.logs += self.d.get_log("browser")
        return self.logs

    def diagnostics(self):
        parts = []
        try:
            self.d.save_screenshot(os.path.join(self.tmp, "failure.png"))
            parts.append("screenshot: " + os.path.join(self.tmp, "failure.png"))
            for id_ in ("send-status", "send-error", "acct-error", "selftest", "node-status"):
                parts.append(f"#{id_}: {self.find(id_).text!r}")
            parts += [f"console {e['level']}: {e['message']}" for e in self.browser_log()]
        except Exception as e:  # diagnostics must not hide the real failure
            parts.append(f"(no more diagnostics: {e})")
        return "\n".join(parts)

    def severe(self):
        return [e["message"] for e in self.browser_log() if e["level"] == "SEVERE"]

    # -- the steps (each run in a thread) --------------------------------------
    def open(self, vectors_text):
        """Load the page; the head shows up and moves; the self-tests pass."""
        out = {}
        self.d.get(self.url + "/")
        self.wait("the page to start",
                  lambda: self.d.find_element(By.TAG_NAME, "html").get_attribute("data-ready") == "1")
        out["title"] = self.d.title
        self.wait("a head height", lambda: self.height() >= 0)
        first = out["first_height"] = self.height()
        self.wait("the head to move", lambda: self.height() > first, timeout=20)
        out["later_height"] = self.height()
        out["head_hash"] = self.find("head-hash").text
        self.wait("recent blocks", lambda: len(self.rows("blocks-body")) >= 2)
        blocks = self.rows("blocks-body")
        out["block_heights"] = [int(cells[0]["text"].replace(",", "")) for cells in blocks]
        out["chain_id"] = self.find("chain-id").text
        # The page's own code against the protocol's vectors.
        out["selftest_builtin"] = self.d.execute_script("return await window.aitSelfTest();")
        out["selftest_doc"] = self.d.execute_script("return await window.aitSelfTest(arguments[0]);", vectors_text)
        self.wait("the self-test line", lambda: "passed" in self.find("selftest").text)
        # Both JSON readers keep u64 values exact (the fallback is for browsers
        # without JSON.parse source access).
        out["json"] = self.d.execute_script(
            "const t = arguments[0]; return [ait.toJSON(ait.parseJSON(t)), ait.toJSON(ait.parseJSONExact(t))];",
            JSON_SAMPLE)
        return out

    def receipt_row(self, receipt_id, minted):
        """Wait for the receipt minted while the page was open; its row's text."""
        def row():
            for cells in self.rows("receipts-body"):
                if cells[1]["title"] == receipt_id and cells[4]["text"] == f"{minted:,}":
                    return [c["text"] for c in cells]
            return None
        return self.wait(f"receipt {receipt_id} minting {minted}", row)

    def transfer(self, screenshot):
        """Send AIT from ALICE's seed to CAROL through the form."""
        out = {}
        self.type_into("send-seed", ALICE.seed.hex())
        self.wait("the sender's address", lambda: self.attr("send-from", "data-address") == ALICE.address)
        self.type_into("send-to", CAROL.address)
        self.type_into("send-amount", str(AMOUNT))
        self.find("send-button").click()
        self.wait("the transfer to end",
                  lambda: self.attr("send-status", "data-state") in ("included", "failed", "error"), timeout=60)
        out["send_state"] = self.attr("send-status", "data-state")
        out["send_status_text"] = self.find("send-status").text
        out["send_error"] = self.find("send-error").text
        if out["send_state"] == "included":
            out["tx_hash"] = self.find("send-txhash").text
            out["page_to_balance"] = self.attr("send-to-balance", "data-value")
            out["page_from_balance"] = self.attr("send-from-new", "data-value")
            # The account panel shows the recipient with its new balance and history.
            self.type_into("acct-address", CAROL.address)
            self.find("acct-load").click()
            self.wait("the recipient's balance in the account panel",
                      lambda: self.attr("acct-balance", "data-value") == str(AMOUNT))
            self.wait("the recipient's history", lambda: out["tx_hash"][:10] in self.find("acct-history").text)
            out["history_text"] = self.find("acct-history").text
        self.d.save_screenshot(screenshot)
        out["severe"] = self.severe()
        return out

    def finality(self):
        """What the page shows of finality: the two heights (text and
        data-height) and, for each block row, whether it is marked final."""
        return self.d.execute_script("""
            const cell = (id) => {
                const e = document.getElementById(id);
                return e && {text: e.textContent, height: e.getAttribute("data-height")};
            };
            return {
                finalized: cell("finalized-height"),
                justified: cell("justified-height"),
                head: document.getElementById("head-height").getAttribute("data-height"),
                rows: [...document.getElementById("blocks-body").rows].map(tr => ({
                    height: Number(tr.getAttribute("data-height")),
                    finalized: tr.getAttribute("data-finalized"),
                    mark: tr.cells[tr.cells.length - 1].innerText.trim(),
                    time: tr.cells[4].innerText.trim(),
                })),
            };""")

    def wait_finality(self, what, predicate, timeout=30):
        """Wait until predicate(finality()) holds; returns that finality()."""
        seen = []

        def check():
            seen[:] = [self.finality()]
            return predicate(seen[0])
        try:
            self.wait(what, check, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\nlast seen: {seen}") from None
        return seen[0]

    def open_stub(self):
        """Load the page from the stub node; wait for its blocks."""
        self.d.get(self.url + "/")
        self.wait("the page to start",
                  lambda: self.d.find_element(By.TAG_NAME, "html").get_attribute("data-ready") == "1")
        self.wait("the head", lambda: self.height() >= 0)
        return self.wait_finality("ten block rows", lambda f: len(f["rows"]) == 10)

    def refusals(self):
        """A refusal from the node, and one caught on the page, are shown with their codes."""
        out = {}
        # A fresh key holds nothing: the node refuses with insufficient_balance.
        self.find("send-generate").click()
        self.wait("a generated key's address", lambda: (self.attr("send-from", "data-address") or "").startswith("ait1")
                  and self.attr("send-from", "data-address") != ALICE.address)
        self.type_into("send-amount", "5")
        self.find("send-button").click()
        self.wait("the refusal", lambda: self.attr("send-status", "data-state") == "error")
        out["refusal"] = self.find("send-error").text
        # A malformed recipient is caught before anything is signed.
        self.type_into("send-to", CAROL.address.upper())
        self.find("send-button").click()
        self.wait("the local refusal", lambda: "bad_address" in self.find("send-error").text)
        out["local_refusal"] = self.find("send-error").text
        self.d.save_screenshot(os.path.join(self.tmp, "refusal.png"))
        return out


def _stub_hash(height):
    return hashlib.sha256(f"stub block {height}".encode()).hexdigest()


class StubNode(resource.Resource):
    """Just enough of a node for the page: the page's files, getHead (with
    whatever justified/finalized the test sets), getBlock and getSupply.
    Block h has hash _stub_hash(h) and links to block h - 1."""

    def __init__(self, height):
        super().__init__()
        self.height = height
        self.finality = {}  # extra getHead members
        self.stamp = lambda h: 1700000000 + h  # block timestamps
        page.install(self)
        self.putChild(b"rpc", _StubRPC(self))

    def head(self):
        return dict({"height": self.height, "hash": _stub_hash(self.height)}, **self.finality)

    def set_finality(self, justified=None, finalized=None):
        self.finality = {name: {"height": h, "hash": _stub_hash(h)}
                         for name, h in (("justified", justified), ("finalized", finalized)) if h is not None}

    def block(self, h):
        return {
            "chain_id": CHAIN_ID, "parent": _stub_hash(h - 1) if h else "00" * 32, "height": h,
            "timestamp": self.stamp(h), "proposer": MINER.address if h else "", "tx_root": "00" * 32,
            "state_root": "00" * 32, "hash": _stub_hash(h), "sig": "11" * 64 if h else "", "txs": [],
            "attestations": [],
        }


class _StubRPC(resource.Resource):
    isLeaf = True

    def __init__(self, stub):
        super().__init__()
        self.stub = stub

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        path = [p.decode() for p in request.postpath]
        if path == ["getHead"]:
            out = self.stub.head()
        elif path == ["getSupply"]:
            out = {"total": 10**12, "receipts": 0}
        elif len(path) == 2 and path[0] == "getBlock" and path[1].isdigit() and int(path[1]) <= self.stub.height:
            out = self.stub.block(int(path[1]))
        else:
            request.setResponseCode(404)
            out = {"error": {"code": "not_found", "message": "the stub has no such thing"}}
        return json.dumps(out).encode()


class _TrackingSite(server.Site):
    """A Site that can close every connection it took (trial wants a clean reactor)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.conns = set()

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        lost = proto.connectionLost

        def connectionLost(reason, proto=proto):
            self.conns.discard(proto)
            return lost(reason)

        proto.connectionLost = connectionLost
        self.conns.add(proto)
        return proto


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BrowserTests(TestCase):
    timeout = 240

    def setUp(self):
        missing = []
        if webdriver is None:
            missing.append("the selenium package (pip install selenium)")
        if CHROMIUM is None:
            missing.append("chromium (apt-get install chromium)")
        if CHROMEDRIVER is None:
            missing.append("chromedriver (apt-get install chromium-driver)")
        if missing:
            message = "the browser test needs " + ", ".join(missing)
            if os.environ.get("CI"):
                raise AssertionError(message + "; .ci/run installs them")
            raise SkipTest(message)

    async def start_node(self):
        """A node proposing every 0.3 s that serves the mock coordinator
        itself (so compute receipts can be claimed and minted)."""
        port = _free_port()
        node = NodeProcess(self, interval=0.3, sections={
            "rpc": {"listen": f"tcp:{port}:interface=127.0.0.1"},
            "coordinator": {
                "url": f"http://127.0.0.1:{port}/rpc", "allow": "127.0.0.1",
                "serve_mock": "yes", "mock_key": "coordinator.key.json",
            },
        })
        COORDINATOR.save(os.path.join(node.basedir, "coordinator.key.json"))
        return await node.start()

    async def mint_receipt(self, node, receipt_id, units):
        """ALICE pays escrow for a job, MINER claims it: units * mint_per_unit is minted."""
        _, bal = await node.get(f"/rpc/getBalance/{ALICE.address}")
        pay = transfer(ALICE, bal["nonce"] + 1, ESCROW, 5000)
        status, out = await node.post("/rpc/sendTx", wire(pay))
        self.assertEqual(status, 200, out)
        await node.wait_included([pay.hash])
        _, mbal = await node.get(f"/rpc/getBalance/{MINER.address}")
        claim = sign_tx(MINER, CHAIN_ID, "RECEIPT_CLAIM", mbal["nonce"] + 1, 2000, sign_claim(
            MINER, CHAIN_ID, receipt_id=receipt_id, job_id="job_42", client_addr=ALICE.address,
            miner_addr=MINER.address, compute_units=units, price=5000, output_hash="sha256:00",
            client_payment_tx=pay.hash))
        status, out = await node.post("/rpc/submitReceipt", wire(claim))
        self.assertEqual(status, 200, out)
        await node.wait_included([claim.hash])
        status, out = await node.get(f"/rpc/getReceipt/{receipt_id}")
        self.assertEqual(status, 200, out)
        return out["paid"]["mint"]

    async def start_stub(self, height):
        stub = StubNode(height)
        site = _TrackingSite(stub)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")

        async def close():
            await port.stopListening()
            for proto in list(site.conns):
                proto.transport.abortConnection()
            await wait_for(lambda: not site.conns, timeout=10, message="the stub's connections to close")

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(close()))
        return stub, f"http://127.0.0.1:{port.getHost().port}"

    @inline
    async def test_finality_on_the_page(self):
        """The finalized and justified heights, and final marks on the
        blocks at or below the finalized height, as getHead says; "–"
        and no marks when it says nothing (a node without finality)."""
        stub, url = await self.start_stub(12)
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        browser = await deferToThread(BrowserDriver, url, tmp)
        self.addCleanup(deferToThread, browser.quit)

        # No finality in getHead: dashes, nothing marked.
        f = await deferToThread(browser.open_stub)
        self.assertEqual([r["height"] for r in f["rows"]], list(range(12, 2, -1)))
        self.assertEqual(f["finalized"], {"text": "–", "height": ""})
        self.assertEqual(f["justified"], {"text": "–", "height": ""})
        self.assertEqual({(r["finalized"], r["mark"]) for r in f["rows"]}, {("0", "")})

        # The node reports finality: the heights show and the blocks up to
        # the finalized one are marked, with no new block needed.
        stub.set_finality(justified=10, finalized=9)
        f = await deferToThread(browser.wait_finality, "finalized 9", lambda f: f["finalized"]["height"] == "9")
        self.assertEqual(f["finalized"]["text"], "9")
        self.assertEqual(f["justified"], {"text": "10", "height": "10"})
        self.assertEqual(f["head"], "12")
        for row in f["rows"]:
            final = row["height"] <= 9
            self.assertEqual((row["finalized"], row["mark"]), ("1", "final") if final else ("0", ""), row)

        # New blocks and finality moving on; these blocks are stamped in
        # milliseconds (as chains with finality stamp them), two hours ago.
        two_hours_ago_ms = int((time.time() - 7200) * 1000)
        stub.stamp = lambda h: two_hours_ago_ms + h
        stub.height = 14
        stub.set_finality(justified=13, finalized=12)
        f = await deferToThread(browser.wait_finality, "head 14, finalized 12",
                                lambda f: f["head"] == "14" and f["finalized"]["height"] == "12")
        self.assertEqual([r["height"] for r in f["rows"]], list(range(14, 4, -1)))
        self.assertEqual([r["height"] for r in f["rows"] if r["finalized"] == "1"], list(range(12, 4, -1)))
        self.assertEqual(f["justified"]["text"], "13")
        self.assertEqual([r["time"] for r in f["rows"][:2]], ["2h ago", "2h ago"])
        await deferToThread(browser.d.save_screenshot, os.path.join(tmp, "finality.png"))

        # A getHead without them again (or with nonsense): back to dashes.
        stub.finality = {"finalized": {"height": "12", "hash": "x"}}
        f = await deferToThread(browser.wait_finality, "dashes again", lambda f: f["finalized"]["height"] == "")
        self.assertEqual((f["finalized"]["text"], f["justified"]["text"]), ("–", "–"))
        self.assertEqual({r["finalized"] for r in f["rows"]}, {"0"})
        self.assertEqual(await deferToThread(browser.severe), [], "the page logged errors")

    @inline
    async def test_page_in_chromium(self):
        node = await self.start_node()
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        screenshot = os.environ.get("AITNODE_TEST_SCREENSHOT") or os.path.join(tmp, "page.png")
        vectors = load_vectors()
        vectors_text = json.dumps({k: vectors[k] for k in ("cbor", "keys", "transfer", "min_fee", "genesis", "block1")})

        browser = await deferToThread(BrowserDriver, node.url, tmp)
        self.addCleanup(deferToThread, browser.quit)

        # The page loads, the head moves, the page's code meets the protocol's vectors.
        out = await deferToThread(browser.open, vectors_text)
        self.assertEqual(out["title"], "aitnode")
        self.assertGreater(out["later_height"], out["first_height"])
        self.assertRegex(out["head_hash"], r"^[0-9a-f]{64}$")
        self.assertEqual(out["chain_id"], node.doc["chain_id"])
        heights = out["block_heights"]
        self.assertEqual(heights, list(range(heights[0], heights[0] - len(heights), -1)), "newest first, no gaps")
        self.assertLessEqual(len(heights), 10)
        for name in ("selftest_builtin", "selftest_doc"):
            self.assertEqual(out[name]["failed"], [], name)
            self.assertTrue(out[name]["ok"], name)
        self.assertEqual(out["json"], [JSON_SAMPLE.replace("\\u00fc", "\u00fc")] * 2)
        # every vector of the document was checked, not just some
        self.assertGreaterEqual(len(out["selftest_doc"]["passed"]),
                                len(vectors["cbor"]["cases"]) + len(vectors["min_fee"]["cases"]) + 5)

        # Finality as the node reports it: "–" from a node without it.
        _, head = await node.get("/rpc/getHead")
        if "finalized" in head:
            f = await deferToThread(browser.wait_finality, "the finalized height",
                                    lambda f: f["finalized"]["height"].isdigit())
            final = int(f["finalized"]["height"])
            self.assertLessEqual(final, int(f["head"]))
            for row in f["rows"]:  # marked exactly up to the height shown (read at one instant)
                self.assertEqual(row["finalized"], "1" if row["height"] <= final else "0", (final, row))
        else:
            f = await deferToThread(browser.finality)
            self.assertEqual(f["finalized"], {"text": "–", "height": ""})
            self.assertEqual({r["finalized"] for r in f["rows"]}, {"0"})

        # A receipt minted while the page is open shows up with what it minted.
        minted = await self.mint_receipt(node, "rcpt-browser-1", 7)
        self.assertEqual(minted, 7 * 1000)
        row = await deferToThread(browser.receipt_row, "rcpt-browser-1", minted)
        self.assertIn(MINER.address[:9], row[2])
        self.assertEqual(row[3], "7")

        # A transfer signed in the browser goes through; the node agrees with the page.
        _, carol_before = await node.get(f"/rpc/getBalance/{CAROL.address}")
        self.assertEqual(carol_before["balance"], 0)
        _, alice_before = await node.get(f"/rpc/getBalance/{ALICE.address}")
        out = await deferToThread(browser.transfer, screenshot)
        self.assertEqual(out["send_state"], "included", f"{out['send_status_text']!r} {out['send_error']!r}")
        self.assertRegex(out["tx_hash"], r"^[0-9a-f]{64}$")
        status, tx = await node.get(f"/rpc/getTx/{out['tx_hash']}")
        self.assertEqual((status, tx["status"]), (200, "included"))
        self.assertEqual(tx["tx"]["type"], "TRANSFER")
        self.assertEqual(tx["tx"]["sender"], ALICE.address)
        self.assertEqual(tx["tx"]["payload"], {"to": CAROL.address, "amount": AMOUNT})
        self.assertEqual(tx["tx"]["nonce"], alice_before["nonce"] + 1)
        _, carol_after = await node.get(f"/rpc/getBalance/{CAROL.address}")
        self.assertEqual(carol_after["balance"], AMOUNT)
        self.assertEqual(out["page_to_balance"], str(AMOUNT))
        _, alice_after = await node.get(f"/rpc/getBalance/{ALICE.address}")
        self.assertEqual(alice_after["balance"], alice_before["balance"] - AMOUNT - tx["tx"]["fee"])
        self.assertEqual(out["page_from_balance"], str(alice_after["balance"]))
        self.assertIn(f"+{AMOUNT:,}", out["history_text"])
        self.assertEqual(out["severe"], [], "the page logged errors (CSP violations, exceptions, failed loads)")
        self.assertGreater(os.path.getsize(screenshot), 10000)

        # Refusals are shown with their codes.
        out = await deferToThread(browser.refusals)
        self.assertIn("insufficient_balance", out["refusal"])
        self.assertIn("bad_address", out["local_refusal"])
