"""The page's light client in a real headless Chromium (aitnode/static/verify.js).

Three parts:

* the page's JavaScript state-proof verifier, CBOR reader and tx_root
  branch check reproduce vectors made here by a small Python reference
  written from the protocol's definition (docs/protocol.md 11.2, the
  binary sparse tree with collapsed leaves, and 10.3), honest ones and
  every kind of damaged one;
* against a stub node in the test process that serves an honest chain
  (signed headers, finality votes, state proofs, a claim with its
  attestation), the page shows a verified balance and a verified
  receipt whose detail view lists each check; the same stub, told to
  tamper with one answer at a time, gets an "unverified" mark with its
  own reason;
* what the page verified is kept in this browser: a second visit resumes
  from the kept finalized block (the stub sees its first getHeaders start
  there) and still shows verified marks; a kept state the node's chain
  contradicts, or one that does not validate, is refused with its reason
  until the user clears it; a chain longer than one round of getHeaders
  calls is followed to its end in further rounds;
* against a real node process, once the node serves getHeaders, getProof
  and getTxProof (issue 11), the same marks for a real balance and a
  real receipt.

Browser setup and skips as in tests/test_browser.py.
"""

import hashlib
import json
import os
import random
from urllib.parse import unquote

import treq

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from aitnode import page
from aitnode.encoding import canonical
from aitnode.finality import quorum, sign_vote
from aitnode.receipts import attestation_request, sign_attestation, sign_claim
from aitnode.tx import sign_tx
from tests.common import ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, COORDINATOR, ESCROW, MINER, transfer
from tests.procs import inline, wait_for
from tests import test_browser
from tests.test_browser import BrowserDriver, _TrackingSite

try:
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - BrowserTests.setUp skips
    By = None


# -- a reference state tree, from the protocol's definition alone ---------------

EMPTY = bytes(32)


def H(data):
    return hashlib.sha256(data).digest()


def key_hash(ns, key):
    return H(canonical([ns, key]))


def leaf_hash(kh, vh):
    return H(b"\x00" + kh + vh)


def inner(left, right):
    return H(b"\x01" + left + right)


def bit(k, i):
    return (k[i >> 3] >> (7 - (i & 7))) & 1


def ref_root(items, d=0):
    """root(S, d) of 11.2 for items [(key_hash, value_hash)]."""
    if not items:
        return EMPTY
    if len(items) == 1:
        return leaf_hash(*items[0])
    return inner(ref_root([x for x in items if not bit(x[0], d)], d + 1),
                 ref_root([x for x in items if bit(x[0], d)], d + 1))


def ref_prove(items, k, d=0):
    """(leaf or None, siblings) for key hash k."""
    if not items:
        return None, []
    if len(items) == 1:
        return items[0], []
    mine = [x for x in items if bit(x[0], d) == bit(k, d)]
    other = [x for x in items if bit(x[0], d) != bit(k, d)]
    leaf, sibs = ref_prove(mine, k, d + 1)
    return leaf, [ref_root(other, d + 1)] + sibs


