"""Tests for aitnode.rpc: every route and every refusal, in process (StubTreq)."""

import json

import cbor2

from twisted.trial.unittest import SynchronousTestCase

from aitnode.genesis import Genesis
from aitnode.tx import sign_tx

from tests.common import (
    ADMIN_TOKEN, ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, GENESIS_BALANCE, genesis_doc, key, make_node, make_rpc,
    transfer, wire, edited,
)
from tests.test_consensus import A0, A1, A2, A3, KEYS, Builder, doc, double_proposal

BASE = "http://127.0.0.1"
AUTH = {b"Authorization": [b"Bearer " + ADMIN_TOKEN.encode()]}


def min_fee(payload, base_fee=10, fee_per_byte=1):
    return base_fee + fee_per_byte * len(cbor2.dumps(payload, canonical=True))


class RPCTestBase(SynchronousTestCase):
    def setUp(self):
        self.node = make_node(self)
        self.rpc, self.http = make_rpc(self.node)

    def call(self, method, path, body=None, raw=None, headers=None, http=None):
        """(status, decoded JSON) of one request; every answer must be JSON."""
        http = http or self.http
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        resp = self.successResultOf(http.request(method, BASE + path, data=data, headers=headers))
        content = self.successResultOf(http.content(resp))
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"application/json"], content)
        return resp.code, json.loads(content)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body=body, **kw)

    def ok(self, method, path, body=None, **kw):
        status, out = self.call(method, path, body=body, **kw)
        self.assertEqual(status, 200, out)
        return out

    def refused(self, method, path, status, code, body=None, **kw):
        got, out = self.call(method, path, body=body, **kw)
        self.assertEqual((got, out.get("error", {}).get("code")), (status, code), out)
        self.assertEqual(set(out), {"error"})
        self.assertEqual(set(out["error"]), {"code", "message"})
        self.assertIsInstance(out["error"]["message"], str)
        self.assertTrue(out["error"]["message"])
        return out["error"]["message"]

    def send(self, tx):
        return self.ok("POST", "/rpc/sendTx", wire(tx))

    def balances(self):
        return {
            k.address: self.ok("GET", "/rpc/getBalance/" + k.address)
            for k in (ALICE, BOB, CAROL, AUTHORITY)
        }


