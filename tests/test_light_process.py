"""`ait verify` as a user runs it, against a real node process (issue 11).

A node (`twistd aitnode`, tests.procs.NodeProcess, one authority: its own
votes finalize its blocks) and the mock coordinator
(tests.test_receipts_process.CoordinatorProcess) run on loopback.  Alice
pays Bob, pays escrow, and the miner claims a receipt for that payment.
Then the real CLI (`python -m aitnode.cli verify ...`, a subprocess run
without blocking the reactor) verifies the balance, the transfer and the
receipt from the genesis file: exit 0, what it checked, the finalized
height.

Then it asks through a lying front: an HTTP resource in the test process
that forwards each GET to the node (treq) and tampers with the answer.
For every lie the CLI exits 1 with one line on stderr naming what did not
verify.  Every wait is bounded; the processes are killed in cleanup.
"""

import hashlib
import json
import os
import sys

import treq
from twisted.internet import defer, reactor, utils
from twisted.trial import unittest
from twisted.web import resource, server

from aitnode.blocks import block_hash
from aitnode.encoding import canonical
from aitnode.receipts import CLAIM, sign_claim
from aitnode.tx import sign_tx
from tests.common import ALICE, BOB, CHAIN_ID, ESCROW, MINER, genesis_doc, key, transfer, wire
from tests.procs import REPO_ROOT, NodeProcess, inline, pool, wait_for
from tests.test_receipts_process import CoordinatorProcess

X = key(99)  # never an authority
PRICE = 5000


class Front(resource.Resource):
    """A lying node: each GET forwarded to the node at url, its 200 answer
    given to tamper(path, answer, fetch) (None: the honest answer), which
    returns what is sent instead (a JSON value, or bytes as they are).
    fetch(path) is the node's own answer to another path.  Keeps the
    finalized block its first getHeaders answer reported (the one the
    light client aims at, as sent), since the node's finality moves on
    meanwhile."""

    isLeaf = True

    def __init__(self, url):
        super().__init__()
        self.url = url
        self.tamper = None
        self.first_finalized = None

    def reset(self, tamper=None):
        self.tamper, self.first_finalized = tamper, None

    async def fetch(self, path):
        resp = await treq.get(self.url + path, pool=pool(), timeout=15)
        return resp.code, await treq.content(resp)

    async def answer(self, path):
        code, body = await self.fetch(path)
        if code != 200:
            return code, body
        out = json.loads(body)
        if self.tamper is not None:
            out = await self.tamper(path, out, self.fetch)
        if path.startswith("/rpc/getHeaders") and self.first_finalized is None and not isinstance(out, bytes):
            self.first_finalized = out["finalized"]
        return 200, out if isinstance(out, bytes) else json.dumps(out).encode()

    def render_GET(self, request):
        def send(result):
            code, body = result
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"application/json")
            request.write(body)
            request.finish()

        def failed(f):
            request.setResponseCode(599)
            request.write(f.getErrorMessage().encode())
            request.finish()

        defer.ensureDeferred(self.answer(request.uri.decode())).addCallbacks(send, failed)
        return server.NOT_DONE_YET


def on(route, change):
    """A tamper of route's answers only: change(answer) edits it in place
    (or returns what is sent instead)."""
    async def tamper(path, answer, fetch):
        if not path.startswith(route):
            return answer
        out = change(answer)
        return answer if out is None else out
    return tamper


def reheader(entry, signer, **changes):
    header = dict(entry["header"], **changes)
    h = block_hash(header)
    return dict(entry, header=header, hash=h, sig=signer.sign(bytes.fromhex(h)).hex())


def at_height(height, change):
    """A change of the getHeaders entry of block height."""
    def edit(answer):
        answer["headers"] = [change(e) or e if e["header"]["height"] == height else e for e in answer["headers"]]
    return edit


