"""The light client (aitnode.light, aitnode.light_proofs) and `ait verify`,
against an honest in-process node and a lying front that tampers with its
answers: each lie is caught, by the library and by the CLI, with its own
message; honest answers verify.

The answers of getHeaders, getProof and getTxProof are built here from
the node's store, as docs/protocol.md section 12 shapes them (the routes
land in another branch).  The state tree is the reference definition of
docs/protocol.md 11.2 written here (ref_root, ref_proof).  While the node
still commits to the multiset root (before the state tree is merged), the
chain it serves is *re-rooted*: every header's state_root becomes the
reference root of the state it left, and the headers and votes are
re-signed by the same keys (see Served); once the node's roots are the
tree's, Served is the node's chain as it is.  Likewise the proofs are
checked with aitnode.jmt when it exists, else with ref_verify.
"""

import hashlib
import importlib.util
import io
import json
import os
import sys
import types
import urllib.parse

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aitnode import cli, finality as F, light, receipts as R
from aitnode.blocks import block_hash, tx_leaf
from aitnode.encoding import canonical
from aitnode.genesis import Genesis
from aitnode.light import LightClient, LightError
from aitnode.light_proofs import verify_balance, verify_receipt, verify_tx
from aitnode.steps import run_steps
from aitnode.tx import sign_tx

from tests.common import ALICE, BOB, CHAIN_ID, COORDINATOR, ESCROW, MINER, genesis_doc, key, make_node, transfer

KEYS = [key(90 + i) for i in range(3)]
X = key(99)  # never an authority
BY_ADDRESS = {k.address: k for k in KEYS + [X]}
NAMESPACES = ("acct", "param", "chain", "authkey", "authupd", "evid", "pay", "rcpt")
JMT_MERGED = importlib.util.find_spec("aitnode.jmt") is not None


# -- the state tree's reference definition (docs/protocol.md 11.2) -----------------

def H(data):
    return hashlib.sha256(data).digest()


EMPTY = bytes(32)


def key_hash(ns, key):
    return H(canonical([ns, key]))


def value_hash(value):
    return H(canonical(value))