class SendAndQueryTests(RPCTestBase):
    def test_send_tx(self):
        t = transfer(ALICE, 1, BOB, 10)
        self.assertEqual(self.send(t), {"txHash": t.hash})
        self.assertIn(t.hash, self.node.mempool)
        # chain_id may be given when it is the node's.
        t2 = transfer(ALICE, 2, BOB, 10)
        self.assertEqual(self.ok("POST", "/rpc/sendTx", t2.to_wire()), {"txHash": t2.hash})

    def test_get_tx_pending_then_included(self):
        t = transfer(ALICE, 1, BOB, 10, fee=900)
        self.send(t)
        out = self.ok("GET", "/rpc/getTx/" + t.hash)
        self.assertEqual(out["status"], "pending")
        self.assertEqual(out["tx"], t.to_wire())
        self.assertNotIn("block", out)
        block = self.node.pipeline.propose()
        out = self.ok("GET", "/rpc/getTx/" + t.hash)
        self.assertEqual(out["status"], "included")
        self.assertEqual(out["tx"], t.to_wire())
        self.assertEqual(out["block"]["height"], 1)
        self.assertEqual(out["block"]["hash"], block["hash"])
        self.assertEqual(out["receipt"]["fee"], 900)
        self.assertEqual(
            sorted((c["address"], c["delta"]) for c in out["receipt"]["changes"]),
            sorted([(ALICE.address, -910), (BOB.address, 10)]),
        )

    def test_get_tx_unknown_and_malformed(self):
        self.refused("GET", "/rpc/getTx/" + "ab" * 32, 404, "not_found")
        self.refused("GET", "/rpc/getTx/xyz", 400, "bad_hex")
        self.refused("GET", "/rpc/getTx/" + "AB" * 32, 400, "bad_hex")
        self.refused("GET", "/rpc/getTx/" + "ab" * 31, 400, "bad_hex")
        self.refused("GET", "/rpc/getTx/" + "ab" * 33, 400, "bad_hex")

    def test_get_block(self):
        t1, t2 = transfer(ALICE, 1, BOB, 10), transfer(BOB, 1, CAROL, 20)
        self.send(t1)
        self.send(t2)
        block = self.node.pipeline.propose()
        by_height = self.ok("GET", "/rpc/getBlock/1")
        self.assertEqual(
            set(by_height),
            {"chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root", "votes_root",
             "evidence_root", "authorities_hash", "hash", "sig", "txs", "votes", "evidence", "authorities"},
        )
        # Block 1 begins the first epoch: it carries the set; it has no votes or evidence.
        self.assertEqual((by_height["votes"], by_height["evidence"]), ([], []))
        self.assertEqual(by_height["authorities"], block["authorities"])
        self.assertEqual(by_height["authorities"], self.node.chain.authority_set().members)
        for k, v in block["header"].items():
            self.assertEqual(by_height[k], v)
        self.assertEqual(by_height["hash"], block["hash"])
        self.assertEqual(by_height["sig"], block["sig"])
        self.assertEqual(by_height["txs"], [t1.hash, t2.hash])
        self.assertEqual(self.ok("GET", "/rpc/getBlock/" + block["hash"]), by_height)
        full = self.ok("GET", "/rpc/getBlock/1?full=true")
        self.assertEqual(full["txs"], [t1.to_wire(), t2.to_wire()])
        self.assertEqual(full["hash"], block["hash"])
        self.assertEqual(self.ok("GET", "/rpc/getBlock/1?full=false")["txs"], [t1.hash, t2.hash])
        genesis = self.ok("GET", "/rpc/getBlock/0")
        self.assertEqual(genesis["hash"], Genesis(genesis_doc()).hash)
        self.assertEqual(genesis["parent"], "0" * 64)
        self.assertEqual(genesis["txs"], [])
        self.assertEqual((genesis["votes"], genesis["evidence"]), ([], []))
        self.assertNotIn("authorities", genesis)
        self.assertEqual(by_height["parent"], genesis["hash"])
        self.node.pipeline.propose()
        self.assertNotIn("authorities", self.ok("GET", "/rpc/getBlock/2"))  # not an epoch's first block

    def test_get_block_unknown_and_bad(self):
        self.refused("GET", "/rpc/getBlock/2", 404, "not_found")
        self.refused("GET", "/rpc/getBlock/" + "cd" * 32, 404, "not_found")
        self.refused("GET", "/rpc/getBlock/latest", 400, "bad_block_ref")
        self.refused("GET", "/rpc/getBlock/-1", 400, "bad_block_ref")
        self.refused("GET", "/rpc/getBlock/" + "CD" * 32, 400, "bad_block_ref")
        self.refused("GET", "/rpc/getBlock/1.5", 400, "bad_block_ref")

    def test_get_block_out_of_range_height(self):
        # Decimal, but no uint64: never a 5xx.
        self.refused("GET", "/rpc/getBlock/99999999999999999999", 400, "bad_block_ref")
        self.refused("GET", "/rpc/getBlock/18446744073709551616", 400, "bad_block_ref")
        self.refused("GET", "/rpc/getBlock/18446744073709551615", 404, "not_found")
        # Digits that are not ASCII digits.
        self.refused("GET", "/rpc/getBlock/%C2%B2", 400, "bad_block_ref")
        self.refused("GET", "/rpc/getBlock/%D9%A1", 400, "bad_block_ref")

    def test_get_head(self):
        g = Genesis(genesis_doc())
        genesis = {"height": 0, "hash": g.hash}
        self.assertEqual(self.ok("GET", "/rpc/getHead"), dict(genesis, justified=genesis, finalized=genesis))
        block = self.node.pipeline.propose()
        self.assertEqual(self.ok("GET", "/rpc/getHead"), {"height": 1, "hash": block["hash"],
                                                          "justified": genesis, "finalized": genesis})
        # A single authority's vote for each block rides in the next one:
        # block 2 justifies block 1, block 3 justifies 2 and finalizes 1.
        self.node.clock.advance(0.01)
        self.node.pipeline.propose()
        self.node.clock.advance(0.01)
        b3 = self.node.pipeline.propose()
        head = self.ok("GET", "/rpc/getHead")
        self.assertEqual((head["height"], head["hash"]), (3, b3["hash"]))
        self.assertEqual(head["justified"]["height"], 2)
        self.assertEqual(head["finalized"], {"height": 1, "hash": block["hash"]})

    def test_get_balance(self):
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + ALICE.address), {"balance": GENESIS_BALANCE, "nonce": 0})
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + key(99).address), {"balance": 0, "nonce": 0})
        self.send(transfer(ALICE, 1, CAROL, 77, fee=100))
        self.node.pipeline.propose()
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + ALICE.address), {"balance": GENESIS_BALANCE - 177, "nonce": 1})
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + CAROL.address), {"balance": 77, "nonce": 0})
        self.refused("GET", "/rpc/getBalance/nope", 400, "bad_address")
        self.refused("GET", "/rpc/getBalance/" + ALICE.address.upper(), 400, "bad_address")
        self.refused("GET", "/rpc/getBalance/" + ALICE.address[:-1] + ("q" if ALICE.address[-1] != "q" else "p"), 400, "bad_address")
        self.refused("GET", "/rpc/getBalance/bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", 400, "bad_address")

    def test_estimate_fee(self):
        t = transfer(ALICE, 1, BOB, 123456, fee=0)
        need = min_fee(t.payload)
        self.assertEqual(self.ok("POST", "/rpc/estimateFee", wire(t)), {"fee": need})
        bare = wire(t)
        del bare["sig"], bare["pubkey"]
        self.assertEqual(self.ok("POST", "/rpc/estimateFee", bare), {"fee": need})
        self.assertNotEqual(need, min_fee({"to": BOB.address, "amount": 1}))
        # That fee is exactly enough, one less is not.
        self.refused("POST", "/rpc/sendTx", 400, "fee_too_low", wire(transfer(ALICE, 1, BOB, 123456, fee=need - 1)))
        self.send(transfer(ALICE, 1, BOB, 123456, fee=need))
        # The estimate follows the params.
        self.ok("POST", "/admin/paramSet", {"key": "fee_per_byte", "value": 4}, headers=AUTH)
        self.node.pipeline.propose()
        self.assertEqual(self.ok("POST", "/rpc/estimateFee", bare), {"fee": min_fee(t.payload, 10, 4)})
        m = bare.copy()
        m["type"] = "MINT"
        self.assertEqual(self.ok("POST", "/rpc/estimateFee", m), {"fee": 0})
        self.refused("POST", "/rpc/estimateFee", 400, "malformed_json", raw=b"{")
        bad = dict(bare, fee=1.5)
        self.refused("POST", "/rpc/estimateFee", 400, "float_not_allowed", bad)

    def test_send_txs_batch(self):
        good1 = transfer(ALICE, 1, BOB, 10)
        good2 = transfer(ALICE, 2, BOB, 20)
        tampered = wire(transfer(BOB, 1, CAROL, 5))
        tampered["payload"]["amount"] = 6
        floaty = dict(wire(transfer(BOB, 1, CAROL, 5)), fee=1000.0)
        out = self.ok("POST", "/rpc/sendTxs", [wire(good1), tampered, floaty, wire(good2), wire(good1)])
        results = out["results"]
        self.assertEqual(len(results), 5)
        self.assertEqual(results[0], {"txHash": good1.hash})
        self.assertEqual(results[1]["error"]["code"], "bad_signature")
        self.assertEqual(results[2]["error"]["code"], "float_not_allowed")
        self.assertEqual(results[3], {"txHash": good2.hash})
        self.assertEqual(results[4], {"txHash": good1.hash})
        self.assertEqual(len(self.node.mempool), 2)
        block = self.node.pipeline.propose()
        self.assertEqual(block["txs"], [good1.hash, good2.hash])
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + CAROL.address), {"balance": 0, "nonce": 0})
        self.assertEqual(self.ok("POST", "/rpc/sendTxs", []), {"results": []})

    def test_send_txs_refusals(self):
        self.refused("POST", "/rpc/sendTxs", 400, "wrong_type", wire(transfer(ALICE, 1, BOB, 1)))
        self.refused("POST", "/rpc/sendTxs", 400, "malformed_json", raw=b"[{")
        _, small = make_rpc(self.node, max_batch_items=2)
        t = [wire(transfer(ALICE, n, BOB, 1)) for n in (1, 2, 3)]
        self.refused("POST", "/rpc/sendTxs", 413, "batch_too_large", t, http=small)
        self.assertEqual(len(self.node.mempool), 0)

    def test_get_params(self):
        out = self.ok("GET", "/rpc/getParams")
        self.assertEqual(out["base_fee"], 10)
        self.assertEqual(out["fee_per_byte"], 1)
        self.assertIs(out["faucet"], True)


