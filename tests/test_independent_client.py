"""The independent client (written from docs/protocol.md only) against the
document's vectors and against a real node in process, its light client
against the node's real getHeaders, getProof and getTxProof answers,
honest and tampered with."""

import ast
import hashlib
import json
import os
import re
import subprocess
import sys

import nacl.signing
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server

from aitnode import consensus, finality as FIN, receipts as R
from aitnode.attest import Attestor
from aitnode.steps import run_steps
from aitnode.tx import sign_tx
from tests import independent_client as ic
from tests.common import (ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, COORDINATOR, ESCROW, MINER, genesis_doc, key,
                          make_node, make_rpc, transfer)

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
        # twisted.web serves the client's own coordinator; nothing of aitnode.
        self.assertEqual(modules, {"hashlib", "json", "nacl.signing", "twisted.web.resource", "twisted.web.server"})

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

    def test_finality_vote(self):
        fv = self.v["finality_vote"]
        seed = hashlib.sha256(b"aitnode vector authority").digest()
        cid, s = fv["chain_id"], fv["signed"]
        self.assertEqual(ic.cbor(s).hex(), fv["signed_cbor"])
        self.assertEqual(ic.vote_sign_bytes(cid, s["height"], s["hash"], s["source_height"], s["source_hash"]).hex(),
                         fv["sign_bytes"])
        wire = ic.sign_vote(seed, cid, s["height"], s["hash"], s["source_height"], s["source_hash"])
        self.assertEqual(wire, fv["wire"])
        self.assertTrue(ic.vote_ok(wire, fv["voter"]["public_key"], cid))
        self.assertFalse(ic.vote_ok(wire, fv["voter"]["public_key"], "another-chain"))
        self.assertEqual(ic.hash_hex(wire), fv["leaf"])
        self.assertEqual(ic.merkle_root([fv["leaf"]]), fv["votes_root"])
        self.assertEqual({n: ic.quorum(int(n)) for n in fv["quorum"]}, fv["quorum"])

    def test_evidence(self):
        ev = self.v["evidence"]
        pk = self.v["finality_vote"]["voter"]["public_key"]
        for name in ("double_vote", "surround_vote"):
            w = ev[name]["wire"]
            self.assertEqual(ic.vote_evidence(w["b"], w["a"]), w)
            self.assertEqual(ic.vote_rule_broken(w["a"], w["b"]), name)
            self.assertTrue(ic.vote_ok(w["a"], pk, ev["chain_id"]) and ic.vote_ok(w["b"], pk, ev["chain_id"]))
            self.assertEqual(ic.hash_hex(w), ev[name]["id"])
        w = ev["double_proposal"]["wire"]
        self.assertEqual(ic.proposal_evidence(w["b"], w["a"]), w)
        for half in ("a", "b"):
            self.assertTrue(ic._verify(pk, w[half]["sig"], bytes.fromhex(ic.block_hash(w[half]["header"]))))
        self.assertEqual(ic.hash_hex(w), ev["double_proposal"]["id"])
        ids = sorted(ev[n]["id"] for n in ("double_vote", "surround_vote", "double_proposal"))
        self.assertEqual(ids, ev["block_ids"])
        self.assertEqual(ic.merkle_root(ids), ev["evidence_root"])

    def test_state_tree(self):
        st = self.v["state_tree"]
        state = {}
        for step in st["steps"]:
            for ns, k, v in step["set"]:
                if v is None:
                    state.pop((ns, k), None)
                else:
                    state[(ns, k)] = v
            self.assertEqual(ic.state_root((ns, k, v) for (ns, k), v in state.items()), step["root"])
        root = st["steps"][-1]["root"]
        for p in st["proofs"]:
            value = state.get((p["namespace"], p["key"]))
            self.assertEqual(p["value_cbor"], None if value is None else ic.cbor(value).hex())
            self.assertTrue(ic.check_state_proof(root, p["namespace"], p["key"], p["value_cbor"], p["proof"]))
            # The same proof says nothing of another key, value or root.
            self.assertFalse(ic.check_state_proof(root, p["namespace"], p["key"] + "x", p["value_cbor"], p["proof"]))
            self.assertFalse(ic.check_state_proof(root, p["namespace"], p["key"], ic.cbor(12345).hex(), p["proof"]))
            self.assertFalse(ic.check_state_proof("11" * 32, p["namespace"], p["key"], p["value_cbor"], p["proof"]))

    def test_genesis(self):
        gv = self.v["genesis"]
        doc = gv["genesis_json"]
        entries = ic.genesis_entries(doc)
        key = lambda e: (e[0], e[1])  # noqa: E731
        self.assertEqual(sorted(entries, key=key), sorted(gv["entries"], key=key))
        first = gv["entries"][0]
        self.assertEqual(ic.cbor(first).hex(), gv["first_entry_cbor"])
        kh, vh = ic.key_hash(first[0], first[1]), ic.value_hash(first[2])
        self.assertEqual(kh.hex(), gv["first_entry_key_hash"])
        self.assertEqual(vh.hex(), gv["first_entry_value_hash"])
        self.assertEqual(ic.leaf(kh, vh).hex(), gv["first_entry_leaf"])
        self.assertEqual(ic.state_root(entries), gv["header"]["state_root"])
        self.assertEqual(ic.cbor(ic.genesis_set(doc)).hex(), gv["authorities_cbor"])
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
        self.assertEqual(ic.block_size(b["txs"], chain_id), b["block_bytes"])
        params = ic.genesis_params(doc)
        self.assertTrue(ic.block_within_limits(params, b["txs"], chain_id))
        self.assertFalse(ic.block_within_limits(dict(params, max_block_bytes=b["block_bytes"] - 1), b["txs"], chain_id))
        self.assertFalse(ic.block_within_limits(dict(params, max_block_txs=1), b["txs"], chain_id))
        state = ic.State(ic.genesis_entries(doc))
        _, proposer_pk, proposer = ic.keypair(bytes.fromhex(b["proposer_seed"]))
        state.apply_block(b["txs"], proposer)
        key = lambda e: (e[0], e[1])  # noqa: E731
        self.assertEqual(sorted(state.as_entries(), key=key), sorted(b["entries_after"], key=key))
        # Block 1 begins the first epoch: it carries the set.
        self.assertEqual(b["authorities"], ic.genesis_set(doc))
        header = {
            "chain_id": chain_id,
            "parent": self.v["genesis"]["hash"],
            "height": 1,
            "timestamp": b["header"]["timestamp"],
            "proposer": proposer,
            "tx_root": ic.merkle_root(b["tx_hashes"]),
            "state_root": state.root(),
            "votes_root": ic.votes_root([]),
            "evidence_root": ic.evidence_root([]),
            "authorities_hash": ic.hash_hex(b["authorities"]),
        }
        self.assertEqual(header, b["header"])
        self.assertEqual(ic.block_hash(header), b["hash"])
        self.assertEqual(ic.sign(bytes.fromhex(b["proposer_seed"]), bytes.fromhex(b["hash"])).hex(), b["sig"])
        # The follower checks the whole record, and refuses it without the set or stamped before its turn.
        record = {"header": b["header"], "hash": b["hash"], "sig": b["sig"], "txs": b["tx_hashes"],
                  "votes": b["votes"], "evidence": b["evidence"], "authorities": b["authorities"]}
        follower = ic.Follower(doc)
        follower.follow(record, b["txs"])
        self.assertEqual(sorted(follower.state.as_entries(), key=key), sorted(b["entries_after"], key=key))
        self.assertEqual(follower.finality()["finalized"], {"height": 0, "hash": self.v["genesis"]["hash"]})
        with self.assertRaisesRegex(ValueError, "authority set"):
            ic.Follower(doc).follow({k: v for k, v in record.items() if k != "authorities"}, b["txs"])
        early = dict(b["header"], timestamp=doc["timestamp"] + ic.PARAM_DEFAULTS["block_interval_ms"] - 1)
        h = ic.block_hash(early)
        with self.assertRaisesRegex(ValueError, "turn"):
            ic.Follower(doc).follow(dict(record, header=early, hash=h,
                                         sig=ic.sign(bytes.fromhex(b["proposer_seed"]), bytes.fromhex(h)).hex()), b["txs"])

    def seeded(self, kv):
        label = re.fullmatch(r'sha256\("(.*)"\)', kv["seed_of"]).group(1)
        seed = hashlib.sha256(label.encode()).digest()
        self.assertEqual(seed.hex(), kv["private_key"])
        _, pk, addr = ic.keypair(seed)
        self.assertEqual(pk.hex(), kv["public_key"])
        if "address" in kv:
            self.assertEqual(addr, kv["address"])
        return seed

    def test_claim(self):
        c = self.v["claim"]
        cid = c["chain_id"]
        seeds = {name: self.seeded(kv) for name, kv in c["keys"].items()}
        addr = {name: ic.keypair(seed)[2] for name, seed in seeds.items()}
        client_seed = bytes.fromhex(self.v["keys"]["sender"]["private_key"])
        authority_seed = bytes.fromhex(self.v["keys"]["authority"]["private_key"])
        doc = c["genesis_json"]
        self.assertEqual(ic.block_hash(ic.genesis_header(doc)), c["genesis_hash"])
        params = ic.genesis_params(doc)
        self.assertEqual(params["coordinator"]["address"], addr["coordinator"])

        # The client pays escrow.
        pw = c["payment"]["wire"]
        payment = ic.sign_transfer(client_seed, cid, 1, ic.min_fee(params, pw["payload"]), addr["escrow"], pw["payload"]["amount"])
        self.assertEqual(payment, pw)
        self.assertEqual(ic.tx_hash(payment, cid), c["payment"]["tx_hash"])

        # The miner signs the receipt.
        wire = c["claim"]["wire"]
        fields = {k: wire["payload"][k] for k in ic.MINER_SIGNED}
        self.assertEqual(fields["client_payment_tx"], c["payment"]["tx_hash"])
        self.assertEqual(ic.miner_signed_map(fields, cid), c["miner_signed"])
        self.assertEqual(ic.cbor(c["miner_signed"]).hex(), c["miner_signed_cbor"])
        self.assertEqual(ic.miner_sign_bytes(fields, cid).hex(), c["miner_sign_bytes"])
        payload = ic.sign_receipt(seeds["miner"], cid, **fields)
        self.assertEqual(payload["miner_sig"], c["miner_sig"])
        self.assertEqual(payload, wire["payload"])
        self.assertTrue(ic.miner_sig_ok(payload, cid))
        self.assertFalse(ic.miner_sig_ok(payload, "another-chain"))
        self.assertFalse(ic.miner_sig_ok(dict(payload, price=payload["price"] + 1), cid))
        claim = ic.sign_tx(seeds["miner"], cid, ic.CLAIM, 1, ic.min_fee(params, payload, ic.CLAIM), payload)
        self.assertEqual(claim, wire)
        self.assertEqual(ic.tx_hash(claim, cid), c["claim"]["tx_hash"])

        # The coordinator attests.
        request = ic.attestation_request(payload)
        self.assertEqual(request, c["attestation_request"])
        att = ic.sign_attestation(seeds["coordinator"], cid, request)
        self.assertEqual(att, c["attestation"])
        self.assertEqual(ic.attestation_signed_map(att, cid), c["attestation_signed"])
        self.assertEqual(ic.cbor(c["attestation_signed"]).hex(), c["attestation_signed_cbor"])
        self.assertEqual(ic.attestation_sign_bytes(att, cid).hex(), c["attestation_sign_bytes"])
        self.assertIsNone(ic.attestation_problem(att, payload, params["coordinator"], cid))
        self.assertEqual(ic.attestation_problem(att, payload, params["coordinator"], "x"), "attestation_bad_signature")
        other = dict(request, price=True) if payload["price"] == 1 else dict(request, price=payload["price"] - 1)
        self.assertEqual(ic.attestation_problem(ic.sign_attestation(seeds["coordinator"], cid, other), payload,
                                                params["coordinator"], cid), "attestation_mismatch")
        self.assertEqual(ic.attestation_problem(ic.sign_attestation(seeds["coordinator"], cid, request, exists=False),
                                                payload, params["coordinator"], cid), "job_not_found")
        # An answer for another payment, or for none, does not settle this claim.
        for answer in (dict(request, client_payment_tx="cd" * 32),
                       {k: v for k, v in request.items() if k != "client_payment_tx"}):
            self.assertEqual(ic.attestation_problem(ic.sign_attestation(seeds["coordinator"], cid, answer), payload,
                                                    params["coordinator"], cid), "attestation_wrong_payment")

        # The claim's leaf and the blocks, followed from genesis.
        h = c["claim"]["tx_hash"]
        self.assertEqual(ic.leaf_input(h, att), c["leaf_input"])
        self.assertEqual(ic.merkle_root([c["leaf_input"]]), c["leaf"])
        self.assertEqual(ic.block_tx_root([h], {h: att}), c["block2"]["header"]["tx_root"])
        _, _, proposer = ic.keypair(authority_seed)
        state = ic.State(ic.genesis_entries(doc), cid)
        follower = ic.Follower(doc)
        parent = c["genesis_hash"]
        for height, name, wires, atts in ((1, "block1", [payment], {}), (2, "block2", [claim], {h: att})):
            state.apply_block(wires, proposer, height, atts)
            b = c[name]
            header = {
                "chain_id": cid, "parent": parent, "height": height, "timestamp": b["header"]["timestamp"],
                "proposer": proposer, "tx_root": ic.block_tx_root([ic.tx_hash(w, cid) for w in wires], atts),
                "state_root": state.root(), "votes_root": ic.ZERO_HASH, "evidence_root": ic.ZERO_HASH,
                "authorities_hash": ic.hash_hex(ic.genesis_set(doc)),
            }
            self.assertEqual(header, b["header"])
            follower.follow(dict(b, txs=[ic.tx_hash(w, cid) for w in wires]), wires)
            self.assertEqual(follower.state.root(), b["header"]["state_root"])
            self.assertEqual(ic.block_hash(header), b["hash"])
            self.assertEqual(ic.sign(authority_seed, bytes.fromhex(b["hash"])).hex(), b["sig"])
            parent = b["hash"]
            if height == 1:
                pe = c["pay_entry"]
                self.assertEqual(state.entries[(pe[0], pe[1])], pe[2])
        self.assertEqual(c["block2"]["attestations"], {h: att})
        self.assertEqual(ic.block_size([claim], cid, {h: att}), c["block2_bytes"])
        key = lambda e: (e[0], e[1])  # noqa: E731
        self.assertEqual(sorted(state.as_entries(), key=key), sorted(c["entries_after"], key=key))

        # Settlement, by the document's formulas.
        st = c["settlement"]
        mint, coordinator_cut, treasury_cut = ic.settlement(params, payload)
        self.assertEqual((mint, coordinator_cut, treasury_cut), (st["mint"], st["coordinator_cut"], st["treasury_cut"]))
        self.assertEqual(st["miner_net"], payload["price"] + mint - claim["fee"])
        receipt = c["receipt"]
        self.assertEqual(receipt, {
            "receipt_id": payload["receipt_id"], "minted": mint, "miner_paid": payload["price"] + mint,
            "coordinator_cut": coordinator_cut, "treasury_cut": treasury_cut,
            "changes": ic.claim_changes(params, payload, claim["sender"], claim["fee"]), "fee": claim["fee"],
        })
        supply = state.supply()
        balances = sum(v[0] for (ns, _), v in state.entries.items() if ns == "acct")
        self.assertEqual(sum(supply.values()), balances)
        self.assertEqual(balances, st["supply_total_after"])

        # A state that follows the chain refuses the claim a second time.
        for wires in ([claim], [dict(claim, nonce=2)]):
            with self.assertRaises(ValueError):
                state.apply_block(wires, proposer, 3, {h: att})

    def test_authority_set(self):
        """The client follows the vector's five blocks (an authority added,
        turns, votes that justify and finalize, evidence that jails) from
        the genesis file alone, and refuses them altered."""
        av = self.v["authority_set"]
        cid, doc = av["chain_id"], av["genesis_json"]
        a_seed = bytes.fromhex(self.v["keys"]["authority"]["private_key"])
        b_seed = self.seeded(av["authority_b"])
        _, a_pk, a = ic.keypair(a_seed)
        _, b_pk, b = ic.keypair(b_seed)
        self.assertEqual(ic.block_hash(ic.genesis_header(doc)), av["genesis_hash"])
        change = {"action": "add", "address": b, "public_key": b_pk.hex()}
        self.assertEqual(av["change"], change)
        self.assertEqual(ic.cbor(change).hex(), av["change_cbor"])
        self.assertEqual(ic.change_id(change), av["change_id"])
        update = ic.sign_tx(a_seed, cid, "AUTHORITY_UPDATE", 1, 0, change, include_chain_id=True)
        self.assertEqual(ic.tx_hash(update), av["update_tx_hash"])
        self.assertEqual(ic.min_fee(ic.genesis_params(doc), change, "AUTHORITY_UPDATE"), 0)
        key = lambda e: (e[0], e[1])  # noqa: E731

        follower = ic.Follower(doc)
        hashes = [follower.hash]
        for height, entry in enumerate(av["blocks"], 1):
            follower.follow(entry["block"], entry["txs"])
            hashes.append(follower.hash)
            if height == 1:
                self.assertEqual(entry["txs"], [update])
                self.assertEqual(follower.state.results[av["update_tx_hash"]], av["update_receipt"])
                self.assertEqual(sorted(follower.state.as_entries(), key=key), sorted(av["entries_after_1"], key=key))
        self.assertEqual(sorted(follower.state.as_entries(), key=key), sorted(av["entries_after"], key=key))
        self.assertEqual(follower.finality(), {"justified": {"height": 3, "hash": hashes[3]},
                                               "finalized": {"height": 2, "hash": hashes[2]}})
        # The turns as section 10.5 says: b is in turn at height 3, a its backup.
        members = av["blocks"][2]["block"]["authorities"]
        self.assertEqual((ic.rank(members, b, 3), ic.rank(members, a, 3)), (0, 1))
        self.assertEqual([m["jailed"] for m in av["blocks"][4]["block"]["authorities"]], [False, True])
        # Each vote and the evidence check on their own.
        for entry in av["blocks"]:
            for v in entry["block"]["votes"]:
                self.assertTrue(ic.vote_ok(v, (a_pk if v["voter"] == a else b_pk).hex(), cid))
        ev = av["blocks"][3]["block"]["evidence"][0]
        keys = {a: a_pk.hex(), b: b_pk.hex()}
        self.assertEqual(ic.evidence_offence(ev, cid, keys.get), (b, "double_vote"))
        self.assertEqual(ic.hash_hex(ev), next(k for (ns, k) in {(e[0], e[1]) for e in av["entries_after"]} if ns == "evid"))

        # Altered, they are refused.
        def refused(height, reason, **changes):
            f = ic.Follower(doc)
            for entry in av["blocks"][:height - 1]:
                f.follow(entry["block"], entry["txs"])
            e = av["blocks"][height - 1]
            record = dict(e["block"], **changes)
            if "header" in changes:
                record["hash"] = ic.block_hash(record["header"])
                record["sig"] = ic.sign(a_seed, bytes.fromhex(record["hash"])).hex()
            with self.assertRaisesRegex(ValueError, reason):
                f.follow({k: v for k, v in record.items() if v is not None}, e["txs"])

        third = av["blocks"][2]["block"]
        refused(3, "turn", header=dict(third["header"], timestamp=third["header"]["timestamp"] - 1))
        refused(3, "authority set", authorities=None)
        refused(2, "carries an authority set", authorities=ic.genesis_set(doc))
        refused(4, "votes_root", votes=third["votes"])
        refused(5, "authorities_hash", header=dict(av["blocks"][4]["block"]["header"],
                                                   authorities_hash=third["header"]["authorities_hash"]))

    def test_peer_auth(self):
        pv = self.v["peer_auth"]
        cid = pv["chain_id"]
        a, b = self.seeded(pv["node_a"]), self.seeded(pv["node_b"])
        a_id, b_id = ic.keypair(a)[1].hex(), ic.keypair(b)[1].hex()
        hello = {"chain_id": cid, "genesis": self.v["genesis"]["hash"], "version": 1, "node_id": a_id,
                 "challenge": pv["challenge_a"], "height": 0, "head": self.v["genesis"]["hash"]}
        self.assertEqual(hello, pv["hello_a"])
        self.assertEqual(ic.frame("hello", hello).hex(), pv["hello_a_frame"])
        self.assertEqual(ic.cbor({"chain_id": cid, "challenge": pv["challenge_a"], "node_id": b_id}).hex(), pv["auth_b_signed_cbor"])
        self.assertEqual(ic.auth_bytes(cid, pv["challenge_a"], b_id).hex(), pv["auth_b_bytes"])
        self.assertEqual(ic.sign(b, ic.auth_bytes(cid, pv["challenge_a"], b_id)).hex(), pv["auth_b_sig"])
        self.assertEqual(ic.frame("auth", {"sig": pv["auth_b_sig"]}).hex(), pv["auth_b_frame"])
        self.assertEqual(ic.auth_bytes(cid, pv["challenge_b"], a_id).hex(), pv["auth_a_bytes"])
        self.assertEqual(ic.sign(a, ic.auth_bytes(cid, pv["challenge_b"], a_id)).hex(), pv["auth_a_sig"])
        nacl.signing.VerifyKey(bytes.fromhex(b_id)).verify(bytes.fromhex(pv["auth_b_bytes"]), bytes.fromhex(pv["auth_b_sig"]))
        self.assertEqual(ic.locator_heights(pv["locator"]["head_height"]), pv["locator"]["heights"])


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
        self.node.admission.submit_own("MINT", {"to": self.addr, "amount": funding})
        self.node.pipeline.propose()
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

        block = self.node.pipeline.propose()
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
        self.node.admission.submit_own("MINT", {"to": self.addr, "amount": 5000})
        self.node.pipeline.propose()
        params = self.ok("GET", "/rpc/getParams")
        for nonce, amount in ((1, 10), (2, 20), (3, 30)):
            payload = {"to": BOB.address, "amount": amount}
            wire = ic.sign_transfer(self.SEED, CHAIN_ID, nonce, ic.min_fee(params, payload) + nonce, BOB.address, amount)
            self.ok("POST", "/rpc/sendTx", wire)
        self.node.pipeline.propose()
        self.node.pipeline.propose()  # an empty block

        genesis = self.ok("GET", "/rpc/getBlock/0")
        self.assertEqual({k: genesis[k] for k in ic.HEADER_FIELDS}, ic.genesis_header(self.doc))
        self.assertEqual(genesis["hash"], ic.block_hash(ic.genesis_header(self.doc)))
        self.assertEqual((genesis["votes"], genesis["evidence"]), ([], []))
        authorities = {a["address"]: bytes.fromhex(a["public_key"]) for a in self.doc["authorities"]}
        follower = ic.Follower(self.doc)
        parent = genesis["hash"]
        head = self.ok("GET", "/rpc/getHead")
        self.assertEqual(head["height"], 3)
        for height in range(1, head["height"] + 1):
            blk = self.ok("GET", f"/rpc/getBlock/{height}?full=true")
            header = {k: blk[k] for k in ic.HEADER_FIELDS}
            self.assertEqual(header["parent"], parent)
            self.assertEqual(ic.block_hash(header), blk["hash"])
            pk = authorities[header["proposer"]]
            nacl.signing.VerifyKey(pk).verify(bytes.fromhex(blk["hash"]), bytes.fromhex(blk["sig"]))
            hashes = [ic.tx_hash(w) for w in blk["txs"]]
            self.assertEqual(ic.merkle_root(hashes), header["tx_root"])
            self.assertEqual(blk["attestations"], {})
            self.assertTrue(all(ic.verify_tx(w, CHAIN_ID) for w in blk["txs"]))
            # One authority: its vote for each block rides in the next one
            # (none in block 1), no evidence, and the set only on block 1 (the
            # first of its epoch).
            self.assertEqual(len(blk["votes"]), 0 if height == 1 else 1)
            self.assertEqual((header["votes_root"], header["evidence_root"]), (ic.votes_root(blk["votes"]), ic.ZERO_HASH))
            self.assertEqual(header["authorities_hash"], ic.hash_hex(ic.genesis_set(self.doc)))
            self.assertEqual(blk.get("authorities"), ic.genesis_set(self.doc) if height == 1 else None)
            follower.follow(*ic.rpc_block(blk))  # every rule, the state root included
            self.assertEqual(follower.state.root(), header["state_root"], f"state root of block {height}")
            parent = blk["hash"]
        self.assertEqual(head["hash"], parent)
        self.assertEqual(follower.hash, parent)
        spent = sum(a + ic.min_fee(params, {"to": BOB.address, "amount": a}) + n for n, a in ((1, 10), (2, 20), (3, 30)))
        self.assertEqual(follower.state.account(self.addr), (5000 - spent, 3))
        self.assertEqual(follower.finality()["justified"]["height"], 2)  # block 3 justified block 2
        self.assertEqual(self.ok("GET", f"/rpc/getBalance/{self.addr}"), {"balance": 5000 - spent, "nonce": 3})