def encode_proof(leaf, siblings):
    n = len(siblings)
    bitmap = bytearray((n + 7) // 8)
    body = b""
    for i, s in enumerate(siblings):
        if s != EMPTY:
            bitmap[i >> 3] |= 0x80 >> (i & 7)
            body += s
    head = b"\x00" if leaf is None else b"\x01" + leaf[0] + leaf[1]
    return head + n.to_bytes(2, "big") + bytes(bitmap) + body


def ref_verify(root, k, vh, proof):
    """The spec's Verify, written out; True or False (malformed is False)."""
    try:
        if proof[0] not in (0, 1):
            return False
        pos, leaf = 1, None
        if proof[0] == 1:
            if len(proof) < 65:
                return False
            leaf, pos = (proof[1:33], proof[33:65]), 65
        if len(proof) < pos + 2:
            return False
        n = int.from_bytes(proof[pos:pos + 2], "big")
        pos += 2
        nb = (n + 7) // 8
        if n > 256 or len(proof) < pos + nb:
            return False
        bitmap = proof[pos:pos + nb]
        if n % 8 and bitmap[-1] & (0xff >> (n % 8)):
            return False
        pos += nb
        sibs = []
        for i in range(n):
            if bitmap[i >> 3] & (0x80 >> (i & 7)):
                if len(proof) < pos + 32:
                    return False
                sibs.append(proof[pos:pos + 32])
                pos += 32
            else:
                sibs.append(EMPTY)
        if pos != len(proof):
            return False
    except IndexError:
        return False
    if vh is not None:
        if leaf != (k, vh):
            return False
    elif leaf is not None:
        if leaf[0] == k or any(bit(leaf[0], i) != bit(k, i) for i in range(n)):
            return False
    h = EMPTY if leaf is None else leaf_hash(*leaf)
    for i in range(n - 1, -1, -1):
        h = inner(sibs[i], h) if bit(k, i) else inner(h, sibs[i])
    return h == root


class StateTree:
    """A whole state {(ns, key): value} with its root and proofs."""

    def __init__(self, entries):
        self.entries = dict(entries)
        self.items = sorted((key_hash(ns, k), H(canonical(v))) for (ns, k), v in self.entries.items())
        self.root = ref_root(self.items)

    def proof(self, ns, key):
        return encode_proof(*ref_prove(self.items, key_hash(ns, key)))

    def answer(self, ns, key, height, block_hash):
        """A getProof answer (docs/protocol.md 12)."""
        value = self.entries.get((ns, key))
        return {
            "height": height, "block_hash": block_hash, "state_root": self.root.hex(), "namespace": ns, "key": key,
            "value": value, "value_cbor": None if value is None else canonical(value).hex(),
            "proof": self.proof(ns, key).hex(),
        }


def merkle_levels(leaf_inputs):
    """The levels of the 10.3 tree, leaves first."""
    levels = [[H(b"\x00" + x) for x in leaf_inputs]]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [inner(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def merkle_root(leaf_inputs):
    return merkle_levels(leaf_inputs)[-1][0] if leaf_inputs else EMPTY


def merkle_branch(leaf_inputs, index):
    branch = []
    for level in merkle_levels(leaf_inputs)[:-1]:
        if not (index == len(level) - 1 and len(level) % 2):
            branch.append(level[index ^ 1])
        index //= 2
    return branch


# -- the vectors the page's code must reproduce ------------------------------------

def state_cases(rng):
    """[{root, ns, key, value_cbor, proof, valid, what}]: honest proofs of
    presence and absence in a few random states, and damaged ones."""
    cases = []

    def add(root, ns, key, value_cbor, proof, what):
        vh = None if value_cbor is None else H(value_cbor)
        cases.append({"root": root.hex(), "ns": ns, "key": key, "value_cbor": None if value_cbor is None else value_cbor.hex(),
                      "proof": proof.hex(), "valid": ref_verify(root, key_hash(ns, key), vh, proof), "what": what})

    for size in (0, 1, 2, 3, 40):
        entries = {}
        for i in range(size):
            if i % 3 == 0:
                entries[("acct", f"ait1addr{i}")] = [rng.randrange(2**64), rng.randrange(2**40)]
            elif i % 3 == 1:
                entries[("rcpt", f"receipt-{i}\u00fc")] = {"mint": rng.randrange(2**64), "miner": "m", "ok": True}
            else:
                entries[("param", f"p{i}")] = rng.randrange(100)
        tree = StateTree(entries)
        for (ns, key), value in list(entries.items())[:6]:
            raw = canonical(value)
            proof = tree.proof(ns, key)
            add(tree.root, ns, key, raw, proof, f"present in {size}")
            add(tree.root, ns, key, None, proof, "present, claimed absent")
            flipped = bytearray(raw)
            flipped[-1] ^= 1
            add(tree.root, ns, key, bytes(flipped), proof, "value changed")
            add(tree.root, ns, key + "x", raw, proof, "another key")
            add(tree.root, ns, key + "x", None, proof, "another key's leaf as absence")
            bad_root = bytearray(tree.root)
            bad_root[rng.randrange(32)] ^= 1 << rng.randrange(8)
            add(bytes(bad_root), ns, key, raw, proof, "root changed")
            for pos in sorted({rng.randrange(len(proof)) for _ in range(6)} | {0, len(proof) - 1}):
                damaged = bytearray(proof)
                damaged[pos] ^= 1 << rng.randrange(8)
                add(tree.root, ns, key, raw, bytes(damaged), f"proof bit flipped at byte {pos}")
            add(tree.root, ns, key, raw, proof + b"\x00", "trailing byte")
            add(tree.root, ns, key, raw, proof[:-1], "truncated")
        for i in range(4):
            key = f"ait1absent{i}"
            proof = tree.proof("acct", key)
            add(tree.root, "acct", key, None, proof, f"absent in {size}")
            add(tree.root, "acct", key, canonical([1, 0]), proof, "absent, claimed present")
            if len(proof) > 3:
                damaged = bytearray(proof)
                damaged[-1] ^= 0x80
                add(tree.root, "acct", key, None, bytes(damaged), "absence proof damaged")
    # malformed forms
    tree = StateTree({("acct", "a"): [1, 1], ("acct", "b"): [2, 2]})
    good = tree.proof("acct", "a")
    n = int.from_bytes(good[65:67], "big")
    add(tree.root, "acct", "a", canonical([1, 1]), b"\x02" + good[1:], "first byte 2")
    add(tree.root, "acct", "a", canonical([1, 1]), good[:65] + (n + 1).to_bytes(2, "big") + good[67:], "n one too many")
    if n % 8:
        padded = bytearray(good)
        padded[67 + (n - 1) // 8] |= 1
        add(tree.root, "acct", "a", canonical([1, 1]), bytes(padded), "bitmap padding bit set")
    add(tree.root, "acct", "a", canonical([1, 1]), b"\x00" + (257).to_bytes(2, "big") + bytes(33), "257 siblings")
    add(tree.root, "acct", "a", canonical([1, 1]), b"", "empty proof")
    # A lone leaf pushed one level down with an EMPTY sibling: the reference never does that.
    one = StateTree({("acct", "a"): [1, 1]})
    leaf = (key_hash("acct", "a"), H(canonical([1, 1])))
    add(one.root, "acct", "a", canonical([1, 1]), encode_proof(leaf, [EMPTY]), "a lone leaf pushed down")
    return cases


CBOR_BAD = [
    ("1801", "24 in two bytes"), ("190001", "1 in three bytes"), ("a2616202616101", "map keys out of order"),
    ("9f01ff", "indefinite array"), ("f93c00", "a float"), ("f6", "null"), ("20", "a negative integer"),
    ("0000", "trailing bytes"), ("a2616101616102", "a key twice"), ("61ff", "invalid UTF-8"), ("6261", "truncated text"),
    ("a10101", "an integer map key"), ("5f", "a byte string"), ("c0", "a tag"), ("1b", "truncated integer"),
    ("9bffffffffffffffff", "an array longer than the bytes"),
]


def branch_cases(rng):
    cases = []
    for count in range(1, 10):
        leaves = [rng.randbytes(32) for _ in range(count)]
        root = merkle_root(leaves).hex()
        for index in range(count):
            branch = [b.hex() for b in merkle_branch(leaves, index)]
            cases.append({"leaf": leaves[index].hex(), "index": index, "count": count, "branch": branch, "root": root,
                          "valid": True})
            if branch:
                cases.append({"leaf": leaves[index].hex(), "index": index, "count": count, "branch": branch[:-1],
                              "root": root, "valid": False})
            cases.append({"leaf": leaves[index].hex(), "index": index, "count": count, "branch": branch + ["00" * 32],
                          "root": root, "valid": False})
            if count > 1:
                other = (index + 1) % count
                cases.append({"leaf": leaves[index].hex(), "index": other, "count": count, "branch": branch,
                              "root": root, "valid": False})
    return cases


# -- an honest chain, served by a stub node that can be told to lie ---------------------

AMOUNT = 123456
RECEIPT_ID = "rcpt-verify-1"
UNITS = 7
PRICE = 5000
MINT_PER_UNIT = 1000
T0 = 1700000000000
HEIGHT = 8  # head; the page can prove finality up to HEIGHT - 2
FEE = 1000
CLAIM_FEE = 2000

TAMPERS = {
    # name: (what the stub does, the reason the page must give; where)
    "acct_value": "the value does not match the proof",
    "other_height": "the proof does not lead to the state root",
    "balance_shown": "the node shows balance",
    "header_sig": "block 3: the proposer's signature does not verify",
    "missing_vote": "block 5: its votes_root does not match the votes the node lists",
    "stranger_header": "block 4: its proposer",
    "attestation": "the branch does not lead to the block's tx_root",
    "rcpt_mint": "the value does not match the proof",
    "pay_other": "the proof does not lead to the state root",
}


class ChainStub:
    """A short honest chain of one authority: block 1 pays escrow, block 2
    holds two transfers and a compute receipt claim, blocks 3 to 8 are
    empty; every block carries its parent's vote.  `tamper` names one lie.
    Another `variant` is another chain from the same genesis: the same
    blocks 1 and 2, other timestamps from block 3 on.  `requests` lists
    the (method, query) of each RPC call it answered."""

    def __init__(self, variant=0):
        self.tamper = None
        self.variant = variant
        self.requests = []
        self.authorities = [{"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex(), "jailed": False}]
        coordinator = {"address": COORDINATOR.address, "public_key": COORDINATOR.public_key.hex()}
        s0 = {
            ("acct", ALICE.address): [10**12, 0],
            ("param", "coordinator"): coordinator,
            ("param", "escrow"): ESCROW.address,
            ("param", "mint_per_unit"): MINT_PER_UNIT,
            ("chain", "authorities"): self.authorities,
            ("authkey", AUTHORITY.address): AUTHORITY.public_key.hex(),
            ("chain", "supply"): {"genesis": 10**12, "faucet": 0, "receipts": 0, "coordinator": 0, "treasury": 0},
        }
        pay = transfer(ALICE, 1, ESCROW, PRICE, fee=FEE)
        s1 = dict(s0)
        s1[("acct", ALICE.address)] = [10**12 - PRICE - FEE, 1]
        s1[("acct", ESCROW.address)] = [PRICE, 0]
        s1[("acct", AUTHORITY.address)] = [FEE, 0]
        s1[("pay", pay.hash)] = {"client": ALICE.address, "amount": PRICE, "claimed": ""}
        t1 = transfer(ALICE, 2, CAROL, AMOUNT, fee=FEE)
        t2 = transfer(ALICE, 3, BOB, 1, fee=FEE)
        payload = sign_claim(MINER, CHAIN_ID, receipt_id=RECEIPT_ID, job_id="job_7", client_addr=ALICE.address,
                             miner_addr=MINER.address, compute_units=UNITS, price=PRICE, output_hash="sha256:00",
                             client_payment_tx=pay.hash)
        claim = sign_tx(MINER, CHAIN_ID, "RECEIPT_CLAIM", 1, CLAIM_FEE, payload)
        att = sign_attestation(COORDINATOR, CHAIN_ID, attestation_request(payload))
        mint = UNITS * MINT_PER_UNIT
        cut = mint * 500 // 10000
        s2 = dict(s1)
        s2[("acct", ALICE.address)] = [10**12 - PRICE - AMOUNT - 1 - 3 * FEE, 3]
        s2[("acct", CAROL.address)] = [AMOUNT, 0]
        s2[("acct", BOB.address)] = [1, 0]
        s2[("acct", ESCROW.address)] = [0, 0]
        del s2[("acct", ESCROW.address)]
        s2[("acct", MINER.address)] = [PRICE + mint - CLAIM_FEE, 1]
        s2[("acct", COORDINATOR.address)] = [cut, 0]
        s2[("acct", AUTHORITY.address)] = [3 * FEE + CLAIM_FEE, 0]
        s2[("pay", pay.hash)] = {"client": ALICE.address, "amount": PRICE, "claimed": RECEIPT_ID}
        s2[("rcpt", RECEIPT_ID)] = {
            "tx": claim.hash, "height": 2, "job_id": "job_7", "client": ALICE.address, "miner": MINER.address,
            "compute_units": UNITS, "price": PRICE, "payment_tx": pay.hash, "mint": mint, "miner_paid": PRICE + mint,
            "coordinator_cut": cut, "treasury_cut": 0, "fee": CLAIM_FEE,
        }
        s2[("chain", "supply")] = {"genesis": 10**12, "faucet": 0, "receipts": mint, "coordinator": cut, "treasury": 0}
        self.states = [StateTree(s0), StateTree(s1)] + [StateTree(s2)] * (HEIGHT - 1)
        self.block_txs = [[], [pay], [t1, t2, claim]] + [[] for _ in range(HEIGHT - 2)]
        self.attestations = {claim.hash: att}
        self.claim, self.pay = claim, pay
        self.mint = mint
        self.build()

    def leaf_input(self, tx):
        att = self.attestations.get(tx.hash)
        return bytes.fromhex(tx.hash) if att is None else H(canonical([tx.hash, att]))

    def build(self):
        auth_hash = H(canonical(self.authorities)).hex()
        self.headers, self.hashes, self.sigs, self.votes = [], [], [], []
        justified = justified_parent = None  # J of the last block, J of its parent
        for h in range(HEIGHT + 1):
            votes = []
            if h >= 2:  # block h carries the vote for h - 1, whose J is `justified_parent`
                votes = [sign_vote(AUTHORITY, CHAIN_ID, h - 1, self.hashes[h - 1], *justified_parent).to_wire()]
            header = {
                "chain_id": CHAIN_ID, "parent": self.hashes[h - 1] if h else "00" * 32, "height": h,
                "timestamp": T0 + 1000 * h + (self.variant if h >= 3 else 0), "proposer": AUTHORITY.address if h else "",
                "tx_root": merkle_root([self.leaf_input(t) for t in self.block_txs[h]]).hex(),
                "state_root": self.states[h].root.hex(),
                "votes_root": merkle_root([H(canonical(v)) for v in votes]).hex(),
                "evidence_root": "00" * 32, "authorities_hash": auth_hash,
            }
            bh = H(canonical(header)).hex()
            self.headers.append(header)
            self.hashes.append(bh)
            self.sigs.append(AUTHORITY.sign(bytes.fromhex(bh)).hex() if h else "")
            self.votes.append(votes)
            if h == 0:
                justified = (0, bh)
            elif votes:
                justified = (h - 1, self.hashes[h - 1])
            justified_parent = justified  # J(h), the source of the votes for h
        self.genesis = self.hashes[0]
        assert quorum(1) == 1

    def header_calls(self):
        """[(from, limit)] of the getHeaders calls answered, in order."""
        return [(int(q["from"]), int(q["limit"])) for m, q in self.requests if m == "getHeaders"]

    # -- answers ---------------------------------------------------------------
    def head(self):
        return {"height": HEIGHT, "hash": self.hashes[HEIGHT],
                "justified": {"height": HEIGHT - 1, "hash": self.hashes[HEIGHT - 1]},
                "finalized": {"height": HEIGHT - 2, "hash": self.hashes[HEIGHT - 2]}}

    def block(self, h):
        out = dict(self.headers[h], hash=self.hashes[h], sig=self.sigs[h], votes=self.votes[h], evidence=[],
                   txs=[t.to_wire() for t in self.block_txs[h]],
                   attestations={t.hash: self.attestations[t.hash] for t in self.block_txs[h] if t.hash in self.attestations})
        if h == 1:
            out["authorities"] = self.authorities
        return out

    def headers_answer(self, start, limit):
        out = []
        for h in range(start, min(HEIGHT, start + limit - 1) + 1):
            e = {"header": dict(self.headers[h]), "hash": self.hashes[h], "sig": self.sigs[h],
                 "votes": self.votes[h + 1] if h < HEIGHT else []}
            if h == 1:
                e["authorities"] = self.authorities
            if self.tamper == "header_sig" and h == 3:
                e["sig"] = CAROL.sign(bytes.fromhex(self.hashes[h])).hex()
            if self.tamper == "missing_vote" and h == 4:
                e["votes"] = []
            if self.tamper == "stranger_header" and h == 4:
                e["header"]["proposer"] = CAROL.address
                e["hash"] = H(canonical(e["header"])).hex()
                e["sig"] = CAROL.sign(bytes.fromhex(e["hash"])).hex()
            out.append(e)
        return {"headers": out, "head": {"height": HEIGHT, "hash": self.hashes[HEIGHT]},
                "finalized": self.head()["finalized"]}

    def proof(self, ns, key, height):
        if not 0 <= height <= HEIGHT:
            return 404, {"error": {"code": "unknown_block", "message": "no such block"}}
        tree = self.states[height]
        if self.tamper == "other_height" and ns == "acct":
            tree = self.states[0]
        if self.tamper == "pay_other" and ns == "pay":
            tree = self.states[1]
        out = tree.answer(ns, key, height, self.hashes[height])
        out["state_root"] = self.states[height].root.hex()
        if self.tamper == "acct_value" and ns == "acct" and out["value"] is not None:
            out["value"] = [out["value"][0] + 1, out["value"][1]]
            out["value_cbor"] = canonical(out["value"]).hex()
        if self.tamper == "rcpt_mint" and ns == "rcpt" and out["value"] is not None:
            out["value"] = dict(out["value"], mint=out["value"]["mint"] * 2)
            out["value_cbor"] = canonical(out["value"]).hex()
        return 200, out

    def tx_proof(self, tx_hash):
        for h, txs in enumerate(self.block_txs):
            for i, t in enumerate(txs):
                if t.hash == tx_hash:
                    leaves = [self.leaf_input(x) for x in txs]
                    att = self.attestations.get(t.hash)
                    if att is not None and self.tamper == "attestation":
                        att = dict(att, price=att["price"] + 1)
                    out = {"tx_hash": t.hash, "tx": t.to_wire(), "height": h, "block_hash": self.hashes[h],
                           "header": self.headers[h], "sig": self.sigs[h], "index": i, "count": len(txs),
                           "leaf": (H(canonical([t.hash, att])) if att else bytes.fromhex(t.hash)).hex(),
                           "branch": [b.hex() for b in merkle_branch(leaves, i)]}
                    if att is not None:
                        out["attestation"] = att
                    return 200, out
        return 404, {"error": {"code": "unknown_tx", "message": "not included"}}

    def balance(self, address):
        bal, nonce = self.states[HEIGHT].entries.get(("acct", address), [0, 0])
        if self.tamper == "balance_shown":
            bal += 1
        return {"balance": bal, "nonce": nonce}


class ChainStubNode(resource.Resource):
    def __init__(self, chain):
        super().__init__()
        page.install(self)
        self.rpc = _ChainRPC(chain)  # its .chain may be replaced: the node's chain started over
        self.putChild(b"rpc", self.rpc)


class _ChainRPC(resource.Resource):
    isLeaf = True

    def __init__(self, chain):
        super().__init__()
        self.chain = chain

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        path = [unquote(p.decode()) for p in request.postpath]
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        status, out = 200, None
        c = self.chain
        c.requests.append((path[0] if path else "", query))
        if path == ["getHead"]:
            out = c.head()
        elif path == ["getSupply"]:
            out = {"total": 10**12 + c.mint, "receipts": c.mint}
        elif len(path) == 2 and path[0] == "getBlock" and path[1].isdigit() and int(path[1]) <= HEIGHT:
            out = c.block(int(path[1]))
        elif path == ["getHeaders"]:
            out = c.headers_answer(int(query.get("from", "0")), int(query.get("limit", "64")))
        elif len(path) == 3 and path[0] == "getProof":
            status, out = c.proof(path[1], path[2], int(query.get("height", str(HEIGHT - 2))))
        elif len(path) == 2 and path[0] == "getTxProof":
            status, out = c.tx_proof(path[1])
        elif len(path) == 2 and path[0] == "getBalance":
            out = c.balance(path[1])
        elif len(path) == 2 and path[0] == "getHistory":
            out = {"address": path[1], "txs": [], "pending": []}
        elif len(path) == 2 and path[0] == "getReceipt" and path[1] == RECEIPT_ID:
            rec = c.states[HEIGHT].entries[("rcpt", RECEIPT_ID)]
            out = {"receipt_id": RECEIPT_ID, "paid": rec}
        else:
            status, out = 404, {"error": {"code": "not_found", "message": "the stub has no such thing"}}
        request.setResponseCode(status)
        return json.dumps(out).encode()


# -- the browser side ---------------------------------------------------------------

RUN_STATE_CASES = """
const out = [];
for (const c of arguments[0]) {
  try {
    const v = await ait.verify.checkStateProof(c.root, c.ns, c.key, c.value_cbor, c.proof);
    out.push({ok: true, value: ait.toJSON(v)});
  } catch (e) {
    out.push({ok: false, error: e.name + ": " + e.message});
  }
}
return out;
"""

RUN_CBOR = """
const out = [];
for (const h of arguments[0]) {
  try {
    out.push({ok: true, value: ait.toJSON(ait.verify.decodeCanonical(ait.unhex(h)))});
  } catch (e) {
    out.push({ok: false, error: e.name + ": " + e.message});
  }
}
return out;
"""

RUN_BRANCHES = """
const out = [];
for (const c of arguments[0]) {
  try {
    const root = await ait.verify.txBranchRoot(ait.unhex(c.leaf, 32), c.index, c.count, c.branch);
    out.push(ait.hex(root) === c.root);
  } catch (e) {
    out.push(false);
  }
}
return out;
"""


RUN_WALK = """
const [genesis, kept, lie] = arguments;
const calls = [];
const fetchJSON = async (path) => {
  const q = path.split("?")[1];
  calls.push(q);
  const out = await ait.rpc(path);
  if (lie && q.startsWith("from=2&")) out.headers[1].header.timestamp += 1;
  return out;
};
const c = new ait.verify.HeaderChain(genesis, fetchJSON, {store: {load: () => kept, save() {}, clear() {}}, pageSize: 2});
await c.resume();
try {
  return {hash: (await c.recordAt(2)).hash, calls};
} catch (e) {
  return {error: e.name + ": " + e.message, calls};
}
"""

RUN_ROUNDS = """
const [genesis, address, balance] = arguments;
const c = new ait.verify.HeaderChain(genesis, ait.rpc, {pageSize: 3, roundCalls: 1});
const rounds = [];
const round = async () => {
  await c.sync();
  rounds.push([c.behind, c.tip().height, c.progress()]);
};
await round();
const v = await ait.verify.verifyBalance(c, address, {balance, nonce: 0});
while (c.behind && rounds.length < 10) await round();
const after = await ait.verify.verifyBalance(c, address, {balance, nonce: 0});
return {rounds, mark: v.state + " " + v.reason, after: after.state};
"""


class VerifyDriver(BrowserDriver):
    def load(self, path):
        self.d.get(self.url + path)
        self.wait("the page to start", lambda: self.d.find_element(By.TAG_NAME, "html").get_attribute("data-ready") == "1")

    def script(self, body, *args):
        return self.d.execute_script("return await (async () => {" + body + "})();", *args)

    def mark(self, id_):
        e = self.find(id_)
        return {"state": e.get_attribute("data-state"), "title": e.get_attribute("title"),
                "height": e.get_attribute("data-height")}

    def trust(self):
        return {"state": self.attr("trust", "data-state"), "text": self.find("trust-text").text,
                "final": self.attr("trust-final", "data-height"), "source": self.find("trust-source").text}

    def wait_trust(self, state, timeout=30):
        self.wait(f"the trust bar to be {state}", lambda: self.trust()["state"] == state, timeout)
        return self.trust()

    def kept(self, genesis):
        """The light client's state this browser keeps for genesis (parsed), or None."""
        text = self.d.execute_script("return localStorage.getItem(arguments[0]);", f"aitnode.light.{genesis}")
        return None if text is None else json.loads(text)

    def keep(self, genesis, text):
        self.d.execute_script("localStorage.setItem(arguments[0], arguments[1]);", f"aitnode.light.{genesis}", text)

    def forget_verified(self):
        """Remove what the page kept of any chain it followed (the pin stays)."""
        self.d.execute_script(
            "for (const k of Object.keys(localStorage)) if (k.startsWith('aitnode.light.')) localStorage.removeItem(k);")

    def show_account(self, address):
        self.type_into("acct-address", address)
        self.find("acct-load").click()
        self.wait("the balance", lambda: self.attr("acct-balance", "data-value") not in ("", None))

    def wait_mark(self, id_, states, timeout=30):
        self.wait(f"#{id_} to be one of {states}", lambda: self.mark(id_)["state"] in states, timeout)
        return self.mark(id_)

    def receipt_mark(self, receipt_id, states, timeout=30):
        def get():
            return self.d.execute_script(
                "const b = document.querySelector('#receipts-body button.vmark[data-receipt=\"' + arguments[0] + '\"]');"
                "return b && {state: b.getAttribute('data-state'), title: b.title};", receipt_id)
        self.wait(f"receipt {receipt_id}'s mark in {states}", lambda: (get() or {}).get("state") in states, timeout)
        return get()

    def receipt_detail(self, receipt_id):
        self.d.execute_script(
            "document.querySelector('#receipts-body button.vmark[data-receipt=\"' + arguments[0] + '\"]').click();", receipt_id)
        self.wait("the detail view", lambda: not self.find("receipt-detail").get_attribute("hidden")
                  and self.find("rd-id").text == receipt_id)
        return self.d.execute_script("""
            return {
              mark: document.getElementById("rd-mark").getAttribute("data-state"),
              reason: document.getElementById("rd-reason").textContent,
              checks: [...document.getElementById("rd-checks").children].map(li => ({
                ok: li.getAttribute("data-ok"), text: li.textContent})),
            };""")


class VerifyTests(TestCase):
    timeout = 300
    setUp = test_browser.BrowserTests.setUp

    def start_stub(self, chain):
        return self.listen(ChainStubNode(chain))

    @inline
    async def listen(self, root):
        site = _TrackingSite(root)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")

        async def close():
            await port.stopListening()
            for proto in list(site.conns):
                # (a _GenericHTTPChannelProtocol keeps its transport on its channel)
                transport = getattr(proto, "transport", None) or getattr(getattr(proto, "_channel", None), "transport", None)
                if transport is not None:
                    transport.abortConnection()
            await wait_for(lambda: not site.conns, timeout=10, message="the connections to close")

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(close()))
        return f"http://127.0.0.1:{port.getHost().port}"

    async def browser(self, url):
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        b = await deferToThread(VerifyDriver, url, tmp)
        self.addCleanup(deferToThread, b.quit)
        return b

    @inline
    async def test_vectors(self):
        """The page's state-proof verifier, CBOR reader and tx_root branch
        check agree with the reference on every honest and damaged case."""
        chain = ChainStub()
        b = await self.browser(await self.start_stub(chain))
        await deferToThread(b.load, "/")
        rng = random.Random(11)

        cases = state_cases(rng)
        # and the proofs of docs/protocol.md's vector state_tree, as given
        from tests.test_protocol_vectors import load_vectors
        st = load_vectors()["state_tree"]
        for p in st["proofs"]:
            cases.append({"root": st["steps"][-1]["root"], "ns": p["namespace"], "key": p["key"],
                          "value_cbor": p["value_cbor"], "proof": p["proof"], "valid": True,
                          "what": f"vector state_tree {p['namespace']}/{p['key']}"})
        self.assertGreaterEqual(sum(c["valid"] for c in cases), 30)
        self.assertGreater(sum(not c["valid"] for c in cases), 200)
        got = await deferToThread(b.script, RUN_STATE_CASES, cases)
        for c, g in zip(cases, got):
            self.assertEqual(g["ok"], c["valid"], (c["what"], g))
            if g["ok"]:
                want = None if c["value_cbor"] is None else _json_digits(bytes.fromhex(c["value_cbor"]))
                self.assertEqual(g["value"], want if want is not None else "null", c["what"])
        self.assertEqual(len(got), len(cases))
        # every malformed form has its own message
        reasons = {c["what"]: g.get("error") for c, g in zip(cases, got) if not g["ok"]}
        self.assertIn("first byte", reasons["first byte 2"])
        self.assertIn("bitmap padding", reasons["bitmap padding bit set"])
        self.assertIn("more than 256", reasons["257 siblings"])
        self.assertIn("does not lead to the state root", reasons["a lone leaf pushed down"])

        # CBOR: the protocol's vectors read back exactly (u64 as BigInt), the
        # non-canonical and the out-of-space refused.
        good = load_vectors()["cbor"]["cases"]
        got = await deferToThread(b.script, RUN_CBOR, [c["cbor"] for c in good] + [h for h, _ in CBOR_BAD])
        for c, g in zip(good, got):
            self.assertTrue(g["ok"], (c, g))
            self.assertEqual(json.loads(g["value"]), c["value"])
        for (h, what), g in zip(CBOR_BAD, got[len(good):]):
            self.assertFalse(g["ok"], (h, what, g))
        # BigInt, not Number: 2**64 - 1 stays exact.
        self.assertEqual(got[[c["cbor"] for c in good].index("1bffffffffffffffff")]["value"], str(2**64 - 1))

        cases = branch_cases(rng)
        got = await deferToThread(b.script, RUN_BRANCHES, cases)
        self.assertEqual(got, [c["valid"] for c in cases])

    @inline
    async def test_verified_and_tampered_on_the_page(self):
        chain = ChainStub()
        url = await self.start_stub(chain)
        b = await self.browser(url)
        pin = f"#genesis={chain.genesis}"

        # Nothing pinned: not verified, and the page says why; the user pins the node's genesis.
        await deferToThread(b.load, "/")
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["unverified"])
        self.assertIn("no genesis pinned", m["title"])
        t = await deferToThread(b.trust)
        self.assertEqual(t["state"], "unpinned")
        await deferToThread(b.wait, "the pin button", lambda: b.find("trust-pin").is_displayed())
        await deferToThread(lambda: b.find("trust-pin").click())
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified"])
        self.assertEqual(m["height"], str(HEIGHT - 2))
        t = await deferToThread(b.trust)
        self.assertEqual((t["state"], t["final"]), ("ok", str(HEIGHT - 2)), t)
        self.assertIn("pinned in this browser", t["source"])

        # Pinned in the address: a verified balance and a verified receipt.
        await deferToThread(b.load, "/?honest" + pin)
        t = await deferToThread(b.wait, "the trust bar", lambda: b.trust()["state"] == "ok" and b.trust())
        self.assertIn("pinned in the page address", t["source"])
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified"])
        self.assertEqual(b.attr("acct-balance", "data-value"), str(AMOUNT))
        self.assertIn(f"finalized block {HEIGHT - 2}", m["title"])
        r = await deferToThread(b.receipt_mark, RECEIPT_ID, ["verified"])
        detail = await deferToThread(b.receipt_detail, RECEIPT_ID)
        self.assertEqual(detail["mark"], "verified")
        self.assertEqual({c["ok"] for c in detail["checks"]}, {"1"})
        text = "\n".join(c["text"] for c in detail["checks"])
        for what in ("header chain followed from the pinned genesis", f"rcpt/{RECEIPT_ID} proven", "pay/",
                     "the coordinator's key proven", "is in block 2", "transaction signature", "the claim is this receipt",
                     "the miner's signature", "the coordinator's attestation"):
            self.assertIn(what, text)
        self.assertGreaterEqual(len(detail["checks"]), 9)
        self.assertNotIn("[object", text)
        await deferToThread(b.d.save_screenshot, os.path.join(b.tmp, "verified.png"))
        self.assertEqual(await deferToThread(b.severe), [], "the page logged errors")

        # A pinned genesis the node does not have: nothing verifies.
        await deferToThread(b.load, "/?wrong#genesis=" + "ab" * 32)
        t = await deferToThread(b.wait, "a failed trust bar", lambda: b.trust()["state"] == "failed" and b.trust())
        self.assertIn("not the pinned genesis", t["text"])
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["unverified"])
        self.assertIn("not the pinned genesis", m["title"])

        # Each lie, on its own, gets its own reason (to a browser that kept
        # nothing: one that did resumes above blocks 3 to 5, the lies in headers).
        for name, reason in TAMPERS.items():
            chain.tamper = name
            await deferToThread(b.forget_verified)
            await deferToThread(b.load, f"/?{name}{pin}")
            await deferToThread(b.show_account, CAROL.address)
            m = await deferToThread(b.wait_mark, "acct-verify", ["verified", "unverified"])
            r = await deferToThread(b.receipt_mark, RECEIPT_ID, ["verified", "unverified"])
            if name in ("attestation", "rcpt_mint", "pay_other"):  # receipt lies: the balance still verifies
                self.assertEqual(m["state"], "verified", name)
                self.assertEqual(r["state"], "unverified", name)
                self.assertIn(reason, r["title"], name)
                detail = await deferToThread(b.receipt_detail, RECEIPT_ID)
                self.assertEqual(detail["checks"][-1]["ok"], "0", (name, detail))
                self.assertIn(reason, detail["checks"][-1]["text"])
            elif name in ("acct_value", "other_height", "balance_shown"):  # balance lies
                self.assertEqual(m["state"], "unverified", name)
                self.assertIn(reason, m["title"], name)
                self.assertEqual(r["state"], "verified", name)
            else:  # header lies: nothing verifies
                self.assertEqual((m["state"], r["state"]), ("unverified", "unverified"), name)
                self.assertIn(reason, m["title"], name)
                self.assertIn(reason, r["title"], name)
                self.assertIn(reason, (await deferToThread(b.trust))["text"], name)
        await deferToThread(b.d.save_screenshot, os.path.join(b.tmp, "tampered.png"))

        # The proxy the real-node test puts in front of a node changes acct proofs.
        chain.tamper = None
        proxy = TamperingProxy(url)
        proxy.tamper = True
        b.url = await self.listen(proxy)
        await deferToThread(b.load, "/?proxy" + pin)
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified", "unverified"])
        self.assertEqual(m["state"], "unverified")
        self.assertIn("the value does not match the proof", m["title"])
        proxy.tamper = False
        await deferToThread(b.load, "/?proxy-honest" + pin)
        await deferToThread(b.show_account, CAROL.address)
        await deferToThread(b.wait_mark, "acct-verify", ["verified"])

    @inline
    async def test_a_second_visit_resumes_from_what_this_browser_verified(self):
        chain = ChainStub()
        b = await self.browser(await self.start_stub(chain))
        pin = f"#genesis={chain.genesis}"
        fin = HEIGHT - 2

        await deferToThread(b.load, "/?first" + pin)
        t = await deferToThread(b.wait_trust, "ok")
        self.assertNotIn("verified before", t["text"])
        self.assertEqual(chain.header_calls()[0], (0, 256))
        kept = await deferToThread(b.kept, chain.genesis)
        self.assertEqual((kept["height"], kept["hash"], kept["chain_id"], kept["state_root"]),
                         (fin, chain.hashes[fin], CHAIN_ID, chain.headers[fin]["state_root"]))
        self.assertEqual(kept["authorities"], chain.authorities)
        self.assertEqual(kept["finalized"], {"height": fin - 2, "hash": chain.hashes[fin - 2]})

        # The second visit starts from the kept block, not from genesis, and
        # still verifies the balance and the receipt (its block 2 is linked
        # by parent hashes down from block 6).
        del chain.requests[:]
        await deferToThread(b.load, "/?second" + pin)
        t = await deferToThread(b.wait_trust, "ok")
        self.assertEqual(t["final"], str(fin))
        self.assertIn(f"from block {fin}, verified before in this browser", t["text"])
        self.assertEqual(chain.header_calls()[0], (fin, 256))
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified", "unverified"])
        self.assertEqual((m["state"], m["height"]), ("verified", str(fin)), m)
        r = await deferToThread(b.receipt_mark, RECEIPT_ID, ["verified", "unverified"])
        self.assertEqual(r["state"], "verified", r)
        detail = await deferToThread(b.receipt_detail, RECEIPT_ID)
        self.assertEqual({c["ok"] for c in detail["checks"]}, {"1"}, detail)
        self.assertIn(f"from block {fin} verified before in this browser", detail["checks"][0]["text"])
        calls = chain.header_calls()
        self.assertNotIn(0, [start for start, _ in calls], calls)
        self.assertIn((2, fin - 2), calls)  # the walk down to block 2: blocks 2 to 5
        self.assertEqual(await deferToThread(b.severe), [], "the page logged errors")

        # In the page's own code: a chain resumed from a kept state links a
        # lower block in pages of at most pageSize, and refuses a header that
        # is not the parent of the one above it.
        got = await deferToThread(b.script, RUN_WALK, chain.genesis, json.dumps(kept), False)
        self.assertEqual(got, {"hash": chain.hashes[2], "calls": [f"from={fin - 2}&limit=2", "from=2&limit=2"]})
        got = await deferToThread(b.script, RUN_WALK, chain.genesis, json.dumps(kept), True)
        self.assertEqual(got["error"], "VerifyError: block 3: the node's header is not the parent of the verified block 4")

    @inline
    async def test_a_kept_state_the_node_contradicts_is_refused_until_cleared(self):
        chain = ChainStub()
        node = ChainStubNode(chain)
        b = await self.browser(await self.listen(node))
        pin = f"#genesis={chain.genesis}"
        fin = HEIGHT - 2
        await deferToThread(b.load, "/?first" + pin)
        await deferToThread(b.wait_trust, "ok")
        kept = await deferToThread(b.kept, chain.genesis)
        self.assertEqual(kept["hash"], chain.hashes[fin])
        self.assertFalse(b.find("trust-clear").is_displayed())

        # The node's chain started over from the same genesis: its block 6 is another.
        other = ChainStub(variant=1)
        self.assertEqual(other.hashes[:3], chain.hashes[:3])
        self.assertNotEqual(other.hashes[fin], chain.hashes[fin])
        node.rpc.chain = other
        await deferToThread(b.load, "/?restarted" + pin)
        t = await deferToThread(b.wait_trust, "failed")
        want = f"the node's chain contradicts what this browser verified before at block {fin}; if the chain was started over, clear it"
        self.assertEqual(t["text"], want)
        self.assertEqual(t["final"], str(fin))
        self.assertEqual(other.header_calls(), [(fin, 256)])
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified", "unverified"])
        self.assertEqual(m["state"], "unverified")
        self.assertIn(want, m["title"])
        r = await deferToThread(b.receipt_mark, RECEIPT_ID, ["verified", "unverified"])
        self.assertEqual(r["state"], "unverified")
        self.assertIn(want, r["title"])
        self.assertEqual((await deferToThread(b.kept, chain.genesis))["hash"], chain.hashes[fin], "kept until cleared")
        # Loading again does not get round it.
        await deferToThread(b.load, "/?again" + pin)
        self.assertEqual((await deferToThread(b.wait_trust, "failed"))["text"], want)
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified", "unverified"])
        self.assertEqual(m["state"], "unverified")

        # Cleared: the page follows the node's chain from genesis and keeps that.
        del other.requests[:]
        await deferToThread(b.wait, "the clear button", lambda: b.find("trust-clear").is_displayed())
        await deferToThread(lambda: b.find("trust-clear").click())
        t = await deferToThread(b.wait_trust, "ok")
        self.assertNotIn("verified before", t["text"])
        self.assertEqual(other.header_calls()[0], (0, 256))
        self.assertFalse(b.find("trust-clear").is_displayed())
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified"])
        self.assertEqual(m["height"], str(fin))
        await deferToThread(b.receipt_mark, RECEIPT_ID, ["verified"])
        self.assertEqual((await deferToThread(b.kept, chain.genesis))["hash"], other.hashes[fin])

        # A kept state that does not validate is not used either, each with its reason.
        good = json.dumps(await deferToThread(b.kept, chain.genesis))
        bad_set = json.loads(good)
        bad_set["authorities"][0]["jailed"] = True
        cases = [
            ("{", "is malformed (not JSON)"),
            (json.dumps(dict(json.loads(good), genesis="ab" * 32)), "is for another genesis (abababababababab"),
            (json.dumps(bad_set), "is malformed (its authorities do not hash to its authorities_hash)"),
            (json.dumps(dict(json.loads(good), height=1)), "is malformed (justified and finalized do not fit its height)"),
            (json.dumps(dict(json.loads(good), chain_id="ait-other")), f"has chain id ait-other, block {fin}'s is {CHAIN_ID}"),
        ]
        for i, (text, reason) in enumerate(cases):
            await deferToThread(b.keep, chain.genesis, text)
            await deferToThread(b.load, f"/?damaged{i}" + pin)  # (the same address again would not reload)
            t = await deferToThread(b.wait_trust, "failed")
            self.assertIn("the verified state kept in this browser " + reason, t["text"])
            self.assertIn("clear it", t["text"])
            await deferToThread(b.wait, "the clear button", lambda: b.find("trust-clear").is_displayed())
            await deferToThread(lambda: b.find("trust-clear").click())
            await deferToThread(b.wait_trust, "ok")
            self.assertEqual(await deferToThread(b.kept, chain.genesis), json.loads(good))
        self.assertEqual(await deferToThread(b.severe), [], "the page logged errors")

    @inline
    async def test_a_chain_longer_than_a_round_is_followed_to_its_end(self):
        """Rounds of one getHeaders call of 3 headers (2 new each): the page
        goes on in further rounds to the head, and keeps what it verified."""
        chain = ChainStub()
        b = await self.browser(await self.start_stub(chain))
        fin = HEIGHT - 2
        await deferToThread(b.load, f"/?headers_page=3&headers_round=1#genesis={chain.genesis}")
        t = await deferToThread(b.wait_trust, "ok")
        self.assertEqual((t["final"], t["text"].split(" ")[0]), (str(fin), str(HEIGHT)))
        calls = chain.header_calls()
        self.assertEqual(calls[:4], [(0, 3), (2, 3), (4, 3), (6, 3)])
        self.assertEqual({limit for _, limit in calls}, {3})
        self.assertEqual((await deferToThread(b.kept, chain.genesis))["hash"], chain.hashes[fin])
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified", "unverified"])
        self.assertEqual((m["state"], m["height"]), ("verified", str(fin)), m)
        await deferToThread(b.receipt_mark, RECEIPT_ID, ["verified"])

        # One round at a time, in the page's own code: behind, with its
        # progress, until the head; a balance checked meanwhile is "checking".
        # (The balance check runs a round of its own: block 4.)
        got = await deferToThread(b.script, RUN_ROUNDS, chain.genesis, CAROL.address, AMOUNT)
        self.assertEqual(got, {
            "rounds": [[True, 2, "following headers: block 2 of 8"], [True, 6, "following headers: block 6 of 8"],
                       [False, 8, "following headers: block 8 of 8"]],
            "mark": "checking following headers: block 4 of 8", "after": "verified"})
        self.assertEqual(await deferToThread(b.severe), [], "the page logged errors")


def _json_digits(raw):
    """toJSON of the value canonical bytes raw encode, as the page writes it."""
    import cbor2
    return _to_json(cbor2.loads(raw))


def _to_json(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(_to_json(x) for x in v) + "]"
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _to_json(x) for k, x in v.items()) + "}"



# -- a real node, and a lying proxy in front of it -----------------------------------

class TamperingProxy(resource.Resource):
    """Forwards every GET to the node (page files included) and, while
    `tamper` is set, adds 1 to the balance of each acct proof's value."""

    isLeaf = True

    def __init__(self, node_url):
        super().__init__()
        self.node_url = node_url
        self.tamper = False
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def render_GET(self, request):
        d = defer.Deferred.fromCoroutine(self.forward(request))
        d.addErrback(lambda f: (request.setResponseCode(502), request.write(str(f.value).encode()), request.finish()))
        return server.NOT_DONE_YET

    async def forward(self, request):
        resp = await treq.get(self.node_url + request.uri.decode(), pool=self.pool)
        body = await treq.content(resp)
        if self.tamper and request.uri.startswith(b"/rpc/getProof/acct/") and resp.code == 200:
            out = json.loads(body)
            if out["value"] is not None:
                out["value"] = [out["value"][0] + 1, out["value"][1]]
                out["value_cbor"] = canonical(out["value"]).hex()
            body = json.dumps(out).encode()
        request.setResponseCode(resp.code)
        for name in (b"content-type", b"content-security-policy"):
            for v in resp.headers.getRawHeaders(name, []):
                request.setHeader(name, v)
        request.write(body)
        request.finish()


class RealNodeTests(TestCase):
    timeout = 300
    setUp = test_browser.BrowserTests.setUp
    start_node = test_browser.BrowserTests.start_node
    mint_receipt = test_browser.BrowserTests.mint_receipt

    @inline
    async def test_verified_marks_from_a_real_node(self):
        """A real balance and a real receipt verified on the page; an acct
        proof changed on its way (a proxy) is unverified."""
        node = await self.start_node()
        status, out = await node.get("/rpc/getHeaders?from=0&limit=1")
        if status == 404:
            raise SkipTest("the node serves no getHeaders yet: it comes with issue 11's RPC and state tree")
        self.assertEqual(status, 200, out)
        genesis = out["headers"][0]["hash"]
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        b = await deferToThread(VerifyDriver, node.url, tmp)
        self.addCleanup(deferToThread, b.quit)
        await deferToThread(b.load, f"/#genesis={genesis}")  # open before the claim, so its row shows up

        minted = await self.mint_receipt(node, "rcpt-verify-real", 3)
        _, alice = await node.get(f"/rpc/getBalance/{ALICE.address}")
        pay = transfer(ALICE, alice["nonce"] + 1, CAROL, AMOUNT)
        status, out = await node.post("/rpc/sendTx", {k: v for k, v in pay.to_wire().items() if k != "chain_id"})
        self.assertEqual(status, 200, out)
        included = await node.wait_included([pay.hash])
        height = included[pay.hash]["block"]["height"]
        await wait_for(lambda: node.head().addCallback(lambda h: h["finalized"]["height"] >= height), timeout=60,
                       message="the transfer's block to be finalized")
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["verified"], 60)
        self.assertEqual(b.attr("acct-balance", "data-value"), str(AMOUNT))
        self.assertGreaterEqual(int(m["height"]), height)
        r = await deferToThread(b.receipt_mark, "rcpt-verify-real", ["verified", "unverified"], 60)
        self.assertEqual(r["state"], "verified", r)
        detail = await deferToThread(b.receipt_detail, "rcpt-verify-real")
        self.assertEqual({c["ok"] for c in detail["checks"]}, {"1"}, detail)
        self.assertIn(f"minted {minted}", "\n".join(c["text"] for c in detail["checks"]))
        self.assertEqual(await deferToThread(b.severe), [], "the page logged errors")

        proxy = TamperingProxy(node.url)
        proxy.tamper = True
        b.url = await VerifyTests.listen(self, proxy)
        await deferToThread(b.load, f"/#genesis={genesis}")
        await deferToThread(b.show_account, CAROL.address)
        m = await deferToThread(b.wait_mark, "acct-verify", ["unverified"], 60)
        self.assertIn("the value does not match the proof", m["title"])
