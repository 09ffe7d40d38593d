"""The light client (aitnode.light, aitnode.light_proofs) and `ait verify`,
against an honest in-process node and a lying front that tampers with its
answers: each lie is caught, by the library and by the CLI, with its own
message; honest answers verify.

The node is real (tests.common.make_node) and so are its answers: every
getHeaders, getProof and getTxProof goes through its RPC routes and Site
in process (StubTreq), and an error answer becomes the LightError the
CLI's HTTP fetch gives (cli_verify.answer).  Only the blocks are made at
the chain level, so that the test chooses who votes for each.
"""

import hashlib
import io
import json
import os
import sys
import urllib.parse

from twisted.trial.unittest import SynchronousTestCase

from aitnode import cli, cli_verify, finality as F, light, receipts as R
from aitnode.blocks import block_hash
from aitnode.encoding import canonical
from aitnode.genesis import Genesis
from aitnode.light import LightClient, LightError
from aitnode.light_proofs import verify_balance, verify_receipt, verify_tx
from aitnode.proofs import STATE_NAMESPACES
from aitnode.steps import run_steps
from aitnode.tx import parse_tx, sign_tx

from tests import independent_client as ic
from tests.common import (ALICE, BOB, CHAIN_ID, COORDINATOR, ESCROW, MINER, genesis_doc, key, make_node, make_rpc,
                          transfer)
from tests.test_state import reference_root

KEYS = [key(90 + i) for i in range(3)]
X = key(99)  # never an authority
BY_ADDRESS = {k.address: k for k in KEYS + [X]}
BASE = "http://node"


# -- an honest node, and the chain it serves ------------------------------------------

def doc():
    return genesis_doc(authorities=KEYS, epoch_length=4)


class Served:
    """An honest node of three authorities and its RPC: blocks built at the
    chain level (each by the authority in turn, carrying the votes of
    `voters` for its parent) and committed through chain.commit; called
    with a path, the node's answer to a GET of it."""

    def __init__(self, testcase):
        self.testcase = testcase
        self.node = make_node(testcase, doc=doc(), key=KEYS[0])
        self.chain = self.node.chain
        _, self.http = make_rpc(self.node)
        self.genesis = Genesis(doc())

    def block(self, txs=(), voters=KEYS, attestations=None):
        height, head = self.chain.head()
        aset = self.chain.authority_set()
        by = BY_ADDRESS[aset.active[(height + 1) % len(aset.active)]]
        source = self.chain.finality().justified
        votes = F.block_votes([F.sign_vote(k, CHAIN_ID, height, head, source.height, source.hash)
                               for k in voters]) if height else []
        block, records, view, failed = run_steps(self.chain.build_steps(
            list(txs), by, 0, votes=votes, attestations=attestations))
        assert not failed, failed
        self.chain.commit(block, records, view)
        return block

    def hash(self, height):
        return self.chain.store.hash_at(height)

    def finalized(self):
        return self.chain.finality().finalized.to_json()

    def __call__(self, path):
        t = self.testcase
        resp = t.successResultOf(self.http.get(BASE + path))
        return cli_verify.answer(path, resp.code, t.successResultOf(resp.content()))

    def proof(self, ns, key, height):
        return self(f"/rpc/getProof/{ns}/{urllib.parse.quote(key, safe='')}?height={height}")


class Lying:
    """An RPC front that tampers with the honest answers: tamper(path,
    answer) returns what it sends instead."""

    def __init__(self, honest, tamper):
        self.honest, self.tamper = honest, tamper
        self.paths = []

    def __call__(self, path):
        self.paths.append(path)
        return self.tamper(path, json.loads(json.dumps(self.honest(path))))


# -- the tests ---------------------------------------------------------------------------