class AdminTests(RPCTestBase):
    def test_mint_faucet(self):
        body = {"address": CAROL.address, "amount": 5000}
        self.refused("POST", "/admin/mintFaucet", 401, "unauthorized", body)
        self.refused("POST", "/admin/mintFaucet", 401, "unauthorized", body,
                     headers={b"Authorization": [b"Bearer wrong-token"]})
        self.refused("POST", "/admin/mintFaucet", 401, "unauthorized", body,
                     headers={b"Authorization": [ADMIN_TOKEN.encode()]})
        self.refused("POST", "/admin/mintFaucet", 401, "unauthorized", body,
                     headers={b"Authorization": [b"Basic " + ADMIN_TOKEN.encode()]})
        self.assertEqual(len(self.node.mempool), 0)
        out = self.ok("POST", "/admin/mintFaucet", body, headers=AUTH)
        tx = self.ok("GET", "/rpc/getTx/" + out["txHash"])
        self.assertEqual(tx["status"], "pending")
        self.assertEqual(tx["tx"]["type"], "MINT")
        self.assertEqual(tx["tx"]["sender"], AUTHORITY.address)
        self.assertEqual(tx["tx"]["payload"], {"to": CAROL.address, "amount": 5000})
        block = self.node.pipeline.propose()
        self.assertEqual(block["txs"], [out["txHash"]])
        self.assertEqual(self.ok("GET", "/rpc/getTx/" + out["txHash"])["status"], "included")
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + CAROL.address), {"balance": 5000, "nonce": 0})
        # Two mints in a row take consecutive nonces of the authority.
        a = self.ok("POST", "/admin/mintFaucet", body, headers=AUTH)["txHash"]
        b = self.ok("POST", "/admin/mintFaucet", {"address": CAROL.address, "amount": 1}, headers=AUTH)["txHash"]
        self.assertEqual(self.node.pipeline.propose()["txs"], [a, b])
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + CAROL.address)["balance"], 10001)
        self.assertEqual(self.ok("GET", "/rpc/getBalance/" + AUTHORITY.address)["nonce"], 3)

    def test_mint_faucet_bad_bodies(self):
        for body, code in (
            ({"address": CAROL.address}, "missing_field"),
            ({"address": CAROL.address, "amount": 1, "x": 1}, "unknown_field"),
            ({"address": "nope", "amount": 1}, "bad_address"),
            ({"address": CAROL.address, "amount": 1.0}, "float_not_allowed"),
            ({"address": CAROL.address, "amount": 0}, "number_out_of_range"),
            ({"address": CAROL.address, "amount": -3}, "number_out_of_range"),
            ({"address": CAROL.address, "amount": 2**64}, "number_out_of_range"),
            ({"address": CAROL.address, "amount": "5"}, "wrong_type"),
            ([], "wrong_type"),
        ):
            self.refused("POST", "/admin/mintFaucet", 400, code, body, headers=AUTH)
        self.refused("POST", "/admin/mintFaucet", 400, "malformed_json", raw=b"nope", headers=AUTH)
        self.assertEqual(len(self.node.mempool), 0)

    def test_authority_update(self):
        """The node's approval of an authority change: with one authority
        (quorum 1) BOB joins at the end of the epoch (2 blocks here)."""
        node = make_node(self, doc=genesis_doc(epoch_length=2))
        _, http = make_rpc(node)
        body = {"action": "add", "address": BOB.address, "public_key": BOB.public_key.hex()}
        self.refused("POST", "/admin/authorityUpdate", 401, "unauthorized", body, http=http)
        for bad, code in (
            (dict(body, action="promote"), "bad_authority_update"),
            (dict(body, public_key=CAROL.public_key.hex()), "pubkey_mismatch"),
            (dict(body, address=AUTHORITY.address, public_key=AUTHORITY.public_key.hex()), "authority_exists"),
            (dict(body, action="remove"), "authority_unknown"),
            ({"action": "add"}, "missing_field"),
        ):
            self.refused("POST", "/admin/authorityUpdate", 400, code, bad, headers=AUTH, http=http)
        out = self.ok("POST", "/admin/authorityUpdate", body, headers=AUTH, http=http)
        self.refused("POST", "/admin/authorityUpdate", 409, "already_approved", body, headers=AUTH, http=http)
        node.clock.advance(0.01)
        node.pipeline.propose()  # block 1: the approval
        self.assertEqual(self.ok("GET", "/rpc/getTx/" + out["txHash"], http=http)["status"], "included")
        self.assertEqual([a["address"] for a in self.ok("GET", "/rpc/getAuthorities", http=http)["authorities"]],
                         [AUTHORITY.address])
        node.clock.advance(0.01)
        node.pipeline.propose()  # block 2 ends the epoch: the change applies
        got = self.ok("GET", "/rpc/getAuthorities", http=http)
        self.assertEqual((got["height"], got["epoch"], got["quorum"]), (3, 1, 2))
        self.assertEqual(got["authorities"], [
            {"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex(), "jailed": False},
            {"address": BOB.address, "public_key": BOB.public_key.hex(), "jailed": False},
        ])
        self.assertEqual(self.ok("GET", "/rpc/getAuthorities?height=2", http=http)["authorities"][1:], [])
        self.refused("GET", "/rpc/getAuthorities?height=x", 400, "bad_height", http=http)
        self.refused("GET", "/rpc/getAuthorities?height=99", 404, "not_found", http=http)

    def test_param_set(self):
        body = {"key": "base_fee", "value": 77}
        self.refused("POST", "/admin/paramSet", 401, "unauthorized", body)
        self.refused("POST", "/admin/paramSet", 401, "unauthorized", body,
                     headers={b"Authorization": [b"Bearer " + ADMIN_TOKEN.encode() + b"x"]})
        out = self.ok("POST", "/admin/paramSet", body, headers=AUTH)
        self.assertEqual(self.ok("GET", "/rpc/getParams")["base_fee"], 10)
        self.node.pipeline.propose()
        self.assertEqual(self.ok("GET", "/rpc/getTx/" + out["txHash"])["status"], "included")
        self.assertEqual(self.ok("GET", "/rpc/getParams")["base_fee"], 77)
        for body, code in (
            ({"key": "faucet", "value": False}, "bad_param"),
            ({"key": "nope", "value": 1}, "bad_param"),
            ({"key": "base_fee", "value": -1}, "number_out_of_range"),
            ({"key": "base_fee", "value": 1.5}, "float_not_allowed"),
            ({"key": "base_fee"}, "missing_field"),
        ):
            self.refused("POST", "/admin/paramSet", 400, code, body, headers=AUTH)
        self.assertEqual(len(self.node.mempool), 0)

    def test_admin_disabled_without_token(self):
        _, http = make_rpc(self.node, admin_token=None)
        for path, body in (("/admin/mintFaucet", {"address": CAROL.address, "amount": 1}),
                           ("/admin/paramSet", {"key": "base_fee", "value": 1})):
            self.refused("POST", path, 403, "admin_disabled", body, http=http)
            self.refused("POST", path, 403, "admin_disabled", body, headers=AUTH, http=http)
            self.refused("POST", path, 403, "admin_disabled", body,
                         headers={b"Authorization": [b"Bearer "]}, http=http)
        self.assertEqual(len(self.node.mempool), 0)

    def test_admin_on_node_without_authority_key(self):
        node = make_node(self, key=ALICE)
        _, http = make_rpc(node)
        self.refused("POST", "/admin/mintFaucet", 403, "not_authority",
                     {"address": CAROL.address, "amount": 1}, headers=AUTH, http=http)

    def test_faucet_off(self):
        node = make_node(self, doc=genesis_doc(faucet=False))
        _, http = make_rpc(node)
        self.refused("POST", "/admin/mintFaucet", 400, "faucet_disabled",
                     {"address": CAROL.address, "amount": 1}, headers=AUTH, http=http)


class BadInputTests(RPCTestBase):
    def base(self, **changes):
        """ALICE's nonce-2 transfer on the wire, with changes (None deletes)."""
        return edited(wire(transfer(ALICE, 2, BOB, 10)), changes)

    def payload(self, **changes):
        p = {"to": BOB.address, "amount": 10}
        for k, v in changes.items():
            if v is None:
                del p[k]
            else:
                p[k] = v
        return self.base(payload=p)

    def cases(self):
        other_chain = transfer(ALICE, 2, BOB, 10, chain_id="other")
        other_wire = other_chain.to_wire()
        other_no_chain = wire(other_chain)
        tampered = self.base()
        tampered["payload"]["amount"] = 11
        good = transfer(ALICE, 2, BOB, 10)
        swapped_sig = self.base(sig=transfer(ALICE, 2, BOB, 12).sig.hex())
        return [
            # (name, body or raw bytes, status, code)
            ("malformed json", b'{"type": ', 400, "malformed_json"),
            ("not utf-8", b'{"type": "\xff"}', 400, "malformed_json"),
            ("empty body", b"", 400, "malformed_json"),
            ("trailing junk", json.dumps(wire(good)).encode() + b"x", 400, "malformed_json"),
            ("duplicate key", b'{"fee": 1, "fee": 1}', 400, "duplicate_field"),
            ("NaN", json.dumps(self.base(fee=0)).replace('"fee": 0', '"fee": NaN').encode(), 400, "float_not_allowed"),
            ("deep nesting", b"[" * 30000 + b"]" * 30000, 400, "malformed_json"),
            ("not an object", [wire(good)], 400, "wrong_type"),
            ("string", "tx", 400, "wrong_type"),
            ("missing fee", self.base(fee=None), 400, "missing_field"),
            ("missing sig", self.base(sig=None), 400, "missing_field"),
            ("missing pubkey", self.base(pubkey=None), 400, "missing_field"),
            ("missing payload", self.base(payload=None), 400, "missing_field"),
            ("missing payload.amount", self.payload(amount=None), 400, "missing_field"),
            ("unknown field", self.base(memo="hi"), 400, "unknown_field"),
            ("unknown payload field", self.payload(memo="hi"), 400, "unknown_field"),
            ("unknown type", self.base(type="BURN"), 400, "unknown_type"),
            ("type not a string", self.base(type=1), 400, "wrong_type"),
            ("nonce as string", self.base(nonce="2"), 400, "wrong_type"),
            ("fee as bool", self.base(fee=True), 400, "wrong_type"),
            ("fee as list", self.base(fee=[]), 400, "wrong_type"),
            ("payload not a map", self.base(payload="x"), 400, "wrong_type"),
            ("sender a number", self.base(sender=5), 400, "wrong_type"),
            ("amount null", self.base(payload={"to": BOB.address, "amount": None}), 400, "null_not_allowed"),
            ("float fee", self.base(fee=1000.0), 400, "float_not_allowed"),
            ("float amount", self.payload(amount=10.5), 400, "float_not_allowed"),
            ("exponent fee", json.dumps(self.base(fee=0)).replace('"fee": 0', '"fee": 1e3').encode(), 400, "float_not_allowed"),
            ("negative amount", self.payload(amount=-10), 400, "number_out_of_range"),
            ("negative fee", self.base(fee=-1), 400, "number_out_of_range"),
            ("negative nonce", self.base(nonce=-2), 400, "number_out_of_range"),
            ("zero nonce", self.base(nonce=0), 400, "number_out_of_range"),
            ("zero amount", self.payload(amount=0), 400, "number_out_of_range"),
            ("fee 2**64", self.base(fee=2**64), 400, "number_out_of_range"),
            ("amount 2**64", self.payload(amount=2**64), 400, "number_out_of_range"),
            ("nonce 2**64", self.base(nonce=2**64), 400, "number_out_of_range"),
            ("huge number", self.base(fee=10**30), 400, "number_out_of_range"),
            ("bad sender", self.base(sender="ait1notanaddress"), 400, "bad_address"),
            ("uppercase sender", self.base(sender=ALICE.address.upper()), 400, "bad_address"),
            ("bad recipient", self.payload(to="bob"), 400, "bad_address"),
            ("recipient other hrp", self.payload(to="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"), 400, "bad_address"),
            ("uppercase sig", self.base(sig=good.sig.hex().upper()), 400, "bad_hex"),
            ("uppercase pubkey", self.base(pubkey=good.pubkey.hex().upper()), 400, "bad_hex"),
            ("short sig", self.base(sig=good.sig.hex()[:-2]), 400, "bad_hex"),
            ("non-hex sig", self.base(sig="zz" * 64), 400, "bad_hex"),
            ("sig not a string", self.base(sig=5), 400, "wrong_type"),
            ("pubkey of another", self.base(pubkey=BOB.public_key.hex()), 400, "pubkey_mismatch"),
            ("amount changed after signing", tampered, 400, "bad_signature"),
            ("sig of another tx", swapped_sig, 400, "bad_signature"),
            ("zero sig", self.base(sig="00" * 64), 400, "bad_signature"),
            ("signed for another chain", other_wire, 400, "wrong_chain"),
            ("another chain, chain_id left out", other_no_chain, 400, "bad_signature"),
            ("nonce too low", wire(transfer(ALICE, 1, CAROL, 3)), 400, "nonce_too_low"),
            ("nonce too far ahead", wire(transfer(ALICE, 4, BOB, 10)), 400, "nonce_too_far_ahead"),
            ("fee too low", wire(transfer(ALICE, 2, BOB, 10, fee=1)), 400, "fee_too_low"),
            ("insufficient balance", wire(transfer(BOB, 1, CAROL, 10**6)), 400, "insufficient_balance"),
            ("no account", wire(transfer(key(61), 1, CAROL, 1)), 400, "insufficient_balance"),
            ("mint by non-authority", wire(sign_tx(ALICE, CHAIN_ID, "MINT", 2, 0, {"to": ALICE.address, "amount": 9})), 400, "not_authority"),
            ("param update by non-authority", wire(sign_tx(ALICE, CHAIN_ID, "PARAM_UPDATE", 2, 1000, {"key": "base_fee", "value": 0})), 400, "not_authority"),
        ]

    def test_every_bad_input(self):
        # ALICE has one included transaction, so nonce 1 is used.
        first = transfer(ALICE, 1, BOB, 5)
        self.send(first)
        self.node.pipeline.propose()
        before = self.balances()
        head = self.ok("GET", "/rpc/getHead")
        for name, body, status, code in self.cases():
            raw = body if isinstance(body, bytes) else None
            got, out = self.call("POST", "/rpc/sendTx", body=None if raw is not None else body, raw=raw)
            self.assertEqual((got, out.get("error", {}).get("code")), (status, code), f"{name}: {out}")
            self.assertTrue(out["error"]["message"], name)
        self.assertEqual(len(self.node.mempool), 0)
        self.assertEqual(self.ok("GET", "/rpc/getHead"), head)
        # Blocks keep coming, and nothing changed.
        block = self.node.pipeline.propose()
        self.assertEqual(block["header"]["height"], 2)
        self.assertEqual(block["txs"], [])
        self.assertEqual(self.balances(), before)
        self.assertEqual(before[ALICE.address]["nonce"], 1)
        # And a good transaction still goes through.
        good = transfer(ALICE, 2, BOB, 10)
        self.send(good)
        self.assertEqual(self.node.pipeline.propose()["txs"], [good.hash])

    def test_bad_inputs_in_a_batch(self):
        """The same inputs as items of sendTxs get the same codes, one each."""
        self.send(transfer(ALICE, 1, BOB, 5))
        self.node.pipeline.propose()
        cases = [c for c in self.cases() if not isinstance(c[1], bytes)]
        out = self.ok("POST", "/rpc/sendTxs", [c[1] for c in cases])
        self.assertEqual(len(out["results"]), len(cases))
        for (name, body, status, code), result in zip(cases, out["results"]):
            self.assertEqual(result.get("error", {}).get("code"), code, name)
        self.assertEqual(len(self.node.mempool), 0)

    def test_body_too_large(self):
        _, http = make_rpc(self.node, max_body=1000)
        body = json.dumps(self.base(memo="x" * 2000)).encode()
        self.assertGreater(len(body), 2000)
        self.refused("POST", "/rpc/sendTx", 413, "body_too_large", raw=body, http=http)
        self.refused("POST", "/rpc/estimateFee", 413, "body_too_large", raw=b" " * 2000, http=http)
        self.refused("POST", "/admin/mintFaucet", 413, "body_too_large", raw=b" " * 2000, headers=AUTH, http=http)
        # Under the limit the same route answers normally.
        t = transfer(ALICE, 1, BOB, 1)
        self.assertEqual(self.ok("POST", "/rpc/sendTx", wire(t), http=http), {"txHash": t.hash})

    def test_unknown_route_and_wrong_method(self):
        self.refused("GET", "/rpc/nope", 404, "not_found")
        self.refused("POST", "/nope/at/all", 404, "not_found")
        self.refused("GET", "/", 404, "not_found")
        self.refused("GET", "/rpc/sendTx", 405, "method_not_allowed")
        self.refused("POST", "/rpc/getHead", 405, "method_not_allowed")
        self.refused("DELETE", "/rpc/getBalance/" + ALICE.address, 405, "method_not_allowed")
        self.refused("GET", "/admin/mintFaucet", 405, "method_not_allowed")

    def test_nothing_is_a_server_error(self):
        """A spread of odd requests: always JSON, always 4xx."""
        odd = [
            ("POST", "/rpc/sendTx", b"null"),
            ("POST", "/rpc/sendTx", b"123"),
            ("POST", "/rpc/sendTx", b'{"type": "TRANSFER", "payload": {"to": [], "amount": {}}}'),
            ("POST", "/rpc/sendTx", json.dumps(self.base(payload={"to": BOB.address, "amount": 1, "x": {"y": [1.5]}})).encode()),
            ("POST", "/rpc/sendTx", json.dumps(self.base(payload={1: 2})).encode()),
            ("POST", "/rpc/estimateFee", b"[]"),
            ("POST", "/rpc/estimateFee", json.dumps(self.base(type=None)).encode()),
            ("POST", "/rpc/sendTxs", b"[null, 1, \"x\", []]"),
            ("POST", "/admin/paramSet", b"{}"),
            ("GET", "/rpc/getTx/%00", None),
            ("GET", "/rpc/getBalance/%00", None),
            ("GET", "/rpc/getBlock/%00", None),
            ("POST", "/rpc/sendTx", "{\"type\": \"\u00e9\"}".encode()),
        ]
        for method, path, raw in odd:
            status, out = self.call(method, path, raw=raw, headers=AUTH)
            if path == "/rpc/sendTxs":
                self.assertEqual(status, 200)
                self.assertEqual([r["error"]["code"] for r in out["results"]],
                                 ["wrong_type"] * 4)
                continue
            self.assertTrue(400 <= status < 500, (method, path, raw, status, out))
            self.assertIn("code", out["error"])
        self.assertEqual(self.node.pipeline.propose()["header"]["height"], 1)


SURROGATE = "\ud800"  # valid JSON ("\\ud800"), but no UTF-8 form


class BadTextTests(RPCTestBase):
    """Text that cannot be encoded as UTF-8, and JSON of the wrong shape
    where the node logs a refusal: always a 4xx JSON error, per item in
    a batch (issue 9, defect 8)."""

    def claim_wire(self, **fields):
        """A claim-shaped wire transaction whose payload passes every
        format rule; its signature is not valid (never reached)."""
        payload = {
            "receipt_id": "r1", "job_id": "job_1", "client_addr": ALICE.address, "miner_addr": BOB.address,
            "compute_units": 3, "price": 5000, "output_hash": "sha256:" + "ab" * 32,
            "client_payment_tx": "cd" * 32, "miner_pubkey": BOB.public_key.hex(), "miner_sig": "ef" * 64,
        }
        payload.update(fields)
        return {"type": "RECEIPT_CLAIM", "sender": BOB.address, "nonce": 1, "fee": 1000, "payload": payload,
                "pubkey": BOB.public_key.hex(), "sig": "00" * 64}

    def test_lone_surrogate_in_a_transaction(self):
        for field in ("receipt_id", "job_id", "output_hash"):
            body = self.claim_wire(**{field: "r" + SURROGATE})
            for path in ("/rpc/sendTx", "/rpc/submitReceipt", "/rpc/estimateFee"):
                msg = self.refused("POST", path, 400, "bad_text", body)
                self.assertIn(field, msg)
        # In a map key of a payload, too.
        self.refused("POST", "/rpc/estimateFee", 400, "bad_text",
                     self.claim_wire(**{"x" + SURROGATE: 1}))
        self.assertEqual(len(self.node.mempool), 0)

    def test_lone_surrogate_is_one_item_of_a_batch(self):
        good = transfer(ALICE, 1, BOB, 10)
        out = self.ok("POST", "/rpc/sendTxs", [self.claim_wire(job_id=SURROGATE), wire(good)])
        self.assertEqual(out["results"][0]["error"]["code"], "bad_text")
        self.assertEqual(out["results"][1], {"txHash": good.hash})
        self.assertEqual(self.node.pipeline.propose()["txs"], [good.hash])

    def test_lone_surrogate_in_admin_bodies(self):
        self.refused("POST", "/admin/paramSet", 400, "bad_text", {"key": SURROGATE, "value": 1}, headers=AUTH)
        self.refused("POST", "/admin/paramSet", 400, "bad_text", {"key": "base_fee", "value": SURROGATE}, headers=AUTH)
        self.assertEqual(len(self.node.mempool), 0)

    def test_type_of_any_json_type(self):
        base = wire(transfer(ALICE, 1, BOB, 10))
        odd = [{"a": 1}, [1], ["TRANSFER"], {}, [], None, 1.5, True, SURROGATE]
        for value in odd:
            body = dict(base, type=value)
            got, out = self.call("POST", "/rpc/sendTx", body=body)
            self.assertEqual(got, 400, (value, out))
            self.assertIn(out["error"]["code"], ("wrong_type", "unknown_type"), value)
        out = self.ok("POST", "/rpc/sendTxs", [dict(base, type=v) for v in odd] + [base])
        codes = [r.get("error", {}).get("code") for r in out["results"]]
        self.assertEqual(codes[:-1], ["wrong_type"] * 8 + ["unknown_type"])
        self.assertEqual(out["results"][-1], {"txHash": transfer(ALICE, 1, BOB, 10).hash})
        # The refusals were counted under "invalid".
        self.assertIn(b'aitnode_txs_total{result="refused",type="invalid"}', self.node.metrics.render())

    def test_undecodable_path(self):
        for path in (b"/rpc/getReceipt/%ff", b"/rpc/getReceipt/%ED%A0%80", b"/rpc/getBalance/%c3",
                     b"/%ff", b"/rpc/%ff/x", b"/admin/%fe"):
            resp = self.successResultOf(self.http.request("GET", b"http://127.0.0.1" + path))
            content = self.successResultOf(self.http.content(resp))
            self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"application/json"], (path, content))
            self.assertEqual((resp.code, json.loads(content)["error"]["code"]), (400, "bad_path"), path)
        # A percent-encoded valid UTF-8 path still routes.
        self.refused("GET", "/rpc/getReceipt/%C3%A9", 404, "not_found")

    def test_undecodable_host(self):
        self.refused("GET", "/rpc/getSupply", 400, "bad_host", headers={b"Host": [b"\xff\xfe"]})


