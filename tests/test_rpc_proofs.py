"""Tests for the routes that let a client check what it is told (issue 11):
getHeaders, getTxProof and getProof (aitnode/proofs.py, aitnode/rpc.py),
and the Merkle branches of tx_root (aitnode/encoding.py)."""

import hashlib

import cbor2
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aitnode import proofs
from aitnode.blocks import block_hash, tx_leaf
from aitnode.crypto import verify
from aitnode.encoding import U64, canonical, merkle_branch, merkle_levels, merkle_root, verify_merkle_branch
from tests.common import ALICE, AUTHORITY, BOB, CAROL, make_node, make_rpc, transfer, wire
from tests.test_rpc import RPCTestBase

try:
    from aitnode import jmt
except ImportError:  # the state tree of issue 11 is not merged yet
    jmt = None


def hashes(n, salt=b""):
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).hexdigest() for i in range(n)]


def shape(index, count):
    """Which side the node is on at each level where a sibling is used
    (None where it is carried up unchanged): what a branch can attest."""
    out = []
    while count > 1:
        out.append(None if index == count - 1 and count % 2 else index % 2)
        index //= 2
        count = (count + 1) // 2
    return [s for s in out if s is not None]


def flip(hex_text, bit):
    raw = bytearray(bytes.fromhex(hex_text))
    raw[bit // 8] ^= 0x80 >> (bit % 8)
    return raw.hex()


class MerkleBranchTests(SynchronousTestCase):
    def test_every_size_and_index(self):
        for n in range(1, 65):
            leaves = hashes(n)
            root = merkle_root(leaves)
            levels = merkle_levels(leaves)
            self.assertEqual(levels[-1][0].hex(), root)
            for i in range(n):
                branch = merkle_branch(levels, i)
                self.assertEqual(len(branch), len(shape(i, n)))
                self.assertTrue(verify_merkle_branch(leaves[i], i, n, branch, root), (n, i))
                # Another index: fails (the leaf would sit elsewhere).
                for j in range(n):
                    if j != i:
                        self.assertFalse(verify_merkle_branch(leaves[i], j, n, branch, root), (n, i, j))
                # Another leaf of the same tree at this index: fails.
                if n > 1:
                    self.assertFalse(verify_merkle_branch(leaves[(i + 1) % n], i, n, branch, root), (n, i))

    def test_no_leaves_and_out_of_range(self):
        self.assertEqual(merkle_levels([]), [])
        levels = merkle_levels(hashes(3))
        self.assertRaises(IndexError, merkle_branch, levels, 3)
        self.assertRaises(IndexError, merkle_branch, levels, -1)
        leaf, root = hashes(1)[0], merkle_root(hashes(1))
        self.assertTrue(verify_merkle_branch(leaf, 0, 1, [], root))
        for index, count, branch in ((1, 1, []), (-1, 1, []), (0, 0, []), (0, 1, [leaf]), (True, 1, []), (0, 1, "")):
            self.assertFalse(verify_merkle_branch(leaf, index, count, branch, root), (index, count, branch))
        for bad in ("AB" * 32, "ab" * 31, 5, None):
            self.assertFalse(verify_merkle_branch(bad, 0, 1, [], root))
            self.assertFalse(verify_merkle_branch(leaf, 0, 1, [], bad))

    @given(st.data())
    def test_any_change_fails(self, data):
        n = data.draw(st.integers(min_value=1, max_value=64), "n")
        i = data.draw(st.integers(min_value=0, max_value=n - 1), "index")
        leaves = hashes(n, data.draw(st.binary(max_size=4), "salt"))
        root = merkle_root(leaves)
        branch = merkle_branch(merkle_levels(leaves), i)
        self.assertTrue(verify_merkle_branch(leaves[i], i, n, branch, root))
        what = data.draw(st.sampled_from(["leaf", "branch", "root", "drop", "add", "swap"]), "what")
        leaf = leaves[i]
        if what == "branch" and not branch:
            what = "leaf"
        if what in ("swap", "drop") and len(branch) < 2:
            what = "add"
        bit = data.draw(st.integers(min_value=0, max_value=255), "bit")
        if what == "leaf":
            leaf = flip(leaf, bit)
        elif what == "branch":
            k = data.draw(st.integers(min_value=0, max_value=len(branch) - 1), "item")
            branch = branch[:k] + [flip(branch[k], bit)] + branch[k + 1:]
        elif what == "root":
            root = flip(root, bit)
        elif what == "drop":
            del branch[data.draw(st.integers(min_value=0, max_value=len(branch) - 1), "item")]
        elif what == "add":
            branch.insert(data.draw(st.integers(min_value=0, max_value=len(branch)), "at"), hashes(1, b"x")[0])
        else:
            branch = [branch[1], branch[0]] + branch[2:]
            if branch[0] == branch[1]:
                return
        self.assertFalse(verify_merkle_branch(leaf, i, n, branch, root), what)

    @given(st.integers(min_value=1, max_value=64), st.data())
    def test_another_index_or_count(self, n, data):
        """tx_root does not commit to the number of leaves, so (index,
        count) is attested only as far as the branch's shape: another pair
        verifies exactly when it has the same shape (docs/protocol.md 12,
        getTxProof), and then never for another position in the same tree."""
        i = data.draw(st.integers(min_value=0, max_value=n - 1))
        leaves = hashes(n)
        root = merkle_root(leaves)
        branch = merkle_branch(merkle_levels(leaves), i)
        j = data.draw(st.integers(min_value=0, max_value=70))
        m = data.draw(st.integers(min_value=j + 1, max_value=71))
        self.assertEqual(verify_merkle_branch(leaves[i], j, m, branch, root), shape(j, m) == shape(i, n), (i, n, j, m))
        for wrong in range(1, 72):
            if wrong != n and shape(i, wrong) != shape(i, n):
                self.assertFalse(verify_merkle_branch(leaves[i], i, wrong, branch, root))

    def test_the_count_is_not_committed(self):
        # Leaf 0 of 3 and of 4 take the same path; leaf 2 of 3 and leaf 1 of 2 too.
        leaves = hashes(3)
        root = merkle_root(leaves)
        self.assertTrue(verify_merkle_branch(leaves[0], 0, 4, merkle_branch(merkle_levels(leaves), 0), root))
        self.assertTrue(verify_merkle_branch(leaves[2], 1, 2, merkle_branch(merkle_levels(leaves), 2), root))


def check_signed(testcase, item, authority=AUTHORITY):
    testcase.assertEqual(block_hash(item["header"]), item["hash"])
    testcase.assertTrue(verify(authority.public_key, bytes.fromhex(item["sig"]), bytes.fromhex(item["hash"])))


class HeadersTests(RPCTestBase):
    def setUp(self):
        super().setUp()
        for n in range(1, 6):
            self.node.admission.submit(wire(transfer(ALICE, n, BOB, 10 + n)))
            self.node.pipeline.propose()
        self.assertEqual(self.node.chain.head()[0], 5)

    def test_headers_votes_and_sets(self):
        out = self.ok("GET", "/rpc/getHeaders?from=0")
        head = self.node.queries.get_head()
        self.assertEqual(out["head"], {"height": 5, "hash": head["hash"]})
        self.assertEqual(out["finalized"], head["finalized"])
        self.assertEqual(head["finalized"]["height"], 3)
        self.assertEqual([item["header"]["height"] for item in out["headers"]], [0, 1, 2, 3, 4, 5])
        for item in out["headers"]:
            h = item["header"]["height"]
            block = self.node.store.block_at(h)
            self.assertEqual(item["hash"], block["hash"])
            self.assertEqual(item["header"], block["header"])
            if h:
                check_signed(self, item)
                self.assertEqual(item["header"]["parent"], out["headers"][h - 1]["hash"])
            # The votes for h ride in h + 1; the head has none yet.
            child = self.node.store.block_at(h + 1)
            self.assertEqual(item["votes"], child["votes"] if child else [])
            if child is not None and h:
                self.assertEqual([v["hash"] for v in item["votes"]], [item["hash"]])
            # Block 1 opens the first epoch: it carries the set.
            self.assertEqual("authorities" in item, "authorities" in block)
            self.assertEqual(set(item) - {"authorities"}, {"header", "hash", "sig", "votes"})
        self.assertIn("authorities", out["headers"][1])
        self.assertEqual(out["headers"][1]["authorities"][0]["address"], AUTHORITY.address)
        self.assertEqual(out["headers"][5]["votes"], [])

    def test_from_and_limit(self):
        out = self.ok("GET", "/rpc/getHeaders?from=2&limit=2")
        self.assertEqual([i["header"]["height"] for i in out["headers"]], [2, 3])
        out = self.ok("GET", "/rpc/getHeaders?from=4&limit=256")
        self.assertEqual([i["header"]["height"] for i in out["headers"]], [4, 5])
        for start in (6, 1000, U64 - 1):
            out = self.ok("GET", f"/rpc/getHeaders?from={start}")
            self.assertEqual(out["headers"], [])
            self.assertEqual(out["head"]["height"], 5)

    def test_default_limit(self):
        self.patch(proofs, "MAX_HEADERS_BYTES", 1 << 30)
        for n in range(6, 70):
            self.node.pipeline.propose()
        out = self.ok("GET", "/rpc/getHeaders?from=1")
        self.assertEqual([i["header"]["height"] for i in out["headers"]], list(range(1, 65)))

    def test_bad_arguments(self):
        for query in ("", "?limit=5", "?from=", "?from=x", "?from=-1", "?from=1.0", "?from=%C2%B2", "?from=18446744073709551616",
                      "?from=" + "9" * 21):
            self.refused("GET", "/rpc/getHeaders" + query, 400, "bad_height")
        for query in ("limit=0", "limit=257", "limit=", "limit=x", "limit=-1", "limit=1e2", "limit=99999999999999999999999"):
            self.refused("GET", "/rpc/getHeaders?from=0&" + query, 400, "bad_limit")
        self.refused("POST", "/rpc/getHeaders?from=0", 405, "method_not_allowed")

    def test_answer_bytes_are_bounded(self):
        whole = self.ok("GET", "/rpc/getHeaders?from=0")["headers"]
        sizes = [len(proofs.dump(item)) + 1 for item in whole]
        # Room for the first three headers and part of the fourth: three.
        self.patch(proofs, "MAX_HEADERS_BYTES", sum(sizes[:3]) + sizes[3] // 2)
        self.assertEqual(self.ok("GET", "/rpc/getHeaders?from=0")["headers"], whole[:3])
        self.patch(proofs, "MAX_HEADERS_BYTES", sum(sizes[:3]))
        self.assertEqual(self.ok("GET", "/rpc/getHeaders?from=0")["headers"], whole[:3])
        # One header is always given, however large.
        self.patch(proofs, "MAX_HEADERS_BYTES", 10)
        self.assertEqual(self.ok("GET", "/rpc/getHeaders?from=2")["headers"], whole[2:3])

    def test_transactions_read_are_bounded(self):
        # Blocks 1 to 5 hold one transaction each: a budget of 3 ends the
        # answer after the third block that holds one.
        self.patch(proofs, "MAX_HEADERS_TXS", 3)
        out = self.ok("GET", "/rpc/getHeaders?from=0")
        self.assertEqual([i["header"]["height"] for i in out["headers"]], [0, 1, 2, 3])
        reads = []
        real = self.node.store.block_at
        self.patch(self.node.store, "block_at", lambda h: reads.append(h) or real(h))
        self.ok("GET", "/rpc/getHeaders?from=2&limit=256")
        self.assertEqual(reads, [2, 3, 4, 5])

    def test_what_the_byte_bound_holds(self):
        """The figures in proofs.py: a vote is about 375 bytes of JSON, a
        header with its hash and signature about 820."""
        item = self.ok("GET", "/rpc/getHeaders?from=2&limit=1")["headers"][0]
        vote = len(proofs.dump(item["votes"][0])) + 1
        bare = len(proofs.dump(dict(item, votes=[]))) + 1
        member = len(proofs.dump(self.ok("GET", "/rpc/getHeaders?from=1&limit=1")["headers"][0]["authorities"][0])) + 1
        self.assertLess((vote, bare, member), (400, 900, 160))
        # 256 headers of an 8-authority chain fit,
        self.assertLessEqual(proofs.MAX_HEADERS * (bare + 8 * vote), proofs.MAX_HEADERS_BYTES)
        # and 2 of a 1,000-authority chain (1 where a block carries the set).
        self.assertLessEqual(2 * (bare + 1000 * vote), proofs.MAX_HEADERS_BYTES)


class TxProofTests(RPCTestBase):
    def setUp(self):
        super().setUp()
        self.node.pipeline.propose()
        self.txs = [transfer(ALICE, n, BOB, 10 + n) for n in range(1, 6)] + [transfer(BOB, 1, CAROL, 3)]
        for t in self.txs:
            self.node.admission.submit(wire(t))
        self.block = self.node.pipeline.propose()
        self.assertEqual(len(self.block["txs"]), 6)

    def test_every_transaction_of_a_block(self):
        for index, t in enumerate(self.txs):
            out = self.ok("GET", "/rpc/getTxProof/" + t.hash)
            self.assertEqual(set(out), {"tx_hash", "tx", "height", "block_hash", "header", "sig", "index", "count", "leaf",
                                        "branch"})
            self.assertEqual((out["tx_hash"], out["tx"]), (t.hash, t.to_wire()))
            self.assertEqual((out["height"], out["block_hash"], out["header"]),
                             (2, self.block["hash"], self.block["header"]))
            self.assertEqual((out["index"], out["count"], out["leaf"]), (self.block["txs"].index(t.hash), 6, t.hash))
            check_signed(self, {"header": out["header"], "hash": out["block_hash"], "sig": out["sig"]})
            self.assertTrue(verify_merkle_branch(out["leaf"], out["index"], out["count"], out["branch"],
                                                 out["header"]["tx_root"]))
            self.assertFalse(verify_merkle_branch(out["leaf"], out["index"], out["count"], out["branch"][1:],
                                                  out["header"]["tx_root"]))

    def test_unknown_pending_and_malformed(self):
        self.refused("GET", "/rpc/getTxProof/" + "ab" * 32, 404, "unknown_tx")
        pending = transfer(ALICE, 6, BOB, 1)
        self.node.admission.submit(wire(pending))
        self.refused("GET", "/rpc/getTxProof/" + pending.hash, 404, "unknown_tx")
        for bad in ("AB" * 32, "ab" * 31, "xyz", "ab" * 33):
            self.refused("GET", "/rpc/getTxProof/" + bad, 400, "bad_hex")

    def test_tree_levels_are_cached_and_bounded(self):
        calls = []
        real = proofs.merkle_levels
        self.patch(proofs, "merkle_levels", lambda leaves: calls.append(len(leaves)) or real(leaves))
        for t in self.txs:
            self.ok("GET", "/rpc/getTxProof/" + t.hash)
        self.assertEqual(calls, [6])
        cache = self.node.queries.trees
        self.assertEqual(cache.nodes, 6 + 3 + 2 + 1)
        # Too large a tree is not kept; an older one leaves for a newer.
        small = proofs.TreeCache(max_nodes=12)
        other = {"hash": "cd" * 32, "txs": [t.hash for t in self.txs[:3]]}
        small.levels(self.block)
        small.levels(other)
        self.assertEqual((list(small._levels), small.nodes), ([other["hash"]], 3 + 2 + 1))
        tiny = proofs.TreeCache(max_nodes=5)
        tiny.levels(self.block)
        self.assertEqual((len(tiny._levels), tiny.nodes), (0, 0))


class ClaimProofTests(SynchronousTestCase):
    def test_a_claims_leaf_covers_its_attestation(self):
        from tests import vectors_tool as V
        g, payment, claim, att = V.claim_parts()
        node = make_node(self, doc=V.claim_genesis_doc(), key=V.AUTHORITY)
        _, b2, _ = V.claim_chain(node.chain, payment, claim, att)
        _, http = make_rpc(node)
        resp = self.successResultOf(http.get("http://127.0.0.1/rpc/getTxProof/" + claim.hash))
        self.assertEqual(resp.code, 200)
        out = self.successResultOf(resp.json())
        self.assertEqual(out["attestation"], att)
        self.assertEqual(out["leaf"], hashlib.sha256(canonical([claim.hash, att])).hexdigest())
        self.assertEqual(out["leaf"], tx_leaf(claim.hash, att))
        self.assertEqual((out["index"], out["count"], out["branch"]), (0, 1, []))
        self.assertTrue(verify_merkle_branch(out["leaf"], 0, 1, [], b2["header"]["tx_root"]))
        self.assertFalse(verify_merkle_branch(claim.hash, 0, 1, [], b2["header"]["tx_root"]))


class FakeProofs:
    """store.proof and store.state_root as the state tree gives them
    (issue 11), for the route's plumbing: the value is the head's, the
    proof a fixed marker; heights below pruned_below raise a LookupError
    other than KeyError, as store.Pruned does."""

    Pruned = type("Pruned", (LookupError,), {})

    def __init__(self, store, pruned_below=0):
        self.store = store
        self.pruned_below = pruned_below
        self.calls = []

    def install(self, testcase):
        for name in ("proof", "state_root"):
            if hasattr(self.store, name):
                testcase.patch(self.store, name, getattr(self, name))
            else:  # before issue 11's store lands
                setattr(self.store, name, getattr(self, name))
                testcase.addCleanup(delattr, self.store, name)

    def proof(self, ns, key, height):
        self.calls.append((ns, key, height))
        if self.store.hash_at(height) is None:
            raise KeyError(height)
        if height < self.pruned_below:
            raise self.Pruned(height)
        value = self.store.entry(ns, key)
        return (None if value is None else canonical(value)), b"\x01proof" + height.to_bytes(8, "big")

    def state_root(self, height=None):
        return self.store.block_at(self.store.head()[0] if height is None else height)["header"]["state_root"]


def install_fake_proofs(testcase, node, **kw):
    """FakeProofs on node's store while the store has no state tree yet
    (after issue 11's store lands, the real one answers; returns None)."""
    from aitnode.store import Store
    if hasattr(Store, "proof"):
        return None
    fake = FakeProofs(node.store, **kw)
    fake.install(testcase)
    return fake


class StateProofTests(RPCTestBase):
    def setUp(self):
        super().setUp()
        for n in range(1, 5):
            self.node.admission.submit(wire(transfer(ALICE, n, BOB, 10 + n)))
            self.node.pipeline.propose()
        self.fake = FakeProofs(self.node.store, pruned_below=2)
        self.fake.install(self)

    def test_default_height_is_the_finalized_one(self):
        fin = self.node.chain.finality().finalized
        self.assertEqual(fin.height, 2)
        out = self.ok("GET", "/rpc/getProof/acct/" + ALICE.address)
        balance, nonce = self.node.store.entry("acct", ALICE.address)
        self.assertEqual(out, {
            "height": 2, "block_hash": fin.hash, "state_root": self.node.store.block_at(2)["header"]["state_root"],
            "namespace": "acct", "key": ALICE.address, "value": [balance, nonce],
            "value_cbor": canonical([balance, nonce]).hex(), "proof": (b"\x01proof" + (2).to_bytes(8, "big")).hex(),
        })
        self.assertEqual(cbor2.loads(bytes.fromhex(out["value_cbor"])), out["value"])
        self.assertEqual(self.fake.calls, [("acct", ALICE.address, 2)])

    def test_explicit_height_absent_value_and_text_keys(self):
        out = self.ok("GET", "/rpc/getProof/acct/" + CAROL.address + "?height=4")
        self.assertEqual((out["height"], out["value"], out["value_cbor"]), (4, None, None))
        self.assertEqual(out["block_hash"], self.node.store.hash_at(4))
        out = self.ok("GET", "/rpc/getProof/chain/supply?height=3")
        self.assertEqual(out["value"], self.node.store.entry("chain", "supply"))
        # A key is text: any characters, '/' included, percent-encoded or not.
        for path, key in (("rcpt/a%2Fb%20c", "a/b c"), ("rcpt/a/b", "a/b"), ("rcpt/%C3%A9", "\u00e9"), ("param/base_fee", "base_fee")):
            self.assertEqual(self.ok("GET", "/rpc/getProof/" + path)["key"], key)
        self.assertEqual(self.fake.calls[-4:], [("rcpt", "a/b c", 2), ("rcpt", "a/b", 2), ("rcpt", "\u00e9", 2),
                                                ("param", "base_fee", 2)])

    def test_refusals(self):
        self.refused("GET", "/rpc/getProof/acct/" + ALICE.address + "?height=5", 404, "unknown_block")
        self.refused("GET", "/rpc/getProof/acct/" + ALICE.address + "?height=18446744073709551615", 404, "unknown_block")
        self.refused("GET", "/rpc/getProof/acct/" + ALICE.address + "?height=1", 410, "state_pruned")
        for ns in ("state", "ACCT", "acct2", "%C3%A9", "meta"):
            self.refused("GET", f"/rpc/getProof/{ns}/x", 400, "bad_namespace")
        for q in ("x", "", "-1", "1.5", "18446744073709551616"):
            self.refused("GET", "/rpc/getProof/acct/x?height=" + q, 400, "bad_height")
        self.refused("GET", "/rpc/getProof/rcpt/" + "a" * 257, 400, "bad_text")
        self.refused("GET", "/rpc/getProof/rcpt/", 404, "not_found")
        self.refused("GET", "/rpc/getProof/rcpt", 404, "not_found")
        self.refused("POST", "/rpc/getProof/rcpt/x", 405, "method_not_allowed")
        # The store's KeyError for a height it has no block of is unknown_block too.
        self.fake.pruned_below = 0
        self.patch(self.node.store, "hash_at", lambda height: None)  # FakeProofs: KeyError
        self.refused("GET", "/rpc/getProof/acct/x?height=3", 404, "unknown_block")

    def test_every_namespace_is_asked(self):
        for ns in proofs.STATE_NAMESPACES:
            self.assertEqual(self.ok("GET", f"/rpc/getProof/{ns}/k")["namespace"], ns)


class RealStateProofTests(RPCTestBase):
    """getProof against the state tree itself (runs once issue 11's
    aitnode/jmt.py and Store.proof are merged)."""

    def setUp(self):
        from aitnode.store import Store
        if jmt is None or not hasattr(Store, "proof"):
            raise self.skipTest("issue 11's state tree (aitnode/jmt.py, Store.proof) is not merged yet")
        super().setUp()
        for n in range(1, 5):
            self.node.admission.submit(wire(transfer(ALICE, n, BOB, 10 + n)))
            self.node.pipeline.propose()

    def test_present_and_absent_entries_verify(self):
        for height in (None, 1, 2, 4):
            q = "" if height is None else f"?height={height}"
            for ns, key in (("acct", ALICE.address), ("acct", CAROL.address), ("chain", "supply"), ("chain", "authorities"),
                            ("param", "base_fee"), ("authkey", AUTHORITY.address), ("rcpt", "nope"), ("pay", "ab" * 32)):
                out = self.ok("GET", f"/rpc/getProof/{ns}/{key}{q}")
                header = self.node.store.block_at(out["height"])["header"]
                self.assertEqual(out["state_root"], header["state_root"])
                kh = jmt.key_hash(ns, key)
                vh = None if out["value"] is None else jmt.value_hash(out["value"])
                self.assertEqual(out["value_cbor"], None if out["value"] is None else canonical(out["value"]).hex())
                jmt.verify_proof(bytes.fromhex(out["state_root"]), kh, vh, bytes.fromhex(out["proof"]))
                self.assertRaises(jmt.ProofError, jmt.verify_proof, bytes.fromhex(out["state_root"]), kh,
                                  jmt.value_hash("other"), bytes.fromhex(out["proof"]))

    def test_genesis_state(self):
        out = self.ok("GET", "/rpc/getProof/acct/" + ALICE.address + "?height=0")
        self.assertEqual(out["state_root"], self.node.chain.genesis.header["state_root"])
        self.assertEqual(out["value"], [10**12, 0])