class LightTestBase(SynchronousTestCase):
    """A chain of three authorities, each voting for every block: a
    transfer at block 2, a compute receipt (payment, then claim) at blocks
    3 and 4, eight blocks in all (finalized 6)."""

    def setUp(self):
        self.s = Served(self)
        self.s.block()
        self.transfer = transfer(ALICE, 1, BOB, 777)
        self.s.block([self.transfer])
        self.payment = transfer(ALICE, 2, ESCROW, 5000)
        self.s.block([self.payment])
        claim = R.sign_claim(MINER, CHAIN_ID, receipt_id="rcpt-1", job_id="job-1", client_addr=ALICE.address,
                             miner_addr=MINER.address, compute_units=10, price=5000, output_hash="sha256:00",
                             client_payment_tx=self.payment.hash)
        self.claim = sign_tx(MINER, CHAIN_ID, R.CLAIM, 1, 2000, claim)
        att = R.sign_attestation(COORDINATOR, CHAIN_ID, R.attestation_request(claim))
        self.s.block([self.claim], attestations={self.claim.hash: att})
        for _ in range(4):
            self.s.block()
        self.assertEqual(self.s.finalized()["height"], 6)
        self.cache = os.path.join(self.mktemp(), "light.json")

    def client(self, fetch=None):
        return LightClient.from_genesis(fetch or self.s, self.s.genesis, self.cache)

    def kept(self, height):
        """What a refusal adds when the block it contradicts came from the cache."""
        return (f" (block {height} was verified earlier, kept in {self.cache}: if the chain was started over, "
                "remove that file)")

    def refused(self, fetch, message, check=None):
        """sync (then check(client), if given) fails with message."""
        c = self.client(fetch)
        e = self.assertRaises(LightError, lambda: (c.sync(), check and check(c)))
        self.assertEqual(str(e), message)
        self.assertNotIn("\n", str(e))


class HonestTests(LightTestBase):
    def test_headers_followed_to_the_finalized_block(self):
        point = self.client().sync()
        self.assertEqual((point.height, point.hash), (6, self.s.hash(6)))
        self.assertEqual(point.finality.finalized.height, 4)  # what block 6 itself leaves

    def test_balance_tx_and_receipt_verify(self):
        c = self.client()
        c.sync()
        out = verify_balance(c, ALICE.address)
        self.assertEqual((out["balance"], out["nonce"]), self.s.chain.view().account(ALICE.address))
        self.assertEqual(out["finalized"]["height"], 6)
        self.assertEqual(verify_balance(c, X.address)["balance"], 0)  # absence proven
        out = verify_tx(c, self.transfer.hash)
        self.assertEqual((out["block"]["height"], out["payload"]["amount"]), (2, 777))
        out = verify_receipt(c, "rcpt-1")
        self.assertEqual((out["claim"], out["block"]["height"], out["miner"]), (self.claim.hash, 4, MINER.address))
        self.assertIn("miner_sig", " ".join(out["checked"]))

    def test_the_cache_is_the_next_start(self):
        self.client().sync()
        for _ in range(3):
            self.s.block()
        spy = Lying(self.s, lambda path, answer: answer)
        point = self.client(spy).sync()
        self.assertEqual(point.height, 9)
        self.assertEqual(spy.paths[0], "/rpc/getHeaders?from=6&limit=256")
        with open(self.cache) as f:
            self.assertEqual(json.load(f)["finalized"]["hash"], self.s.hash(9))

    def test_what_an_honest_node_cannot_prove(self):
        c = self.client()
        c.sync()
        # A transaction in no block: the node's own refusal, as the CLI says it.
        e = self.assertRaises(LightError, verify_tx, c, "ab" * 32)
        self.assertEqual(str(e), f"node: unknown_tx: transaction {'ab' * 32} is in no block of this node's chain")
        # Included, but above the finalized block.
        self.s.block([transfer(ALICE, 3, BOB, 5)])
        late = transfer(ALICE, 4, BOB, 6)
        self.s.block([late])
        e = self.assertRaises(LightError, verify_tx, c, late.hash)
        self.assertEqual(str(e), f"tx {late.hash}: its block 10 is not finalized (finalized 6)")

    def test_trusted_block(self):
        h = self.s.hash(4)
        c = LightClient.from_trust(self.s, 4, h, self.cache)
        self.assertEqual(c.sync().height, 6)
        self.assertEqual(verify_balance(c, ALICE.address)["balance"], self.s.chain.view().account(ALICE.address)[0])
        e = self.assertRaises(LightError, LightClient.from_trust, self.s, 4, self.s.hash(3), None)
        self.assertEqual(str(e), f"trusted block 4: the node's header there does not hash to {self.s.hash(3)}")


