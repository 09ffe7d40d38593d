"""The independent client (written from docs/protocol.md only) against the
document's vectors and against a real node in process."""

import ast
import hashlib
import json
import os
import re
import subprocess
import sys

import nacl.signing
from twisted.trial.unittest import SynchronousTestCase

from tests import independent_client as ic
from tests.common import AUTHORITY, BOB, CHAIN_ID, genesis_doc, make_node, make_rpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "protocol.md")
CLIENT = os.path.join(ROOT, "tests", "independent_client.py")
BASE = "http://127.0.0.1"


def vectors():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    return {
        m.group(1): json.loads(m.group(2))
        for m in re.finditer(r"^```json vector:([a-z0-9_]+)\n(.*?)\n```$", text, re.M | re.S)
    }


class IndependenceTests(SynchronousTestCase):
    def test_imports_nothing_from_aitnode(self):
        with open(CLIENT, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                modules.add(node.module or "")
        self.assertEqual(modules, {"hashlib", "nacl.signing"})

    def test_runs_without_aitnode(self):
        code = (
            "import sys; sys.modules['aitnode'] = None\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('client', {CLIENT!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert not any(k == 'aitnode' or k.startswith('aitnode.') for k in sys.modules if sys.modules[k] is not None)\n"
            "print(m.keypair(bytes(32))[2])\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.startswith("ait1"))


class VectorTests(SynchronousTestCase):
    """(a) The client reproduces every vector of docs/protocol.md."""

    def setUp(self):
        self.v = vectors()

    def test_cbor(self):
        for case in self.v["cbor"]["cases"]:
            self.assertEqual(ic.cbor(case["value"]).hex(), case["cbor"], case["value"])

    def test_keys(self):
        keys = self.v["keys"]
        for name in ("authority", "sender", "receiver"):
            kv = keys[name]
            label = re.fullmatch(r'sha256\("(.*)"\)', kv["seed_of"]).group(1)
            seed = hashlib.sha256(label.encode()).digest()
            self.assertEqual(seed.hex(), kv["private_key"])
            _, pk, addr = ic.keypair(seed)
            self.assertEqual(pk.hex(), kv["public_key"])
            self.assertEqual(ic.sha256(pk).hex(), kv["pubkey_sha256"])
            self.assertEqual(ic.address_bytes(addr).hex(), kv["address_bytes"])
            self.assertEqual(addr, kv["address"])
        self.assertEqual(ic.address_from_bytes(bytes(20)), keys["zero_address"])
        self.assertEqual(ic.address_from_bytes(b"\xff" * 20), keys["ff_address"])
        self.assertEqual(ic.key_file(bytes.fromhex(keys["sender"]["private_key"])), keys["sender_key_file"])

    def test_address_checks(self):
        addr = self.v["keys"]["sender"]["address"]
        self.assertRaises(ValueError, ic.address_bytes, addr.upper())
        self.assertRaises(ValueError, ic.address_bytes, addr[:-1] + ("q" if addr[-1] != "q" else "p"))

    def test_transfer(self):
        t = self.v["transfer"]
        seed = bytes.fromhex(t["seed"])
        b = t["body"]
        self.assertEqual(ic.cbor(b).hex(), t["body_cbor"])
        self.assertEqual(ic.sign_bytes(b).hex(), t["sign_bytes"])
        wire = ic.sign_transfer(seed, t["chain_id"], b["nonce"], b["fee"], b["payload"]["to"], b["payload"]["amount"])
        self.assertEqual(wire, t["wire"])
        self.assertEqual(wire["sig"], t["sig"])
        self.assertEqual(ic.cbor(ic.hashed_map(wire, t["chain_id"])).hex(), t["hashed_cbor"])
        self.assertEqual(ic.tx_hash(wire, t["chain_id"]), t["tx_hash"])
        with_id = ic.sign_transfer(
            seed, t["chain_id"], b["nonce"], b["fee"], b["payload"]["to"], b["payload"]["amount"], include_chain_id=True
        )
        self.assertEqual(ic.tx_hash(with_id), t["tx_hash"])
        self.assertTrue(ic.verify_tx(wire, t["chain_id"]))
        self.assertFalse(ic.verify_tx(wire, "another-chain"))
        self.assertEqual(b["fee"], ic.min_fee(ic.PARAM_DEFAULTS, b["payload"]))

    def test_min_fee(self):
        for case in self.v["min_fee"]["cases"]:
            self.assertEqual(ic.cbor(case["payload"]).hex(), case["payload_cbor"])
            self.assertEqual(len(ic.cbor(case["payload"])), case["payload_size"])
            self.assertEqual(ic.min_fee(case["params"], case["payload"], case["type"]), case["min_fee"])

    def test_merkle(self):
        m = self.v["merkle"]
        for n, root in m["roots"].items():
            self.assertEqual(ic.merkle_root(m["hashes"][: int(n)]), root)

    def test_genesis(self):
        gv = self.v["genesis"]
        doc = gv["genesis_json"]
        entries = ic.genesis_entries(doc)
        key = lambda e: (e[0], e[1])  # noqa: E731
        self.assertEqual(sorted(entries, key=key), sorted(gv["entries"], key=key))
        first = gv["entries"][0]
        self.assertEqual(ic.cbor(first).hex(), gv["first_entry_cbor"])
        self.assertEqual(ic.leaf(*first).to_bytes(ic.ACC_BYTES, "big").hex(), gv["first_entry_leaf"])
        self.assertEqual(ic.accumulator(entries).to_bytes(ic.ACC_BYTES, "big").hex(), gv["accumulator"])
        header = ic.genesis_header(doc)
        self.assertEqual(header, gv["header"])
        self.assertEqual(ic.cbor(header).hex(), gv["header_cbor"])
        self.assertEqual(ic.block_hash(header), gv["hash"])

    def test_block1(self):
        b = self.v["block1"]
        doc = self.v["genesis"]["genesis_json"]
        chain_id = doc["chain_id"]
        self.assertEqual([ic.tx_hash(w, chain_id) for w in b["txs"]], b["tx_hashes"])
        self.assertTrue(all(ic.verify_tx(w, chain_id) for w in b["txs"]))
        state = ic.State(ic.genesis_entries(doc))
        _, proposer_pk, proposer = ic.keypair(bytes.fromhex(b["proposer_seed"]))
        state.apply_block(b["txs"], proposer)
        key = lambda e: (e[0], e[1])  # noqa: E731
        self.assertEqual(sorted(state.as_entries(), key=key), sorted(b["entries_after"], key=key))
        header = {
            "chain_id": chain_id,
            "parent": self.v["genesis"]["hash"],
            "height": 1,
            "timestamp": b["header"]["timestamp"],
            "proposer": proposer,
            "tx_root": ic.merkle_root(b["tx_hashes"]),
            "state_root": state.root(),
        }
        self.assertEqual(header, b["header"])
        self.assertEqual(ic.block_hash(header), b["hash"])
        self.assertEqual(ic.sign(bytes.fromhex(b["proposer_seed"]), bytes.fromhex(b["hash"])).hex(), b["sig"])


class EndToEndTests(SynchronousTestCase):
    """(b) A transfer signed by the client is included by a real node and
    balances move exactly as the document says."""

    SEED = hashlib.sha256(b"aitnode independent client").digest()

    def setUp(self):
        self.doc = genesis_doc()
        self.node = make_node(self, doc=self.doc)
        self.rpc, self.http = make_rpc(self.node)
        _, self.pk, self.addr = ic.keypair(self.SEED)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        resp = self.successResultOf(self.http.request(method, BASE + path, data=data))
        out = json.loads(self.successResultOf(self.http.content(resp)))
        return resp.code, out

    def ok(self, method, path, body=None):
        status, out = self.call(method, path, body)
        self.assertEqual(status, 200, out)
        return out

    def test_transfer_included(self):
        # Fund the client's address through the authority (a MINT).
        funding = 10**6
        self.node.submit_signed_by_node("MINT", {"to": self.addr, "amount": funding})
        self.node.propose()
        self.assertEqual(self.ok("GET", f"/rpc/getBalance/{self.addr}"), {"balance": funding, "nonce": 0})

        chain_id = self.ok("GET", "/rpc/getBlock/0")["chain_id"]
        self.assertEqual(chain_id, CHAIN_ID)
        params = self.ok("GET", "/rpc/getParams")
        receiver_before = self.ok("GET", f"/rpc/getBalance/{BOB.address}")["balance"]

        nonce = self.ok("GET", f"/rpc/getBalance/{self.addr}")["nonce"] + 1
        amount = 123456
        payload = {"to": BOB.address, "amount": amount}
        fee = ic.min_fee(params, payload)
        self.assertEqual(fee, params["base_fee"] + params["fee_per_byte"] * len(ic.cbor(payload)))

        # One unit less than the computed minimum is refused: the client's
        # fee rule is exactly the node's.
        cheap = ic.sign_transfer(self.SEED, chain_id, nonce, fee - 1, BOB.address, amount)
        status, out = self.call("POST", "/rpc/sendTx", cheap)
        self.assertEqual((status, out["error"]["code"]), (400, "fee_too_low"), out)

        wire = ic.sign_transfer(self.SEED, chain_id, nonce, fee, BOB.address, amount)
        self.assertNotIn("chain_id", wire)
        mine = ic.tx_hash(wire, chain_id)
        self.assertEqual(self.ok("POST", "/rpc/sendTx", wire), {"txHash": mine})
        self.assertEqual(self.ok("GET", f"/rpc/getTx/{mine}")["status"], "pending")

        block = self.node.propose()
        self.assertEqual(block["txs"], [mine])
        got = self.ok("GET", f"/rpc/getTx/{mine}")
        self.assertEqual(got["status"], "included")
        self.assertEqual(got["block"]["height"], 2)
        self.assertEqual(got["block"]["hash"], block["hash"])
        self.assertEqual(got["tx"], dict(wire, chain_id=chain_id))
        self.assertEqual(ic.tx_hash(got["tx"]), mine)
        self.assertEqual(got["receipt"]["fee"], fee)

        self.assertEqual(
            self.ok("GET", f"/rpc/getBalance/{self.addr}"), {"balance": funding - amount - fee, "nonce": nonce}
        )
        self.assertEqual(self.ok("GET", f"/rpc/getBalance/{BOB.address}")["balance"], receiver_before + amount)
        # The fee went to the proposer (which paid nothing itself: MINT is fee 0).
        self.assertEqual(self.ok("GET", f"/rpc/getBalance/{AUTHORITY.address}"), {"balance": fee, "nonce": 1})

        # Sending the same transaction again changes nothing.
        self.assertEqual(self.ok("POST", "/rpc/sendTx", wire), {"txHash": mine})

    def test_client_follows_the_chain(self):
        """The client recomputes every block's hash, signature, tx_root and
        state_root from genesis.json and the blocks the node serves."""
        self.node.submit_signed_by_node("MINT", {"to": self.addr, "amount": 5000})
        self.node.propose()
        params = self.ok("GET", "/rpc/getParams")
        for nonce, amount in ((1, 10), (2, 20), (3, 30)):
            payload = {"to": BOB.address, "amount": amount}
            wire = ic.sign_transfer(self.SEED, CHAIN_ID, nonce, ic.min_fee(params, payload) + nonce, BOB.address, amount)
            self.ok("POST", "/rpc/sendTx", wire)
        self.node.propose()
        self.node.propose()  # an empty block

        genesis = self.ok("GET", "/rpc/getBlock/0")
        self.assertEqual(
            {k: genesis[k] for k in ("chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root")},
            ic.genesis_header(self.doc),
        )
        self.assertEqual(genesis["hash"], ic.block_hash(ic.genesis_header(self.doc)))
        authorities = {a["address"]: bytes.fromhex(a["public_key"]) for a in self.doc["authorities"]}
        state = ic.State(ic.genesis_entries(self.doc))
        parent = genesis["hash"]
        head = self.ok("GET", "/rpc/getHead")
        self.assertEqual(head["height"], 3)
        for height in range(1, head["height"] + 1):
            blk = self.ok("GET", f"/rpc/getBlock/{height}?full=true")
            header = {k: blk[k] for k in ("chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root")}
            self.assertEqual(header["parent"], parent)
            self.assertEqual(ic.block_hash(header), blk["hash"])
            pk = authorities[header["proposer"]]
            nacl.signing.VerifyKey(pk).verify(bytes.fromhex(blk["hash"]), bytes.fromhex(blk["sig"]))
            hashes = [ic.tx_hash(w) for w in blk["txs"]]
            self.assertEqual(ic.merkle_root(hashes), header["tx_root"])
            self.assertTrue(all(ic.verify_tx(w, CHAIN_ID) for w in blk["txs"]))
            state.apply_block(blk["txs"], header["proposer"])
            self.assertEqual(state.root(), header["state_root"], f"state root of block {height}")
            parent = blk["hash"]
        self.assertEqual(head["hash"], parent)
        spent = sum(a + ic.min_fee(params, {"to": BOB.address, "amount": a}) + n for n, a in ((1, 10), (2, 20), (3, 30)))
        self.assertEqual(state.account(self.addr), (5000 - spent, 3))
        self.assertEqual(self.ok("GET", f"/rpc/getBalance/{self.addr}"), {"balance": 5000 - spent, "nonce": 3})