class AddPeerTests(RPCTestBase):
    """POST /admin/peers/add refuses every address it cannot dial with
    bad_peer_addr (found by tests/test_fuzz_rpc.py: "ws://" was a 500)."""

    def setUp(self):
        super().setUp()
        from twisted.internet.testing import MemoryReactorClock

        from aitnode.crypto import KeyPair
        from aitnode.p2p import P2P

        self.rpc.p2p = P2P(self.node, KeyPair(bytes(range(32))), MemoryReactorClock())

    def test_bad_addresses(self):
        for addr in ["ws://", "wss://", "ws://:7070", "ws://unix:/tmp/x.sock", "ws://host:99999/p2p/ws",
                     "ws://host:-1/", "ws://host:port/", "ws://a=b:1/", "ws://ho st:1/", "ws://[::1]:7070/p2p/ws",
                     "ws://h\u00e9:1/", "ws://\ud800:1/", "ws://user:pw@host:1/", "ws://host:1/#frag", "http://nope",
                     "", 5, None, ["ws://host:1"]]:
            self.refused("POST", "/admin/peers/add", 400, "bad_peer_addr", {"addr": addr}, headers=AUTH)
        self.assertEqual(self.rpc.p2p.outgoing, {})

    def test_good_addresses(self):
        for addr in ["ws://127.0.0.1:7071/p2p/ws", "wss://node-1.example.org:443/p2p/ws", "ws://peer/p2p/ws"]:
            self.assertEqual(self.ok("POST", "/admin/peers/add", {"addr": addr}, headers=AUTH), {"addr": addr, "added": True})
        self.assertEqual(sorted(self.rpc.p2p.outgoing), sorted(["ws://127.0.0.1:7071/p2p/ws", "wss://node-1.example.org:443/p2p/ws", "ws://peer/p2p/ws"]))