class DocumentedTreeTests(LightTestBase):
    """What aitnode.jmt's own tests cannot show, since the light client
    checks proofs with aitnode.jmt too: that the node's header commits to
    the root docs/protocol.md 11.2 defines over its whole state, and that
    getProof's proofs hold for a verifier written from the document alone
    (tests/independent_client.py)."""

    def test_served_roots_and_proofs_are_the_documented_ones(self):
        head = self.s.chain.head()[0]
        entries = [(ns, k, v) for ns in STATE_NAMESPACES for k, v in self.s.chain.store.entries(ns)]
        self.assertEqual({ns for ns, _, _ in entries} >= {"acct", "param", "chain", "pay", "rcpt"}, True)
        header = self.s(f"/rpc/getHeaders?from={head}&limit=1")["headers"][0]["header"]
        self.assertEqual(header["state_root"], reference_root(entries))
        for ns, k, v in entries + [("acct", X.address, None), ("rcpt", "rcpt-2", None)]:
            a = self.s.proof(ns, k, head)
            self.assertEqual((a["state_root"], a["value_cbor"]),
                             (header["state_root"], None if v is None else canonical(v).hex()))
            self.assertTrue(ic.check_state_proof(a["state_root"], ns, k, a["value_cbor"], a["proof"]), (ns, k))


def reheader(entry, signer, **changes):
    header = dict(entry["header"], **changes)
    h = block_hash(header)
    return dict(entry, header=header, hash=h, sig=signer.sign(bytes.fromhex(h)).hex())


def on(route, tamper):
    """A tamper for answers of one route only."""
    return lambda path, answer: tamper(path, answer) if path.startswith(route) else answer