def bit(k, d):
    return (k[d // 8] >> (7 - d % 8)) & 1


def ref_node(items, d):
    """root(S, d) of the reference definition; items: [(key_hash, value_hash)]."""
    if not items:
        return EMPTY
    if len(items) == 1:
        return H(b"\x00" + items[0][0] + items[0][1])
    return H(b"\x01" + ref_node([i for i in items if not bit(i[0], d)], d + 1)
             + ref_node([i for i in items if bit(i[0], d)], d + 1))


def ref_items(state):
    return [(key_hash(ns, k), value_hash(v)) for (ns, k), v in state.items()]


def ref_root(state):
    return ref_node(ref_items(state), 0).hex()


def ref_proof(state, kh):
    """The proof of kh in the binary form of 11.2."""
    items, sibs, d = ref_items(state), [], 0
    while len(items) > 1:
        side = [i for i in items if bit(i[0], d) == bit(kh, d)]
        other = [i for i in items if bit(i[0], d) != bit(kh, d)]
        sibs.append(ref_node(other, d + 1))
        items, d = side, d + 1
    leaf = items[0] if items else None
    out = bytes([1]) + leaf[0] + leaf[1] if leaf else bytes([0])
    out += len(sibs).to_bytes(2, "big")
    bitmap = bytearray((len(sibs) + 7) // 8)
    for i, s in enumerate(sibs):
        if s != EMPTY:
            bitmap[i // 8] |= 0x80 >> (i % 8)
    return out + bytes(bitmap) + b"".join(s for s in sibs if s != EMPTY)


class ProofError(Exception):
    pass


def ref_verify(root, kh, vh, proof):
    """Verify of 11.2, written from the spec (the stand-in for aitnode.jmt)."""
    try:
        has_leaf, pos = proof[0], 1
        if has_leaf not in (0, 1):
            raise ProofError("bad leaf flag")
        leaf = (proof[1:33], proof[33:65]) if has_leaf else None
        pos += 64 * has_leaf
        n = int.from_bytes(proof[pos:pos + 2], "big")
        pos += 2
        nb = (n + 7) // 8
        bitmap = proof[pos:pos + nb]
        pos += nb
    except IndexError:
        raise ProofError("short")
    if n > 256 or len(bitmap) != nb:
        raise ProofError("bad n")
    present = [bool(bitmap[i // 8] & (0x80 >> (i % 8))) for i in range(n)]
    if nb and any(bitmap[-1] & (0x80 >> j) for j in range(n - 8 * (nb - 1), 8)):
        raise ProofError("unused bits")
    if len(proof) != pos + 32 * sum(present):
        raise ProofError("length")
    sibs = []
    for p in present:
        sibs.append(proof[pos:pos + 32] if p else EMPTY)
        pos += 32 if p else 0
    if vh is not None:
        if leaf != (kh, vh):
            raise ProofError("leaf")
    elif leaf is not None and (leaf[0] == kh or any(bit(leaf[0], i) != bit(kh, i) for i in range(n))):
        raise ProofError("absence")
    h = EMPTY if leaf is None else H(b"\x00" + leaf[0] + leaf[1])
    for i in range(n - 1, -1, -1):
        h = H(b"\x01" + h + sibs[i]) if not bit(kh, i) else H(b"\x01" + sibs[i] + h)
    if h != root:
        raise ProofError("root")


REF_JMT = types.SimpleNamespace(key_hash=key_hash, value_hash=value_hash, verify_proof=ref_verify, ProofError=ProofError)


def ref_branch(leaves, index):
    """The tx_root branch of leaves[index] (12, getTxProof), built level by level."""
    level, idx, out = [H(b"\x00" + bytes.fromhex(x)) for x in leaves], index, []
    while len(level) > 1:
        if not (idx == len(level) - 1 and len(level) % 2):
            out.append(level[idx ^ 1].hex())
        nxt = [H(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, idx = nxt, idx // 2
    return out


# -- an honest node, and the chain it serves ------------------------------------------

def doc():
    return genesis_doc(authorities=KEYS, epoch_length=4)


class Served:
    """The honest node's chain as answered: blocks built at the chain level
    (each by the authority in turn, carrying the votes of `voters` for its
    parent), the whole state after each block kept for proofs.  While the
    node's roots are not the tree's, every block is re-rooted and re-signed
    (see the module doc)."""

    def __init__(self, testcase):
        self.node = make_node(testcase, doc=doc(), key=KEYS[0])
        self.chain = self.node.chain
        g = Genesis(doc())
        self.states = {0: {(ns, k): v for ns, k, v in g.entries}}
        self.reroot = g.header["state_root"] != ref_root(self.states[0])
        self.new_hash = {}  # the node's block hash -> the served one
        self.blocks = {}  # height -> served block record
        self.genesis = types.SimpleNamespace(header=None, hash=None, members=g.members, params=g.params)
        self._serve(0)
        self.genesis.header, self.genesis.hash = self.blocks[0]["header"], self.blocks[0]["hash"]

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
        self.states[block["header"]["height"]] = {
            (ns, k): v for ns in NAMESPACES for k, v in self.chain.store.entries(ns)}
        self._serve(block["header"]["height"])
        return block

    def _served_state(self, height):
        state = dict(self.states[height])
        fin = state.get(("chain", "finality"))
        if fin is not None and self.reroot:
            state[("chain", "finality")] = {k: {"height": c["height"], "hash": self.new_hash[c["hash"]]}
                                            for k, c in fin.items()}
        return state

    def _serve(self, height):
        stored = self.chain.store.block_at(height)
        self.states[height] = self._served_state(height)
        if not self.reroot:
            self.blocks[height] = stored
            self.new_hash[stored["hash"]] = stored["hash"]
            return
        header = dict(stored["header"], state_root=ref_root(self.states[height]))
        votes = []
        for w in stored.get("votes", []):
            v = F.sign_vote(BY_ADDRESS[w["voter"]], CHAIN_ID, w["height"], self.new_hash[w["hash"]],
                            w["source_height"], self.new_hash[w["source_hash"]])
            votes.append(v.to_wire())
        if height:
            header.update(parent=self.new_hash[stored["header"]["parent"]], votes_root=F.votes_root(votes))
        h = block_hash(header)
        sig = BY_ADDRESS[header["proposer"]].sign(bytes.fromhex(h)).hex() if height else ""
        self.blocks[height] = dict(stored, header=header, hash=h, sig=sig, votes=votes)
        self.new_hash[stored["hash"]] = h

    def finalized(self):
        fin = self.chain.finality().finalized
        return {"height": fin.height, "hash": self.new_hash[fin.hash]}

    # -- the answers (docs/protocol.md 12) ------------------------------------------
    def __call__(self, path):
        url = urllib.parse.urlsplit(path)
        q = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[2:]]
        return getattr(self, parts[0])(*parts[1:], **q)

    def getHeaders(self, **q):
        start, limit = int(q["from"]), int(q.get("limit", 64))
        head = self.chain.head()[0]
        out = []
        for h in range(start, min(head, start + limit - 1) + 1):
            b = self.blocks[h]
            entry = {"header": b["header"], "hash": b["hash"], "sig": b["sig"],
                     "votes": self.blocks[h + 1]["votes"] if h < head else []}
            if "authorities" in b:
                entry["authorities"] = b["authorities"]
            out.append(entry)
        return {"headers": out, "head": {"height": head, "hash": self.blocks[head]["hash"]},
                "finalized": self.finalized()}

    def getProof(self, ns, key, height=None):
        height = self.finalized()["height"] if height is None else int(height)
        state = self.states[height]
        value = state.get((ns, key))
        return {"height": height, "block_hash": self.blocks[height]["hash"],
                "state_root": self.blocks[height]["header"]["state_root"], "namespace": ns, "key": key,
                "value": value, "value_cbor": None if value is None else canonical(value).hex(),
                "proof": ref_proof(state, key_hash(ns, key)).hex()}

    def getTxProof(self, tx_hash):
        rec = self.chain.store.tx_record(tx_hash)
        if rec is None:
            raise LightError("node: unknown_tx: no such transaction")
        b = self.blocks[rec["height"]]
        atts = b.get("attestations", {})
        leaves = [tx_leaf(h, atts.get(h)) for h in b["txs"]]
        out = {"tx_hash": tx_hash, "tx": rec["tx"], "height": rec["height"], "block_hash": b["hash"],
               "header": b["header"], "sig": b["sig"], "index": rec["index"], "count": len(leaves),
               "leaf": leaves[rec["index"]], "branch": ref_branch(leaves, rec["index"])}
        if tx_hash in atts:
            out["attestation"] = atts[tx_hash]
        return out


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

class ReferenceTreeTests(SynchronousTestCase):
    def test_proofs_of_presence_and_absence_verify_and_flips_fail(self):
        state = {("acct", key(i).address): [i + 1, 0] for i in range(12)}
        root = bytes.fromhex(ref_root(state))
        jmt = light._jmt() if JMT_MERGED else REF_JMT
        for (ns, k), v in list(state.items())[:4] + [(("acct", X.address), None)]:
            kh, vh = key_hash(ns, k), None if v is None else value_hash(v)
            proof = ref_proof(state, kh)
            jmt.verify_proof(root, kh, vh, proof)
            for i in range(len(proof)):
                bad = bytearray(proof)
                bad[i] ^= 1
                self.assertRaises(jmt.ProofError, jmt.verify_proof, root, kh, vh, bytes(bad))
            self.assertRaises(jmt.ProofError, jmt.verify_proof, root, kh, value_hash([0, 0]), proof)
        self.assertEqual(ref_root({}), "0" * 64)


class LightTestBase(SynchronousTestCase):
    """A chain of three authorities, each voting for every block: a
    transfer at block 2, a compute receipt (payment, then claim) at blocks
    3 and 4, eight blocks in all (finalized 6)."""

    def setUp(self):
        if not JMT_MERGED:
            self.patch(light, "_jmt", lambda: REF_JMT)
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

    def refused(self, fetch, message, check=None):
        """sync (then check(client), if given) fails with message."""
        c = self.client(fetch)
        e = self.assertRaises(LightError, lambda: (c.sync(), check and check(c)))
        self.assertEqual(str(e), message)
        self.assertNotIn("\n", str(e))


class HonestTests(LightTestBase):
    def test_headers_followed_to_the_finalized_block(self):
        point = self.client().sync()
        self.assertEqual((point.height, point.hash), (6, self.s.blocks[6]["hash"]))
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
            self.assertEqual(json.load(f)["finalized"]["hash"], self.s.blocks[9]["hash"])

    def test_trusted_block(self):
        h = self.s.blocks[4]["hash"]
        c = LightClient.from_trust(self.s, 4, h, self.cache)
        self.assertEqual(c.sync().height, 6)
        self.assertEqual(verify_balance(c, ALICE.address)["balance"], self.s.chain.view().account(ALICE.address)[0])
        e = self.assertRaises(LightError, LightClient.from_trust, self.s, 4, self.s.blocks[3]["hash"], None)
        self.assertEqual(str(e), f"trusted block 4: the node's header there does not hash to {self.s.blocks[3]['hash']}")


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
            old = self.s.getProof(a["namespace"], a["key"], height)
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
                a["finalized"] = {"height": claim, "hash": self.s.blocks[claim]["hash"]}
                return a
            self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)), message)

    def test_a_stale_finalized_block(self):
        self.client().sync()

        def tamper(path, a):
            a["finalized"] = {"height": 3, "hash": self.s.blocks[3]["hash"]}
            return a
        self.refused(Lying(self.s, on("/rpc/getHeaders", tamper)), "node reports finalized 3 below verified 6")

    def test_a_tx_proof_with_another_branch_or_leaf(self):
        def branch(path, a):
            a["branch"] = [hashlib.sha256(b"x").hexdigest()] * len(a["branch"])
            a["index"], a["count"] = 0, 2
            a["branch"] = [hashlib.sha256(b"x").hexdigest()]
            return a
        c = self.client(Lying(self.s, on("/rpc/getTxProof", branch)))
        c.sync()
        e = self.assertRaises(LightError, verify_tx, c, self.transfer.hash)
        self.assertEqual(str(e), "tx proof does not match tx_root of block 2")

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
        if self.s.reroot:
            raise SkipTest("the node's state_root is not yet the state tree's (re-rooted chain, another genesis hash)")
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
            return self.s.getProof(a["namespace"], a["key"], 2) if a["namespace"] == "acct" else a

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
            a["finalized"] = {"height": 2, "hash": self.s.blocks[2]["hash"]}
            return a
        code, _, err = self.run_cli(Lying(self.s, on("/rpc/getHeaders", stale)), "balance", ALICE.address)
        self.assertEqual((code, err), (1, "ait: error: node reports finalized 2 below verified 6\n"))


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