class DeepNestingTests(RPCTestBase):
    """JSON nested close to Python's recursion limit parsed, then broke
    whatever walked it next: a 500 at depths 936 to 945, a window only two
    or three levels wide per route and field, so every depth is tried."""

    def test_every_depth_is_a_4xx(self):
        w = wire(transfer(ALICE, 1, BOB, 5))
        for n in list(range(60, 900, 50)) + list(range(900, 1000)):
            nested = "[" * n + "1" + "]" * n
            bodies = [
                ("/rpc/sendTx", json.dumps(dict(w, chain_id="@")).replace('"@"', nested)),
                ("/rpc/sendTxs", "[" + json.dumps(dict(w, payload="@")).replace('"@"', '{"to": %s}' % nested) + "]"),
                ("/rpc/estimateFee", json.dumps(dict(w, payload="@")).replace('"@"', nested)),
                ("/admin/paramSet", '{"key": %s, "value": 1}' % nested),
            ]
            for path, body in bodies:
                got, out = self.call("POST", path, raw=body.encode(), headers=AUTH)
                if path == "/rpc/sendTxs" and got == 200:
                    out = out["results"][0]
                    got = 400
                self.assertEqual(got, 400, (n, path, out))
                self.assertIn(out["error"]["code"], ("malformed_json", "wrong_type", "bad_param", "wrong_chain",
                                                     "bad_address", "unknown_field", "missing_field"), (n, path))
        self.assertEqual(len(self.node.mempool), 0)