class LyingNodeTests(LightTestBase):
    def test_a_changed_balance(self):
        def tamper(path, a):
            if a["namespace"] == "acct":
                a["value"] = [a["value"][0] + 1, a["value"][1]]
                a["value_cbor"] = canonical(a["value"]).hex()
            return a
        self.refused(Lying(self.s, on("/rpc/getProof", tamper)),
                     "balance proof does not match state_root of finalized block 6",
                     lambda c: verify_balance(c, ALICE.address))

    def lie_proof_from(self, height, relabel):
        def tamper(path, a):
            old = self.s.proof(a["namespace"], a["key"], height)
            if relabel:
                old.update(height=a["height"], block_hash=a["block_hash"], state_root=a["state_root"])
            return old
        return Lying(self.s, on("/rpc/getProof", tamper))

    def test_a_proof_from_another_height(self):
        # ALICE's balance at block 3 (after the payment) is not hers at 6 only if
        # something changed since: the claim at 4 did not touch her, so take 2.
        for relabel, message in ((False, "balance proof is for block 2, not finalized block 6"),
                                 (True, "balance proof does not match state_root of finalized block 6")):
            liar = self.lie_proof_from(2, relabel)
            c = self.client(liar)
            c.sync()
            e = self.assertRaises(LightError, verify_balance, c, ALICE.address)
            self.assertEqual(str(e), message)

    def test_a_header_signed_by_a_non_authority(self):
        def tamper(path, a):
            for i, entry in enumerate(a["headers"]):
                if entry["header"]["height"] == 5:
                    a["headers"][i] = reheader(entry, X, proposer=X.address)
            return a
        self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)), "header 5: signature by a non-authority")

    def test_a_header_signed_with_another_key(self):
        def tamper(path, a):
            for i, entry in enumerate(a["headers"]):
                if entry["header"]["height"] == 5:
                    a["headers"][i] = reheader(entry, X)
            return a
        self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)), "header 5: bad proposer signature")

    def test_a_missing_vote(self):
        def tamper(path, a):
            for entry in a["headers"]:
                if entry["header"]["height"] == 5:
                    entry["votes"] = entry["votes"][1:]
            return a
        self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)),
                     "block 6: votes_root does not match the votes served for block 5")

    def test_a_finality_the_votes_do_not_give(self):
        # Blocks 9 and 10 carry two votes of three (valid, but no quorum):
        # a node claiming 8 or 9 finalized is caught by counting them.
        self.s.block()
        self.s.block(voters=KEYS[:2])
        self.s.block(voters=KEYS[:2])
        self.s.block()
        self.assertEqual(self.s.finalized()["height"], 7)
        for claim, message in ((8, "block 9: votes below quorum (2 of 3)"),
                               (9, "block 9: votes below quorum (2 of 3)")):
            def tamper(path, a, claim=claim):
                a["finalized"] = {"height": claim, "hash": self.s.hash(claim)}
                return a
            self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)), message)

    def test_another_chain_or_another_verified_block(self):
        def tamper(path, a):
            a["headers"][0] = reheader(a["headers"][0], X, timestamp=a["headers"][0]["header"]["timestamp"] + 1)
            return a
        liar = Lying(self.s, on("/rpc/getHeaders", tamper))
        self.refused(liar, "node's genesis block is not the trusted one: it serves another chain")
        self.client().sync()
        self.refused(liar, "node's block 6 is not the verified one" + self.kept(6))

    def test_a_chain_started_over_from_the_same_genesis(self):
        # As `./dev devnet --reset` does: the cache's block 6 is nowhere on
        # the new chain; the refusal says where that block came from.
        self.client().sync()
        again = Served(self)
        for _ in range(3):
            again.block()
        self.refused(again, "node serves no header at height 6" + self.kept(6))
        os.remove(self.cache)
        self.assertEqual(self.client(again).sync().height, 1)

    def test_a_stale_finalized_block(self):
        self.client().sync()

        def tamper(path, a):
            a["finalized"] = {"height": 3, "hash": self.s.hash(3)}
            return a
        self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)),
                     "node reports finalized 3 below verified 6" + self.kept(6))

    def test_a_tx_proof_with_another_branch_leaf_transaction_or_block(self):
        other = hashlib.sha256(b"x").hexdigest()
        changed_tx = dict(self.transfer.to_wire(), payload={"to": BOB.address, "amount": 778})
        changed_hash = parse_tx(changed_tx, CHAIN_ID).hash  # the old signature, another payload
        cases = [
            (lambda a: a.update(index=0, count=2, branch=[other]), "tx proof does not match tx_root of block 2"),
            (lambda a: a.update(branch=a["branch"] + [other]), "tx proof does not match tx_root of block 2"),
            (lambda a: a.update(leaf=other), "tx proof: its leaf is not the transaction's"),
            (lambda a: a.update(tx=changed_tx),
             f"tx proof: the transaction served hashes to {changed_hash}, not {self.transfer.hash}"),
            (lambda a: a.update(height=3), "tx proof names another block than block 3 of the verified chain"),
            (lambda a: a.update(height=7, block_hash=self.s.hash(7)),
             f"tx {self.transfer.hash}: its block 7 is not finalized (finalized 6)"),
        ]
        for change, message in cases:
            c = self.client(Lying(self.s, on("/rpc/getTxProof", lambda path, a: change(a) or a)))
            c.sync()
            e = self.assertRaises(LightError, verify_tx, c, self.transfer.hash)
            self.assertEqual(str(e), message)

    def test_a_receipt_whose_payment_paid_another(self):
        def tamper(path, a):
            if a["namespace"] == "pay":
                a["value"] = dict(a["value"], claimed="rcpt-other")
                a["value_cbor"] = canonical(a["value"]).hex()
            return a
        c = self.client(Lying(self.s, on("/rpc/getProof", tamper)))
        c.sync()
        e = self.assertRaises(LightError, verify_receipt, c, "rcpt-1")
        self.assertEqual(str(e), "payment proof does not match state_root of finalized block 6")

    def test_an_unrecorded_receipt_is_proven_absent(self):
        c = self.client()
        c.sync()
        e = self.assertRaises(LightError, verify_receipt, c, "rcpt-2")
        self.assertEqual(str(e), "receipt 'rcpt-2' is not recorded at finalized block 6 (absence proven)")