class LightProcessTests(unittest.TestCase):
    timeout = 180

    async def ait(self, *argv):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AITNODE_", "AIT_"))}
        env["PYTHONPATH"] = REPO_ROOT
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "aitnode.cli", *argv], env=env, path=REPO_ROOT)
        return code, out.decode(), err.decode()

    async def verify(self, url, what, ref, cache=None, start=None):
        return await self.ait("verify", what, ref, "--node", url, *(start or ["--genesis", self.node.genesis_path]),
                              "--cache", cache or os.path.abspath(os.path.join(self.mktemp(), "light.json")))

    async def ok(self, answer):
        status, body = await answer
        self.assertEqual(status, 200, body)
        return body

    async def send(self, tx, route="/rpc/sendTx"):
        self.assertEqual(await self.ok(self.node.post(route, wire(tx))), {"txHash": tx.hash})
        return (await self.node.wait_included([tx.hash]))[tx.hash]["block"]["height"]

    def listen(self, front):
        port = reactor.listenTCP(0, server.Site(front), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @inline
    async def test_verify_honest_then_every_lie_refused(self):
        coordinator = await CoordinatorProcess(self).start()
        self.node = node = NodeProcess(self, sections={"coordinator": {"url": coordinator.url, "allow": "127.0.0.1"}},
                                       interval=0.2)
        await node.start()

        # A transfer, a payment to escrow and the miner's claim of it.
        pay_bob = transfer(ALICE, 1, BOB, 777)
        bob_block = await self.send(pay_bob)
        payment = transfer(ALICE, 2, ESCROW, PRICE)
        await self.send(payment)
        claim = sign_claim(MINER, CHAIN_ID, receipt_id="receipt-1", job_id="job_17", client_addr=ALICE.address,
                           miner_addr=MINER.address, compute_units=7, price=PRICE, output_hash="sha256:" + "5e" * 32,
                           client_payment_tx=payment.hash)
        claim_tx = sign_tx(MINER, CHAIN_ID, CLAIM, 1, 1000, claim)
        claim_block = await self.send(claim_tx, "/rpc/submitReceipt")

        async def finalized():
            head = await node.head()
            return head["finalized"]["height"] >= claim_block and head

        await wait_for(finalized, timeout=30, message=f"block {claim_block} to be finalized")
        bob = (await self.ok(node.get(f"/rpc/getBalance/{BOB.address}")))["balance"]
        receipt = await self.ok(node.get("/rpc/getReceipt/receipt-1"))

        # Honest answers verify, from the genesis file.
        code, out, err = await self.verify(node.url, "balance", BOB.address)
        self.assertEqual((code, err), (0, ""), out)
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^verified at finalized block \d+ \([0-9a-f]{64}\):$")
        fin = int(lines[0].split()[4])
        self.assertGreaterEqual(fin, claim_block)
        self.assertEqual(lines[1:], [
            f"  {BOB.address}: balance {bob}, nonce 0",
            f"  checked: headers followed to finalized block {fin}",
            f"  checked: acct/{BOB.address} present in its state (proof against state_root)"])

        code, out, err = await self.verify(node.url, "tx", pay_bob.hash)
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn(f"  TRANSFER {pay_bob.hash} in block {bob_block} at index 0\n", out)
        self.assertIn(f"  checked: block {bob_block} linked to it by parent hashes\n", out)
        self.assertIn(f"  checked: tx {pay_bob.hash} is leaf 0 of 1 of block {bob_block}'s tx_root\n", out)

        code, out, err = await self.verify(node.url, "receipt", "receipt-1")
        self.assertEqual((code, err), (0, ""), out)
        paid = receipt["paid"]
        self.assertIn(f"  receipt receipt-1: claim {claim_tx.hash} in block {claim_block}, miner {MINER.address} "
                      f"paid {paid['miner_paid']} (minted {paid['mint']})\n", out)
        for check in (f"tx {claim_tx.hash} is leaf 0 of 1 of block {claim_block}'s tx_root (with its attestation)",
                      "the attestation is signed by that key and matches the claim",
                      f"miner_sig is {MINER.address}'s signature of the claim",
                      f"pay/{payment.hash} claimed by this receipt and no other (proof against state_root)"):
            self.assertIn(f"  checked: {check}\n", out)

        # --json, and the cache alone as the next start.
        cache = os.path.abspath(os.path.join(self.mktemp(), "light.json"))
        code, out, err = await self.verify(node.url, "receipt", "receipt-1", cache=cache)
        self.assertEqual((code, err), (0, ""))
        code, out, err = await self.ait("verify", "balance", ALICE.address, "--node", node.url, "--cache", cache,
                                        "--json")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["nonce"], 2)
        verified = json.loads(out)["finalized"]["height"]

        # What an honest node cannot prove: one line, exit 1.
        code, out, err = await self.verify(node.url, "tx", "ab" * 32)
        self.assertEqual((code, out, err), (1, "", f"ait: error: node: unknown_tx: transaction {'ab' * 32} "
                                                    "is in no block of this node's chain\n"))
        code, out, err = await self.verify(node.url, "receipt", "receipt-2")
        self.assertEqual((code, out), (1, ""))
        self.assertRegex(err, r"^ait: error: receipt 'receipt-2' is not recorded at finalized block \d+ "
                              r"\(absence proven\)\n$")

        # The genesis file of another chain.
        other = os.path.abspath(self.mktemp())
        with open(other, "w") as f:
            json.dump(genesis_doc(block_interval_ms=11), f)
        code, out, err = await self.verify(node.url, "balance", BOB.address, start=["--genesis", other])
        self.assertEqual((code, out, err),
                         (1, "", "ait: error: node's genesis block is not the trusted one: it serves another chain\n"))

        # Through the lying front.
        front = Front(node.url)
        url = self.listen(front)

        async def lie(tamper, what, ref, message, cache=None):
            front.reset(tamper)
            code, out, err = await self.verify(url, what, ref, cache=cache)
            fin = front.first_finalized and front.first_finalized["height"]
            self.assertEqual((code, out, err), (1, "", f"ait: error: {message(fin)}\n"), what)

        front.reset()
        code, out, err = await self.verify(url, "balance", BOB.address)
        self.assertEqual((code, err), (0, ""))  # the front itself is honest until told

        def changed_balance(a):
            if a["namespace"] == "acct":
                a["value"] = [a["value"][0] + 1, a["value"][1]]
                a["value_cbor"] = canonical(a["value"]).hex()
        await lie(on("/rpc/getProof", changed_balance), "balance", BOB.address,
                  lambda fin: f"balance proof does not match state_root of finalized block {fin}")

        async def older_proof(path, a, fetch):
            if not path.startswith("/rpc/getProof/acct/"):
                return a
            code, body = await fetch(path.replace(f"height={a['height']}", f"height={bob_block}"))
            return json.loads(body)
        await lie(older_proof, "balance", BOB.address,
                  lambda fin: f"balance proof is for block {bob_block}, not finalized block {fin}")

        await lie(on("/rpc/getHeaders", at_height(2, lambda e: reheader(e, X, proposer=X.address))),
                  "balance", BOB.address, lambda fin: "header 2: signature by a non-authority")
        await lie(on("/rpc/getHeaders", at_height(2, lambda e: reheader(e, X))),
                  "balance", BOB.address, lambda fin: "header 2: bad proposer signature")
        await lie(on("/rpc/getHeaders", at_height(2, lambda e: e.update(votes=e["votes"][1:]))),
                  "balance", BOB.address, lambda fin: "block 3: votes_root does not match the votes served for block 2")

        claimed = []

        def claims_more(a):
            # The head claimed finalized, and nothing served above it (later
            # pages of a live node would finalize it after all).
            claimed[:] = claimed or [a["head"]]
            a["finalized"] = claimed[0]
            a["headers"] = [e for e in a["headers"] if e["header"]["height"] <= claimed[0]["height"]]
        await lie(on("/rpc/getHeaders", claims_more), "balance", BOB.address,
                  lambda fin: f"node reports finalized {fin} but serves no votes for block {fin}")

        def stale(a):
            a["finalized"] = {"height": 1, "hash": a["headers"][0]["hash"]}
        kept = f"block {verified} was verified earlier, kept in {cache}: if the chain was started over, remove that file"
        await lie(on("/rpc/getHeaders", stale), "balance", BOB.address,
                  lambda fin: f"node reports finalized 1 below verified {verified} ({kept})", cache=cache)

        def other_branch(a):
            a.update(index=0, count=2, branch=[hashlib.sha256(b"x").hexdigest()])
        await lie(on("/rpc/getTxProof", other_branch), "tx", pay_bob.hash,
                  lambda fin: f"tx proof does not match tx_root of block {bob_block}")

        def other_attestation(a):
            a["attestation"] = dict(a["attestation"], sig="00" * 64)
        await lie(on("/rpc/getTxProof", other_attestation), "receipt", "receipt-1",
                  lambda fin: "tx proof: its leaf is not the transaction's (with its attestation)")

        def paid_another(a):
            if a["namespace"] == "pay":
                a["value"] = dict(a["value"], claimed="receipt-other")
                a["value_cbor"] = canonical(a["value"]).hex()
        await lie(on("/rpc/getProof", paid_another), "receipt", "receipt-1",
                  lambda fin: f"payment proof does not match state_root of finalized block {fin}")

        await lie(on("/rpc/getHeaders", lambda a: b"<html>"), "balance", BOB.address,
                  lambda fin: "node: answer to /rpc/getHeaders?from=0&limit=256 is not JSON")