class Ballot:
    """Stands in for the node's vote pool (pipeline.ballot): the votes for
    the head of each key it holds that the head's own authority set counts
    (signed by the independent client), and the evidence handed to it,
    once."""

    def __init__(self, seeds, local):
        self.seeds = seeds
        self.local = local
        self.evidence = []

    def proposed(self, block):
        """What the node signed, recorded as the real Ballot does (without its vote)."""
        self.local.put_signed("proposal", block["header"]["height"])

    def block_fields(self, chain):
        height, head = chain.head()
        evidence, self.evidence = self.evidence, []
        if height == 0:
            return [], evidence
        view = chain.view()
        try:
            counted = consensus.parent_set_of(view, height + 1).active
            source = chain.finality(view).justified
        finally:
            view.release()
        votes = [ic.sign_vote(s, CHAIN_ID, height, head, source.height, source.hash) for s in self.seeds
                 if ic.keypair(s)[2] in counted]
        return sorted(votes, key=lambda v: v["voter"]), evidence


class ConsensusEndToEndTests(SynchronousTestCase):
    """(b') A node whose blocks carry votes, an authority added by
    AUTHORITY_UPDATE, evidence that jails it and an unjail: the client
    follows every block from genesis.json through getBlock and agrees on
    every hash, turn, authority set, vote and state root."""

    B_SEED = hashlib.sha256(b"aitnode independent client: authority b").digest()

    def setUp(self):
        self.doc = genesis_doc(epoch_length=3)
        self.node = make_node(self, doc=self.doc)
        self.rpc, self.http = make_rpc(self.node)
        self.ballot = self.node.pipeline.ballot = Ballot([AUTHORITY.seed, self.B_SEED], self.node.local)

    def ok(self, path):
        resp = self.successResultOf(self.http.request("GET", BASE + path))
        self.assertEqual(resp.code, 200)
        return json.loads(self.successResultOf(self.http.content(resp)))

    def propose(self, height):
        block = self.node.pipeline.propose()
        self.assertEqual(block["header"]["height"], height)
        return block

    def test_votes_updates_and_jailing_followed(self):
        _, b_pk, b = ic.keypair(self.B_SEED)
        change = {"action": "add", "address": b, "public_key": b_pk.hex()}
        self.node.admission.submit_own("AUTHORITY_UPDATE", change)
        blocks = {h: self.propose(h) for h in (1, 2, 3)}  # 3 ends the first epoch: b joins
        self.assertEqual([len(blocks[h]["votes"]) for h in (1, 2, 3)], [0, 1, 1])
        self.assertEqual(self.node.chain.authority_set().active, [AUTHORITY.address, b])
        blocks[4] = self.propose(4)  # carries the new set; the votes for 3 count against 3's set (a alone)
        self.assertEqual([v["voter"] for v in blocks[4]["votes"]], [AUTHORITY.address])
        g = self.ok("/rpc/getBlock/0")["hash"]
        self.ballot.evidence = [ic.vote_evidence(
            ic.sign_vote(self.B_SEED, CHAIN_ID, 2, ic.hash_hex("one"), 0, g),
            ic.sign_vote(self.B_SEED, CHAIN_ID, 2, ic.hash_hex("another"), 0, g))]
        blocks[5] = self.propose(5)  # b is in turn at 5; a backs it up; b's double vote jails it
        self.assertEqual((len(blocks[5]["votes"]), len(blocks[5]["evidence"])), (2, 1))
        self.assertEqual(self.node.chain.authority_set().active, [AUTHORITY.address])
        for h in (6, 7):
            blocks[h] = self.propose(h)
        self.assertEqual([v["voter"] for v in blocks[7]["votes"]], [AUTHORITY.address])  # b's vote no longer counts
        self.node.admission.submit_own("AUTHORITY_UPDATE", dict(change, action="unjail"))
        for h in (8, 9, 10):
            blocks[h] = self.propose(h)
        self.assertEqual(self.node.chain.authority_set().active, [AUTHORITY.address, b])
        self.assertEqual([("authorities" in blocks[h]) for h in range(1, 11)],
                         [True, False, False, True, False, True, True, False, False, True])
        node_finality = self.node.chain.finality()
        self.assertEqual((node_finality.justified.height, node_finality.finalized.height), (9, 8))

        # The client, from the genesis file and getBlock alone.
        follower = ic.Follower(self.doc)
        ranks = []
        for h in range(1, 11):
            ranks.append(ic.rank(follower.state.members(), AUTHORITY.address, h))  # the set in effect for h
            follower.follow(*ic.rpc_block(self.ok(f"/rpc/getBlock/{h}?full=true")))
            self.assertEqual(follower.hash, blocks[h]["hash"])
        # With b in the set (blocks 4, 5 and 10), a is in turn at even heights
        # (index 0 = h mod 2), so it backed b up at 5; b was jailed for 6 to 9.
        self.assertEqual(ranks, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
        self.assertEqual(follower.finality(), {"justified": node_finality.justified.to_json(),
                                               "finalized": node_finality.finalized.to_json()})
        self.assertEqual(follower.state.members(), [
            {"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex(), "jailed": False},
            {"address": b, "public_key": b_pk.hex(), "jailed": False}])
        self.assertEqual([(k, v["offender"], v["offence"]) for (ns, k), v in follower.state.entries.items() if ns == "evid"],
                         [(ic.hash_hex(blocks[5]["evidence"][0]), b, "double_vote")])
        self.assertNotIn(("chain", "pending_updates"), follower.state.entries)


# --------------------------------------------------------------------------
# (c) Compute receipts end to end: the client's own coordinator on loopback,
# a real node in process asking it through aitnode.attest.Attestor.


def _seed(label):
    return hashlib.sha256(label.encode()).digest()


class ReceiptEndToEndTests(TestCase):
    """The independent client pays escrow, its miner claims, its own
    coordinator (tests/independent_client.py, served on loopback) attests,
    and every balance moves exactly as the document's formulas say; every
    refused case is refused with its documented code; blocks keep coming."""

    CLIENT = _seed("independent client: client")
    MINER = _seed("independent client: miner")
    COORDINATOR = _seed("independent client: coordinator")
    STRANGER = _seed("independent client: stranger")
    TREASURY = ic.keypair(_seed("independent client: treasury"))[2]
    ESCROW = ic.keypair(_seed("independent client: escrow"))[2]
    JOBS = [f"job_{i}" for i in range(1, 40)] + ["job_unpaid"]

    def setUp(self):
        self.client = ic.keypair(self.CLIENT)[2]
        self.miner = ic.keypair(self.MINER)[2]
        self.coordinator = ic.Coordinator(self.COORDINATOR, CHAIN_ID, jobs=self.JOBS, unpaid=["job_unpaid"])
        self.port = reactor.listenTCP(0, server.Site(self.coordinator), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.addCleanup(self.stop_coordinator)
        self.doc = genesis_doc(
            accounts=[(self.client, 10**9), (BOB.address, 10**6)],
            coordinator=self.coordinator.params_entry(), escrow=self.ESCROW, treasury=self.TREASURY,
            treasury_ratio_bps=300, mint_per_unit=1003,
        )
        self.node = make_node(self, doc=self.doc)
        self.node.admission.attestor = self.attestor(self.url)
        self.rpc, self.http = make_rpc(self.node)
        self.client_nonce = 0
        self.jobs = iter(self.JOBS[:-1])

    def attestor(self, url, allow=("127.0.0.1",), **kw):
        a = Attestor(reactor, url, list(allow), **kw)
        self.addCleanup(a.close)
        return a

    async def stop_coordinator(self):
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        self.coordinator.drop_connections()
        self.coordinator.hanging.clear()
        await deferLater(reactor, 0.01, lambda: None)

    # -- talking to the node (StubTreq, pumped while the reactor runs) --------
    async def pumped(self, d):
        """d's result, flushing StubTreq's in-memory connection until it comes
        (the node answers a claim only after the coordinator answered it)."""
        done = []
        d.addBoth(lambda r: done.append(r) or r)
        while not done:
            self.http.flush()
            if not done:
                await deferLater(reactor, 0.002, lambda: None)
        return await d

    async def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        d = self.http.request(method, BASE + path, data=data, headers={b"content-type": [b"application/json"]})
        resp = await self.pumped(d)
        raw = await self.pumped(self.http.content(resp))
        return resp.code, json.loads(raw)

    async def ok(self, method, path, body=None):
        status, out = await self.call(method, path, body)
        self.assertEqual(status, 200, out)
        return out

    async def balance(self, addr):
        return (await self.ok("GET", f"/rpc/getBalance/{addr}"))["balance"]

    async def balances(self):
        addrs = [self.client, self.miner, self.ESCROW, self.coordinator.address, self.TREASURY,
                 AUTHORITY.address, BOB.address, ic.keypair(self.STRANGER)[2]]
        return {a: await self.balance(a) for a in addrs}

    # -- the client's side ------------------------------------------------------
    async def pay(self, amount):
        """A TRANSFER from the client to escrow, included; its txHash."""
        params = await self.ok("GET", "/rpc/getParams")
        self.client_nonce += 1
        payload = {"to": self.ESCROW, "amount": amount}
        wire = ic.sign_transfer(self.CLIENT, CHAIN_ID, self.client_nonce, ic.min_fee(params, payload), self.ESCROW, amount)
        h = ic.tx_hash(wire, CHAIN_ID)
        self.assertEqual(await self.ok("POST", "/rpc/sendTx", wire), {"txHash": h})
        block = self.node.pipeline.propose()
        self.assertIn(h, block["txs"])
        return h

    async def claim(self, payment, receipt_id, price=5000, units=13, job=None, miner=None, sender=None,
                    nonce=None, fee=None, tamper=None, **fields):
        """A RECEIPT_CLAIM signed by the miner (and by sender, the miner by default)."""
        params = await self.ok("GET", "/rpc/getParams")
        f = dict(receipt_id=receipt_id, job_id=job or next(self.jobs), client_addr=self.client, miner_addr=self.miner,
                 compute_units=units, price=price, output_hash=hashlib.sha256(receipt_id.encode()).hexdigest(),
                 client_payment_tx=payment)
        f.update(fields)
        payload = ic.sign_receipt(miner or self.MINER, CHAIN_ID, **f)
        if tamper:
            payload.update(tamper)
        sender = sender or self.MINER
        if nonce is None:
            nonce = (await self.ok("GET", f"/rpc/getBalance/{ic.keypair(sender)[2]}"))["nonce"] + 1
        if fee is None:
            fee = ic.min_fee(params, payload, ic.CLAIM)
        return ic.sign_tx(sender, CHAIN_ID, ic.CLAIM, nonce, fee, payload)

    async def submit(self, wire):
        return await self.call("POST", "/rpc/submitReceipt", wire)

    async def refused(self, wire, code, status=400):
        got, out = await self.submit(wire)
        self.assertEqual((got, out.get("error", {}).get("code")), (status, code), out)
        h = ic.tx_hash(wire, CHAIN_ID)
        self.assertEqual((await self.call("GET", f"/rpc/getTx/{h}"))[0], 404)
        await self.blocks_keep_coming()
        return out

    async def blocks_keep_coming(self):
        """A transfer sent now is in the next block."""
        params = await self.ok("GET", "/rpc/getParams")
        height = (await self.ok("GET", "/rpc/getHead"))["height"]
        self.client_nonce += 1
        payload = {"to": BOB.address, "amount": 1}
        wire = ic.sign_transfer(self.CLIENT, CHAIN_ID, self.client_nonce, ic.min_fee(params, payload), BOB.address, 1)
        await self.ok("POST", "/rpc/sendTx", wire)
        block = self.node.pipeline.propose()
        self.assertEqual(block["header"]["height"], height + 1)
        self.assertEqual(block["txs"], [ic.tx_hash(wire, CHAIN_ID)])
        return block["txs"][0]

    async def follow_chain(self):
        """Recompute every block from genesis: tx_root with the claims' leaves,
        attestations, state roots; return the client's state."""
        follower = ic.Follower(self.doc)
        head = await self.ok("GET", "/rpc/getHead")
        parent = (await self.ok("GET", "/rpc/getBlock/0"))["hash"]
        for height in range(1, head["height"] + 1):
            blk = await self.ok("GET", f"/rpc/getBlock/{height}?full=true")
            self.assertEqual(blk["parent"], parent)
            hashes = [ic.tx_hash(w) for w in blk["txs"]]
            self.assertEqual(ic.block_tx_root(hashes, blk["attestations"]), blk["tx_root"])
            self.assertEqual(set(blk["attestations"]), {ic.tx_hash(w) for w in blk["txs"] if w["type"] == ic.CLAIM})
            follower.follow(*ic.rpc_block(blk))
            self.assertEqual(follower.state.root(), blk["state_root"], f"state root of block {height}")
            parent = blk["hash"]
        return follower.state

    # -- the tests ----------------------------------------------------------------
    async def test_miner_paid_and_minted_exactly_once(self):
        params = await self.ok("GET", "/rpc/getParams")
        payment = await self.pay(7000)
        before = await self.balances()
        supply_before = await self.ok("GET", "/rpc/getSupply")
        self.assertEqual(before[self.miner], 0)  # the fee comes out of the claim's payout

        wire = await self.claim(payment, "receipt-1", price=5000, units=13, job="job_1")
        h = ic.tx_hash(wire, CHAIN_ID)
        self.assertEqual(await self.ok("POST", "/rpc/submitReceipt", wire), {"txHash": h})
        self.assertEqual(self.coordinator.requests, [ic.attestation_request(wire["payload"])])
        pending = await self.ok("GET", f"/rpc/getTx/{h}")
        self.assertEqual(pending["status"], "pending")
        att = pending["attestation"]
        self.assertIsNone(ic.attestation_problem(att, wire["payload"], self.coordinator.params_entry(), CHAIN_ID))

        block = self.node.pipeline.propose()
        self.assertEqual(block["txs"], [h])
        self.assertEqual(block["attestations"], {h: att})

        # Balances, exactly as the document's formulas say.
        payload, fee = wire["payload"], wire["fee"]
        mint, coordinator_cut, treasury_cut = ic.settlement(params, payload)
        self.assertEqual(mint, 13 * 1003)
        self.assertEqual(coordinator_cut, 13 * 1003 * 500 // 10000)
        self.assertEqual(treasury_cut, 13 * 1003 * 300 // 10000)
        expected = dict(before)
        for addr, delta in ic.claim_deltas(params, payload, self.miner, fee).items():
            expected[addr] += delta
        expected[AUTHORITY.address] += fee  # the proposer's fee credit
        after = await self.balances()
        self.assertEqual(after, expected)
        self.assertEqual(after[self.miner], 5000 + mint - fee)
        self.assertEqual(after[self.ESCROW], 7000 - 5000)
        self.assertEqual(after[self.coordinator.address], coordinator_cut)
        self.assertEqual(after[self.TREASURY], treasury_cut)

        got = await self.ok("GET", f"/rpc/getTx/{h}")
        self.assertEqual(got["status"], "included")
        self.assertEqual(got["attestation"], att)
        self.assertEqual(got["receipt"], {
            "receipt_id": "receipt-1", "minted": mint, "miner_paid": 5000 + mint, "coordinator_cut": coordinator_cut,
            "treasury_cut": treasury_cut, "changes": ic.claim_changes(params, payload, self.miner, fee), "fee": fee,
        })

        # Supply: its parts, their total, and the sum of all balances.
        supply = await self.ok("GET", "/rpc/getSupply")
        self.assertEqual(supply, dict(supply_before, receipts=mint, coordinator=coordinator_cut, treasury=treasury_cut,
                                      total=supply_before["total"] + mint + coordinator_cut + treasury_cut))
        self.assertEqual(supply["total"], sum(v for k, v in supply.items() if k != "total"))
        self.assertEqual(supply["total"], sum(after.values()))

        # The client follows the chain and agrees on every root and on the receipt.
        state = await self.follow_chain()
        receipt = await self.ok("GET", "/rpc/getReceipt/receipt-1")
        self.assertEqual(receipt["paid"], state.entries[("rcpt", "receipt-1")])
        self.assertEqual(receipt["claim"], dict(wire, chain_id=CHAIN_ID))
        self.assertEqual(receipt["attestation"], att)
        self.assertEqual(receipt["block"], {"height": block["header"]["height"], "hash": block["hash"]})
        self.assertEqual(state.entries[("pay", payment)], {"client": self.client, "amount": 7000, "claimed": "receipt-1"})
        self.assertEqual(sum(v[0] for (ns, _), v in state.entries.items() if ns == "acct"), supply["total"])

        # Nothing pays twice: the same claim again, re-encoded, re-signed with
        # another nonce or fee, sent by the coordinator, or a new receipt on
        # the same payment.
        self.assertEqual(await self.ok("POST", "/rpc/submitReceipt", wire), {"txHash": h})
        reordered = {k: wire[k] for k in reversed(list(wire))}
        self.assertEqual(await self.ok("POST", "/rpc/submitReceipt", reordered), {"txHash": h})
        self.assertEqual(len(self.coordinator.requests), 1)
        resigned = ic.sign_tx(self.MINER, CHAIN_ID, ic.CLAIM, wire["nonce"] + 1, fee, payload)
        await self.refused(resigned, "receipt_already_claimed", 409)
        await self.refused(ic.sign_tx(self.MINER, CHAIN_ID, ic.CLAIM, wire["nonce"] + 1, fee + 1, payload),
                           "receipt_already_claimed", 409)
        coordinator_sent = ic.sign_tx(self.COORDINATOR, CHAIN_ID, ic.CLAIM, 1, fee, payload)
        await self.refused(coordinator_sent, "receipt_already_claimed", 409)
        await self.refused(await self.claim(payment, "receipt-2", job="job_2"), "payment_already_used", 409)
        self.node.pipeline.propose()
        final = await self.balances()
        self.assertEqual(final[self.miner], after[self.miner])
        self.assertEqual(final[self.ESCROW], after[self.ESCROW])
        self.assertEqual(final[self.coordinator.address], after[self.coordinator.address])
        self.assertEqual(final[self.TREASURY], after[self.TREASURY])
        self.assertEqual(await self.ok("GET", "/rpc/getSupply"), supply)
        state = await self.follow_chain()
        self.assertEqual([k for (ns, k) in state.entries if ns == "rcpt"], ["receipt-1"])

    async def test_coordinator_may_send_the_claim(self):
        params = await self.ok("GET", "/rpc/getParams")
        payment = await self.pay(5000)
        wire = await self.claim(payment, "receipt-c", job="job_3", sender=self.COORDINATOR)
        before = await self.balances()
        # The coordinator has no balance yet: its fee comes out of its cut.
        self.assertEqual(before[self.coordinator.address], 0)
        mint, cut, _ = ic.settlement(params, wire["payload"])
        self.assertGreaterEqual(cut, wire["fee"])
        await self.ok("POST", "/rpc/submitReceipt", wire)
        self.node.pipeline.propose()
        after = await self.balances()
        self.assertEqual(after[self.miner], 5000 + mint)
        self.assertEqual(after[self.coordinator.address], cut - wire["fee"])
        await self.follow_chain()

    async def test_every_refusal_has_its_code(self):
        params = await self.ok("GET", "/rpc/getParams")
        p1 = await self.pay(5000)
        p2 = await self.pay(5000)
        before = await self.balances()
        supply = await self.ok("GET", "/rpc/getSupply")
        coordinator = self.coordinator

        # Rules that need no coordinator: it is never asked.
        await self.refused(await self.claim(p1, "r-zero", units=0), "zero_compute_units")
        await self.refused(await self.claim(p1, "r-fee", fee=params["base_fee"]), "fee_too_low")
        await self.refused(await self.claim(p1, "r-sender", sender=self.STRANGER), "claim_sender_not_allowed")
        other_pk = ic.keypair(self.STRANGER)[1].hex()
        await self.refused(await self.claim(p1, "r-pk", tamper={"miner_pubkey": other_pk}), "miner_pubkey_mismatch")
        await self.refused(await self.claim(p1, "r-sig", tamper={"price": 4999}), "bad_miner_signature")
        await self.refused(await self.claim(p1, "r-sig2", miner=self.STRANGER,
                                            tamper={"miner_pubkey": ic.keypair(self.MINER)[1].hex()}),
                           "bad_miner_signature")
        await self.refused(await self.claim("ab" * 32, "r-unknown"), "payment_not_found")
        not_to_escrow = await self.blocks_keep_coming()  # an included transfer to someone else
        await self.refused(await self.claim(not_to_escrow, "r-not-escrow"), "payment_not_found")
        await self.refused(await self.claim(p1, "r-client", client_addr=BOB.address), "payment_wrong_client")
        await self.refused(await self.claim(p1, "r-small", price=5001), "payment_too_small")
        self.assertEqual(coordinator.requests, [])

        # The coordinator's answers.
        await self.refused(await self.claim(p1, "r-nojob", job="job_missing"), "job_not_found")
        await self.refused(await self.claim(p1, "r-unpaid", job="job_unpaid"), "job_not_paid")
        coordinator.attested["job_20"] = "a receipt of another miner"
        await self.refused(await self.claim(p1, "r-double", job="job_20"), "job_double_spent")
        coordinator.mode = "wrong_key"
        await self.refused(await self.claim(p1, "r-key"), "attestation_bad_signature")
        coordinator.mode = "wrong_address"
        await self.refused(await self.claim(p1, "r-addr"), "attestation_wrong_coordinator")
        coordinator.mode = "no_payment"
        await self.refused(await self.claim(p1, "r-nopay"), "attestation_wrong_payment")
        coordinator.mode = "ok"
        coordinator.paid_by["job_21"] = p2  # the client paid job_21 with p2; the miner names p1
        await self.refused(await self.claim(p1, "r-otherpay", job="job_21"), "attestation_wrong_payment")
        coordinator.mode = "http_error"
        await self.refused(await self.claim(p1, "r-503"), "coordinator_error", 424)
        coordinator.mode = "garbage"
        await self.refused(await self.claim(p1, "r-garbage"), "coordinator_bad_answer", 424)
        coordinator.mode = "ok"

        # The node's side of the call: allow list, in-flight bound, timeout.
        good = self.node.admission.attestor
        asked = len(coordinator.requests)
        self.node.admission.attestor = self.attestor(self.url.replace("127.0.0.1", "localhost"))
        await self.refused(await self.claim(p1, "r-allow"), "coordinator_not_allowed", 424)
        self.assertEqual(len(coordinator.requests), asked)
        self.node.admission.attestor = self.attestor(self.url, timeout=0.3, max_in_flight=1)
        coordinator.mode = "hang"
        slow = await self.claim(p1, "r-slow")
        first = self.http.post(BASE + "/rpc/submitReceipt", data=json.dumps(slow).encode())
        while not coordinator.hanging:
            self.http.flush()
            await deferLater(reactor, 0.002, lambda: None)
        busy = await self.claim(p2, "r-busy")
        await self.refused(busy, "coordinator_busy", 429)
        resp = await self.pumped(first)
        body = json.loads(await self.pumped(self.http.content(resp)))
        self.assertEqual((resp.code, body["error"]["code"]), (424, "coordinator_timeout"))
        self.assertEqual((await self.call("GET", f"/rpc/getTx/{ic.tx_hash(slow, CHAIN_ID)}"))[0], 404)
        coordinator.mode = "ok"
        self.node.admission.attestor = good
        await self.blocks_keep_coming()

        # Nobody was paid, nothing was minted.
        now = await self.balances()
        for addr in (self.miner, self.ESCROW, self.coordinator.address, self.TREASURY):
            self.assertEqual(now[addr], before[addr])
        self.assertEqual((await self.ok("GET", "/rpc/getSupply"))["receipts"], supply["receipts"])

        # A good claim still settles; then its payment and receipt id are spent.
        ok = await self.claim(p1, "r-good")
        await self.ok("POST", "/rpc/submitReceipt", ok)
        self.node.pipeline.propose()
        mint, _, _ = ic.settlement(params, ok["payload"])
        self.assertEqual(await self.balance(self.miner), 5000 + mint - ok["fee"])
        await self.refused(await self.claim(p1, "r-reuse"), "payment_already_used", 409)
        await self.refused(await self.claim(p2, "r-good"), "receipt_already_claimed", 409)

        # The coordinator goes down.
        await self.stop_coordinator()
        await self.refused(await self.claim(p2, "r-down"), "coordinator_unavailable", 424)
        state = await self.follow_chain()
        self.assertEqual([k for (ns, k) in state.entries if ns == "rcpt"], ["r-good"])
        self.assertEqual(state.entries[("pay", p2)]["claimed"], "")


# --------------------------------------------------------------------------
# (d) The client's light follower (section Light clients) against a real
# node's getHeaders, getProof and getTxProof, answered in process by the
# node's own routes; then against the same answers tampered with.

LIGHT_KEYS = [key(80 + i) for i in range(4)]  # three authorities at genesis, the fourth added at block 4
NOT_AUTHORITY = key(89)


class LightChain:
    """A chain built by a real node (chain.build_steps, each block by the
    authority in turn and carrying the votes of every authority counted for
    its parent): the three authorities approve adding a fourth (block 1;
    applied at the end of block 4, the first epoch's last), two transfers
    (block 2), a payment to escrow (3), a compute receipt's claim (4), then
    empty blocks to 9; block 7 is finalized."""

    def __init__(self, testcase):
        self.doc = genesis_doc(authorities=LIGHT_KEYS[:3], epoch_length=4)
        self.node = make_node(testcase, doc=self.doc, key=LIGHT_KEYS[0])
        self.chain = self.node.chain
        self.by_address = {k.address: k for k in LIGHT_KEYS}
        d = LIGHT_KEYS[3]
        change = {"action": "add", "address": d.address, "public_key": d.public_key.hex()}
        self.block([sign_tx(k, CHAIN_ID, "AUTHORITY_UPDATE", 1, 0, change) for k in LIGHT_KEYS[:3]])
        self.transfer = transfer(ALICE, 1, BOB, 777)
        self.block([self.transfer, transfer(ALICE, 2, CAROL, 5)])
        self.payment = transfer(ALICE, 3, ESCROW, 5000)
        self.block([self.payment])
        payload = R.sign_claim(MINER, CHAIN_ID, receipt_id="rcpt-light", job_id="job-light",
                               client_addr=ALICE.address, miner_addr=MINER.address, compute_units=3, price=5000,
                               output_hash="sha256:00", client_payment_tx=self.payment.hash)
        self.claim = sign_tx(MINER, CHAIN_ID, R.CLAIM, 1, 2000, payload)
        att = R.sign_attestation(COORDINATOR, CHAIN_ID, R.attestation_request(payload))
        self.block([self.claim], attestations={self.claim.hash: att})
        while self.chain.head()[0] < 9:
            self.block()

    def block(self, txs=(), attestations=None):
        height, head = self.chain.head()
        active = self.chain.authority_set().active
        by = self.by_address[active[(height + 1) % len(active)]]  # in turn (10.5)
        votes = []
        if height:
            view = self.chain.view()
            try:
                counted = consensus.parent_set_of(view, height + 1).active
                source = self.chain.finality(view).justified
            finally:
                view.release()
            votes = FIN.block_votes([FIN.sign_vote(self.by_address[a], CHAIN_ID, height, head, source.height,
                                                   source.hash) for a in counted])
        block, records, view, failed = run_steps(self.chain.build_steps(
            list(txs), by, 0, votes=votes, attestations=attestations))
        assert not failed and len(block["votes"]) == len(votes), (failed, block["votes"])
        self.chain.commit(block, records, view)
        return block


class LightEndToEndTests(SynchronousTestCase):
    def setUp(self):
        self.c = LightChain(self)
        self.rpc, self.http = make_rpc(self.c.node)
        self.paths = []

    def fetch(self, path):
        """The node's answer to GET path through its real routes."""
        self.paths.append(path)
        resp = self.successResultOf(self.http.get(BASE + path))
        body = self.successResultOf(resp.json())
        if resp.code != 200:
            raise ic.LightError(f"node: {resp.code} {body}")
        return body

    def lying(self, route, tamper):
        """fetch, with the answers of one route changed by tamper(answer, path)."""
        def fetch(path):
            answer = self.fetch(path)
            return tamper(answer, path) if path.startswith(route) else answer
        return fetch

    def follower(self, fetch=None, cache=None):
        return ic.LightFollower(self.c.doc, fetch or self.fetch, cache)

    def refused(self, fetch, message, check=lambda f: None):
        """A follower from genesis through fetch fails its sync, or then
        check(follower), with exactly message."""
        f = self.follower(fetch)

        def run():
            f.sync()
            check(f)
        e = self.assertRaises(ic.LightError, run)
        self.assertEqual(str(e), message)

    def stored(self, height):
        return self.c.chain.store.block_at(height)

    def resign(self, entry, signer, **changes):
        header = dict(entry["header"], **changes)
        h = ic.block_hash(header)
        return dict(entry, header=header, hash=h, sig=ic.sign(signer.seed, bytes.fromhex(h)).hex())

    # -- honest answers -----------------------------------------------------------
    def test_headers_followed_to_the_finalized_block(self):
        fin = self.c.chain.finality().finalized
        self.assertEqual(fin.height, 7)
        f = self.follower()
        final = f.sync()
        self.assertEqual((f.height, final["hash"]), (7, fin.hash))
        self.assertEqual(final["header"], self.stored(7)["header"])
        # Block 5 carried the new set (four authorities), proven in block 4's state.
        self.assertIn("/rpc/getProof/chain/authorities?height=4", self.paths)
        self.assertEqual([m["address"] for m in final["set"]], [k.address for k in LIGHT_KEYS])
        self.assertEqual([len(f.verified[h]["set"]) for h in range(0, 10)], [3] * 5 + [4] * 5)
        # What block 7 itself leaves: J(7) = 6, F(7) = 5.
        self.assertEqual(final["finality"], {"justified": {"height": 6, "hash": self.stored(6)["hash"]},
                                             "finalized": {"height": 5, "hash": self.stored(5)["hash"]}})
        # The next sync starts from the block verified (a cache, as JSON).
        self.c.block()
        self.c.block()
        self.paths.clear()
        again = self.follower(cache=json.loads(json.dumps(final)))
        self.assertEqual(again.sync()["header"]["height"], 9)
        self.assertEqual(self.paths[0], "/rpc/getHeaders?from=7&limit=256")

    def test_balance_absence_tx_and_receipt_verify(self):
        f = self.follower()
        f.sync()
        view = self.c.chain.view()
        try:
            alice = view.account(ALICE.address)
        finally:
            view.release()
        self.assertEqual(f.balance(ALICE.address), tuple(alice))
        self.assertEqual(f.balance(BOB.address)[0], 10**6 + 777)
        self.assertEqual(f.balance(NOT_AUTHORITY.address), (0, 0))  # proven absent
        self.assertIn(f"/rpc/getProof/acct/{NOT_AUTHORITY.address}?height=7", self.paths)
        got = f.tx(self.c.transfer.hash)
        self.assertEqual((got["height"], got["index"], got["tx"]["payload"]),
                         (2, 0, {"to": BOB.address, "amount": 777}))
        self.assertEqual(got["block_hash"], self.stored(2)["hash"])
        rec = f.receipt("rcpt-light")
        self.assertEqual((rec["tx"], rec["height"], rec["miner"], rec["mint"]),
                         (self.c.claim.hash, 4, MINER.address, 3000))
        self.assertEqual(f.prove("chain", "authorities"), f.final["set"])
        self.assertEqual(f.prove("param", "no_such_param"), None)

    # -- tampered answers ---------------------------------------------------------
    def test_a_changed_balance(self):
        def tamper(a, path):
            a["value"] = [a["value"][0] + 1, a["value"][1]]
            a["value_cbor"] = ic.cbor(a["value"]).hex()
            return a
        self.refused(self.lying("/rpc/getProof/acct/", tamper),
                     "balance proof does not match state_root of finalized block 7",
                     lambda f: f.balance(ALICE.address))

    def test_an_absent_account_made_present(self):
        def tamper(a, path):
            a.update(value=[1, 0], value_cbor=ic.cbor([1, 0]).hex())
            return a
        self.refused(self.lying("/rpc/getProof/acct/", tamper),
                     "balance proof does not match state_root of finalized block 7",
                     lambda f: f.balance(NOT_AUTHORITY.address))

    def test_a_proof_from_another_height(self):
        older = self.fetch(f"/rpc/getProof/acct/{ALICE.address}?height=2")
        self.refused(self.lying("/rpc/getProof/acct/", lambda a, path: older),
                     "balance proof is for block 2, not finalized block 7", lambda f: f.balance(ALICE.address))
        relabelled = dict(older, height=7, block_hash=self.stored(7)["hash"])
        self.refused(self.lying("/rpc/getProof/acct/", lambda a, path: relabelled),
                     "balance proof does not match state_root of finalized block 7", lambda f: f.balance(ALICE.address))

    def test_a_header_signed_by_a_non_authority(self):
        def tamper(a, path):
            for i, e in enumerate(a["headers"]):
                if e["header"]["height"] == 3:
                    a["headers"][i] = self.resign(e, NOT_AUTHORITY, proposer=NOT_AUTHORITY.address)
            return a
        self.refused(self.lying("/rpc/getHeaders", tamper), "header 3: signature by a non-authority")

        def badsig(a, path):
            for i, e in enumerate(a["headers"]):
                if e["header"]["height"] == 3:
                    a["headers"][i] = self.resign(e, NOT_AUTHORITY)
            return a
        self.refused(self.lying("/rpc/getHeaders", badsig), "header 3: bad proposer signature")

    def test_a_dropped_vote(self):
        # Dropped from the votes served for block 7: block 8's votes_root no longer matches.
        def drop(a, path):
            for e in a["headers"]:
                if e["header"]["height"] == 7:
                    e["votes"] = e["votes"][1:]
            return a
        self.refused(self.lying("/rpc/getHeaders", drop),
                     "block 8: votes_root does not match the votes served for block 7")

        # Block 9 re-made by its own proposer carrying two of the four votes
        # for block 8 (a valid block on its own, q(4) = 3): then 8 is not
        # justified, and the node's finalized 7 is not finalized.
        def short(a, path):
            for i, e in enumerate(a["headers"]):
                if e["header"]["height"] == 8:
                    e["votes"] = e["votes"][2:]
                    votes_root = ic.votes_root(e["votes"])
                elif e["header"]["height"] == 9:
                    a["headers"][i] = self.resign(e, self.c.by_address[e["header"]["proposer"]], votes_root=votes_root)
            return a
        self.refused(self.lying("/rpc/getHeaders", short), "block 8: votes below quorum (2 of 3)")

    def test_a_changed_branch_item(self):
        def tamper(a, path):
            a["branch"][0] = ("0" if a["branch"][0][0] != "0" else "1") + a["branch"][0][1:]
            return a
        self.refused(self.lying("/rpc/getTxProof/", tamper), "tx proof does not match tx_root of block 2",
                     lambda f: f.tx(self.c.transfer.hash))

    def test_a_set_not_in_the_state(self):
        def tamper(a, path):
            for e in a["headers"]:
                if e["header"]["height"] == 5:
                    e["authorities"] = e["authorities"][:3]
            return a
        self.refused(self.lying("/rpc/getHeaders", tamper),
                     "header 5: the set it carries does not hash to authorities_hash")

    def test_a_stale_finalized_block(self):
        final = self.follower().sync()

        def stale(a, path):
            a["finalized"] = {"height": 4, "hash": self.stored(4)["hash"]}
            return a
        e = self.assertRaises(ic.LightError, self.follower(self.lying("/rpc/getHeaders", stale), final).sync)
        self.assertEqual(str(e), "node reports finalized 4 below verified 7")