class CliTests(LightTestBase):
    """`ait verify` through cli.main, its HTTP getter replaced by the fronts."""

    def run_cli(self, fetch, *argv, start=None):
        self.patch(cli.cli_verify, "http_fetch", lambda node: fetch)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        start = start or ["--trust", f"0:{self.s.genesis.hash}"]
        code = cli.main(["verify", *argv, *start, "--cache", self.cache])
        return code, out.getvalue(), err.getvalue()

    def test_from_the_genesis_file_then_the_cache_alone(self):
        path = os.path.join(self.mktemp())
        with open(path, "w") as f:
            json.dump(doc(), f)
        code, out, err = self.run_cli(self.s, "balance", ALICE.address, start=["--genesis", path])
        self.assertEqual((code, err), (0, ""))
        self.assertIn("verified at finalized block 6", out)
        self.s.block()
        code, out, err = self.run_cli(self.s, "tx", self.transfer.hash, start=[])
        self.assertEqual((code, err), (0, ""))
        self.assertIn("verified at finalized block 7", out)

    def test_wait_follows_the_chain_until_the_transaction_is_final(self):
        """A transaction in the head block, not final yet: refused at once
        with the reason, and with --wait verified once blocks finalize it
        (each pause of the wait lets the chain go on here)."""
        tx = transfer(ALICE, 3, BOB, 4)
        height = self.s.block([tx])["header"]["height"]
        code, _, err = self.run_cli(self.s, "tx", tx.hash)
        self.assertEqual(code, 1)
        self.assertIn(f"tx {tx.hash}: its block {height} is not finalized (finalized {height - 2})", err)
        now = [0.0]
        self.patch(cli.cli_verify.time, "monotonic", lambda: now[0])
        self.patch(cli.cli_verify.time, "sleep", lambda s: (now.__setitem__(0, now[0] + s), self.s.block()))
        code, out, err = self.run_cli(self.s, "tx", tx.hash, "--wait", "10")
        self.assertEqual((code, err, now[0]), (0, "", 2.0))
        self.assertIn(f"verified at finalized block {height}", out)
        self.assertEqual(now[0], 2.0)  # two more blocks finalize it
        # Never past the time given: the last reason stands.
        code, _, err = self.run_cli(self.s, "receipt", "rcpt-9", "--wait", "1.5")
        self.assertEqual(code, 1)
        self.assertIn("'rcpt-9' is not recorded at finalized block", err)
        self.assertLessEqual(now[0], 2.0 + 1.5)

    def test_honest(self):
        code, out, err = self.run_cli(self.s, "balance", ALICE.address)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("verified at finalized block 6", out)
        self.assertIn(f"balance {self.s.chain.view().account(ALICE.address)[0]}", out)
        code, out, _ = self.run_cli(self.s, "tx", self.transfer.hash, "--json")
        self.assertEqual((code, json.loads(out)["block"]["height"]), (0, 2))
        code, out, _ = self.run_cli(self.s, "receipt", "rcpt-1")
        self.assertEqual(code, 0)
        self.assertIn("checked: miner_sig is", out)
        self.s.block()
        code, out, err = self.run_cli(self.s, "balance", BOB.address, start=[])  # the cache alone
        self.assertEqual((code, err), (0, ""))
        self.assertIn("verified at finalized block 7", out)

    def test_each_lie_its_own_line(self):
        def balance(path, a):
            if a["namespace"] == "acct":
                a["value"] = [1, 1]
                a["value_cbor"] = canonical(a["value"]).hex()
            return a

        def non_authority(path, a):
            a["headers"] = [reheader(e, X, proposer=X.address) if e["header"]["height"] == 5 else e
                            for e in a["headers"]]
            return a

        def missing_vote(path, a):
            for e in a["headers"]:
                if e["header"]["height"] == 5:
                    e["votes"] = e["votes"][:-1]
            return a

        def other_height(path, a):
            return self.s.proof(a["namespace"], a["key"], 2) if a["namespace"] == "acct" else a

        cases = [
            (on("/rpc/getProof", balance), "balance proof does not match state_root of finalized block 6"),
            (on("/rpc/getProof", other_height), "balance proof is for block 2, not finalized block 6"),
            (on("/rpc/getHeaders", non_authority), "header 5: signature by a non-authority"),
            (on("/rpc/getHeaders", missing_vote), "block 6: votes_root does not match the votes served for block 5"),
        ]
        for tamper, message in cases:
            if os.path.exists(self.cache):
                os.remove(self.cache)
            code, out, err = self.run_cli(Lying(self.s, tamper), "balance", ALICE.address)
            self.assertEqual((code, out, err), (1, "", f"ait: error: {message}\n"))
        self.run_cli(self.s, "balance", ALICE.address)

        def stale(path, a):
            a["finalized"] = {"height": 2, "hash": self.s.hash(2)}
            return a
        code, _, err = self.run_cli(Lying(self.s, on("/rpc/getHeaders", stale)), "balance", ALICE.address)
        self.assertEqual((code, err), (1, f"ait: error: node reports finalized 2 below verified 6{self.kept(6)}\n"))