class FinalityRouteTests(RPCTestBase):
    """GET /rpc/getAuthorities and the finality fields of getHead and getTx."""

    def four(self):
        """This node as authority A0 of four (epoch_length 4), and a Builder
        making blocks elsewhere that it imports."""
        self.node = make_node(self, doc=doc(), key=A0)
        self.rpc, self.http = make_rpc(self.node)
        src = make_node(self, doc=doc(), key=None)
        return Builder(src)

    def import_(self, block):
        self.node.pipeline.import_block(block, [])

    def test_get_authorities(self):
        b = self.four()
        members = [{"address": k.address, "public_key": k.public_key.hex(), "jailed": False} for k in KEYS]
        self.assertEqual(self.ok("GET", "/rpc/getAuthorities"),
                         {"height": 1, "epoch": 0, "quorum": 3, "authorities": members})
        for _ in range(4):
            self.import_(b.block(by=A1))
        # Height 5 opens epoch 1; block 6 carries evidence that jails A3 from block 7 on.
        mine = b.block(by=A3)
        self.import_(mine)
        self.import_(b.block(by=A2, evidence=[double_proposal(b.chain, A3, 5)]))
        jailed = [dict(m, jailed=m["address"] == A3.address) for m in members]
        self.assertEqual(self.ok("GET", "/rpc/getAuthorities"),
                         {"height": 7, "epoch": 1, "quorum": 3, "authorities": jailed})
        self.assertEqual(self.ok("GET", "/rpc/getAuthorities?height=7")["authorities"], jailed)
        # A past height: the set in effect for that block.
        self.assertEqual(self.ok("GET", "/rpc/getAuthorities?height=6"),
                         {"height": 6, "epoch": 1, "quorum": 3, "authorities": members})
        self.assertEqual(self.ok("GET", "/rpc/getAuthorities?height=1")["height"], 1)
        self.refused("GET", "/rpc/getAuthorities?height=8", 404, "not_found")  # not known yet
        for bad in ("0", "-1", "x", "1.5", "", "%C2%B2", "1" * 21):
            self.refused("GET", "/rpc/getAuthorities?height=" + bad, 400, "bad_height")

    def test_get_block_shows_votes_evidence_and_the_set(self):
        b = self.four()
        self.import_(b.block(by=A1))
        self.import_(b.block(by=A3))
        voted = b.block(by=A1, voters=(A1, A2, A3), evidence=[double_proposal(b.chain, A3, 2)])
        self.import_(voted)
        out = self.ok("GET", "/rpc/getBlock/3")
        self.assertEqual(out["votes"], voted["votes"])
        self.assertEqual([v["voter"] for v in out["votes"]], sorted(k.address for k in (A1, A2, A3)))
        self.assertEqual(out["evidence"], voted["evidence"])
        self.assertEqual(out["evidence"][0]["kind"], "proposal")
        self.assertNotIn("authorities", out)
        self.assertEqual(self.ok("GET", "/rpc/getBlock/3?full=true")["votes"], voted["votes"])
        # Block 4 carries the set (A3 jailed), as does the first block of each epoch.
        self.import_(b.block(by=A1))
        out = self.ok("GET", "/rpc/getBlock/4")
        self.assertEqual([m["jailed"] for m in out["authorities"]], [False, False, False, True])
        self.assertEqual(self.ok("GET", "/rpc/getBlock/1")["authorities"],
                         [{"address": k.address, "public_key": k.public_key.hex(), "jailed": False} for k in KEYS])
        self.assertEqual(self.ok("GET", "/rpc/getBlock/0")["votes"], [])

    def test_get_tx_finalized(self):
        t = transfer(ALICE, 1, BOB, 10)
        self.send(t)
        self.assertNotIn("finalized", self.ok("GET", "/rpc/getTx/" + t.hash))  # pending
        self.node.pipeline.propose()
        self.assertIs(self.ok("GET", "/rpc/getTx/" + t.hash)["finalized"], False)
        # One authority: block 2 justifies block 1, block 3 finalizes it.
        self.node.clock.advance(0.01)
        self.node.pipeline.propose()
        self.assertIs(self.ok("GET", "/rpc/getTx/" + t.hash)["finalized"], False)
        self.node.clock.advance(0.01)
        self.node.pipeline.propose()
        self.assertIs(self.ok("GET", "/rpc/getTx/" + t.hash)["finalized"], True)
        head = self.ok("GET", "/rpc/getHead")
        self.assertEqual(head["finalized"], {"height": 1, "hash": self.node.store.hash_at(1)})
        self.assertEqual(head["justified"], {"height": 2, "hash": self.node.store.hash_at(2)})

    def test_get_head_with_four_authorities(self):
        b = self.four()
        self.import_(b.block(by=A1))
        self.import_(b.block(by=A1, voters=(A1, A2)))  # two votes of four: nothing justified
        head = self.ok("GET", "/rpc/getHead")
        genesis = {"height": 0, "hash": self.node.chain.genesis.hash}
        self.assertEqual((head["justified"], head["finalized"]), (genesis, genesis))
        self.import_(b.block(by=A1, voters=(A1, A2, A3)))  # three: block 2 justified
        self.import_(b.block(by=A1, voters=KEYS))  # block 3 justified, 2 finalized
        head = self.ok("GET", "/rpc/getHead")
        self.assertEqual(head["height"], 4)
        self.assertEqual(head["justified"], {"height": 3, "hash": self.node.store.hash_at(3)})
        self.assertEqual(head["finalized"], {"height": 2, "hash": self.node.store.hash_at(2)})