class AnswerTests(SynchronousTestCase):
    """cli_verify.answer: what the CLI makes of a node's HTTP answer."""

    def test_error_answers_are_one_line(self):
        def said(status, body):
            return str(self.assertRaises(LightError, cli_verify.answer, "/rpc/x", status, body))
        self.assertEqual(cli_verify.answer("/rpc/x", 200, b'{"a": 1}'), {"a": 1})
        self.assertEqual(said(404, b'{"error": {"code": "unknown_tx", "message": "no\\nsuch  tx"}}'),
                         "node: unknown_tx: no such tx")
        self.assertEqual(said(400, json.dumps({"error": {"code": "x", "message": "y" * 1000}}).encode()),
                         "node: x: " + "y" * (cli_verify.MAX_SAID - 3))
        self.assertEqual(said(502, b"<html>bad gateway</html>"), "node: HTTP 502 for /rpc/x")
        self.assertEqual(said(200, b"<html>"), "node: answer to /rpc/x is not JSON")
        self.patch(cli_verify, "MAX_ANSWER", 4)
        self.assertEqual(said(200, b"[1, 2]"), "node: answer to /rpc/x is over 4 bytes")


def update(sender, action, who):
    return sign_tx(sender, CHAIN_ID, "AUTHORITY_UPDATE", 1, 0,
                   {"action": action, "address": who.address, "public_key": who.public_key.hex()})


class SetChangeTests(LightTestBase):
    """X is added by all three at block 9; the epoch ends at 12, so block
    13 carries the new set of four."""

    def change(self, voters_at_13=KEYS):
        self.s.block([update(k, "add", X) for k in KEYS])
        for _ in range(3):
            self.s.block()
        self.assertEqual(self.s.chain.head()[0], 12)
        self.assertIn("authorities", self.s.block(voters=voters_at_13))
        for _ in range(4):
            self.s.block()

    def test_the_new_set_proven_and_followed(self):
        self.client().sync()  # to 6, under the old set
        self.change()
        spy = Lying(self.s, lambda path, answer: answer)
        point = self.client(spy).sync()
        self.assertEqual(point.height, self.s.finalized()["height"])
        self.assertGreater(point.height, 13)
        self.assertEqual(len(point.set), 4)
        self.assertIn("/rpc/getProof/chain/authorities?height=12", spy.paths)

    def test_a_set_the_parent_state_does_not_hold(self):
        self.change()
        fake = [{"address": X.address, "public_key": X.public_key.hex(), "jailed": False}]

        def tamper(path, a):
            for i, e in enumerate(a["headers"]):
                if e["header"]["height"] == 13:
                    a["headers"][i] = dict(reheader(e, X, proposer=X.address,
                                                    authorities_hash=light.C.authorities_hash(fake)),
                                           authorities=fake)
            return a
        self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)),
                     "header 13: the set it carries is not the one block 12's state commits to")

    def test_a_change_the_previous_set_did_not_justify(self):
        self.change(voters_at_13=KEYS[:2])
        self.refused(self.s, "block 13: authority set change not justified by the previous set "
                             "(votes for block 12: 2 of 3)")


class LayoutTests(SynchronousTestCase):
    def test_the_light_client_needs_no_twisted_and_no_storage(self):
        from tests.test_architecture import FRAMEWORKS, PKG, imports

        for name in ("light", "light_proofs"):
            for imp in imports(os.path.join(PKG, f"{name}.py")):
                self.assertNotIn(imp.split(".")[0], FRAMEWORKS | {"lmdb"}, (name, imp))
                self.assertNotIn(imp, ("aitnode.store", "aitnode.local", "aitnode.state", "aitnode.chain"), (name, imp))
