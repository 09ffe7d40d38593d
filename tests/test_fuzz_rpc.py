"""The RPC described (docs/openapi.yaml) and attacked (issue 9).

- The OpenAPI document names exactly the routes the code serves: every
  Klein route of aitnode/rpc.py and every fast route, with their methods
  and path parameters, both ways; its schemas are JSON Schemas, and the
  answers the fuzzing gets are checked against them (jsonschema).
- Hypothesis fuzzes every route in process, through StubTreq over the real
  Root with the RPC's resources: JSON values of every type, bodies drawn
  from the document's request schemas (from_schema below), valid
  transactions and claims with fields flipped, replaced or deleted, lone
  surrogates, huge integers, floats, deep nesting, random bytes, odd paths
  and methods.  Every answer must be a success or a 4xx JSON error with a
  code (never a 5xx, never anything but JSON); no request changes the
  chain's state; the block proposed after each example includes only
  transactions the RPC accepted, conserves the supply, and comes at all.

Example counts follow the hypothesis profile (tests/__init__.py:
HYPOTHESIS_PROFILE=ci under tox).
"""

import json
import os
import re
from urllib.parse import quote, quote_from_bytes

import jsonschema
import yaml
from hypothesis import given, settings, strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from aitnode.coordinator import MockCoordinator
from aitnode.crypto import KeyPair
from aitnode.p2p import P2P
from aitnode.receipts import CLAIM, sign_claim
from aitnode.tx import sign_tx
from tests.common import (
    ADMIN_TOKEN, ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, COORDINATOR, ESCROW, GENESIS_BALANCE, MINER,
    genesis_doc, make_node, make_rpc, transfer, wire,
)
from tests.test_rpc_proofs import install_fake_proofs

OPENAPI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
AUTH = {b"Authorization": [b"Bearer " + ADMIN_TOKEN.encode()]}
CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def load_spec():
    with open(OPENAPI, encoding="utf-8") as f:
        return yaml.safe_load(f)


def resolve(spec, node):
    """node with every local $ref replaced by what it names (the document
    has no recursive references)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolve(spec, target)
        return {k: resolve(spec, v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(spec, v) for v in node]
    return node


SPEC = resolve(load_spec(), load_spec())
ERROR_SCHEMA = SPEC["components"]["schemas"]["Error"]


def documented_routes():
    """{(METHOD, template)} of docs/openapi.yaml."""
    return {(m.upper(), path) for path, item in SPEC["paths"].items() for m in item if m in METHODS}


def served_routes(rpc):
    """{(METHOD, template)} the RPC serves: Klein's rules and the fast routes."""
    out = set()
    for rule in rpc.app.url_map.iter_rules():
        template = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        out |= {(m, template) for m in rule.methods - {"HEAD", "OPTIONS"}}
    for path, route in rpc.fast_routes().items():
        out.add((route.method.decode(), path.decode()))
    return out


def operation(method, template):
    return SPEC["paths"][template][method.lower()]


def request_schema(method, template):
    body = operation(method, template).get("requestBody")
    return None if body is None else body["content"]["application/json"]["schema"]


def response_schema(method, template, status):
    responses = operation(method, template)["responses"]
    answer = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    if answer is None:
        return None
    content = answer.get("content", {})
    return content.get("application/json", {}).get("schema")


def from_schema(schema):
    """A strategy for the values a JSON Schema of this document allows.

    Covers the keywords docs/openapi.yaml uses (type, properties, required,
    additionalProperties, enum, const, oneOf, pattern, min/max, lengths,
    items, maxItems, examples).  hypothesis-jsonschema would do this, but
    its last release (0.23.1) fails on objects with current hypothesis.
    """
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    kind = schema.get("type")
    if kind == "integer":
        out = st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    elif kind == "boolean":
        out = st.booleans()
    elif kind == "string":
        if "pattern" in schema:
            out = st.from_regex(schema["pattern"], fullmatch=True)
        else:
            out = st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 40))
    elif kind == "array":
        out = st.lists(from_schema(schema.get("items", {})), max_size=min(schema.get("maxItems", 5), 5))
    elif kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        out = st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            out = st.builds(lambda a, b: {**b, **a}, out, st.dictionaries(st.text(max_size=10), from_schema(extra), max_size=3))
    else:
        out = json_values
    if schema.get("examples"):
        out = st.sampled_from(schema["examples"]) | out
    return out


class DocumentTests(SynchronousTestCase):
    def setUp(self):
        self.rpc, _ = make_rpc(make_node(self))

    def test_every_served_route_is_documented(self):
        missing = sorted(served_routes(self.rpc) - documented_routes())
        self.assertEqual(missing, [], f"served but not in docs/openapi.yaml: {missing}")

    def test_every_documented_route_is_served(self):
        extra = sorted(documented_routes() - served_routes(self.rpc))
        self.assertEqual(extra, [], f"in docs/openapi.yaml but not served: {extra}")

    def test_path_parameters_match(self):
        for path, item in SPEC["paths"].items():
            names = set(re.findall(r"{([^}]+)}", path))
            for method, op in item.items():
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                self.assertEqual(declared, names, f"{method.upper()} {path}")

    def test_every_operation_documents_refusals(self):
        for method, template in documented_routes():
            op = operation(method, template)
            self.assertIn("200", op["responses"], (method, template))
            self.assertEqual(op["responses"]["4XX"]["content"]["application/json"]["schema"], ERROR_SCHEMA)
            self.assertTrue(op.get("operationId"), (method, template))

    def test_schemas_are_json_schemas(self):
        for name, schema in SPEC["components"]["schemas"].items():
            jsonschema.Draft202012Validator.check_schema(schema)
        for method, template in documented_routes():
            for schema in (request_schema(method, template), response_schema(method, template, 200)):
                if schema is not None:
                    jsonschema.Draft202012Validator.check_schema(schema)

    def test_error_codes_in_the_document_are_snake_case(self):
        jsonschema.validate({"error": {"code": "bad_text", "message": "x"}}, ERROR_SCHEMA)
        for bad in ({"error": {"code": "Bad", "message": "x"}}, {"error": {"code": "x"}}, {"error": {"code": "x", "message": ""}},
                    {"error": {"code": "x", "message": "y"}, "more": 1}):
            self.assertRaises(jsonschema.ValidationError, jsonschema.validate, bad, ERROR_SCHEMA)


# -- strategies -------------------------------------------------------------

SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\ud83d", "\ude00\ud83d"]
FIELD_NAMES = ["type", "sender", "nonce", "fee", "payload", "pubkey", "sig", "chain_id", "to", "amount", "key",
               "value", "address", "addr", "receipt_id", "job_id", "client_addr", "miner_addr", "compute_units",
               "price", "output_hash", "client_payment_tx", "miner_pubkey", "miner_sig"]
ADDRESSES = [k.address for k in (ALICE, BOB, CAROL, AUTHORITY, ESCROW, MINER, COORDINATOR)]

text_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(SURROGATES + ADDRESSES + FIELD_NAMES + ["", "TRANSFER", "MINT", "PARAM_UPDATE", CLAIM, CHAIN_ID,
                                                           "base_fee", "ws://127.0.0.1:1/p2p/ws", "ab" * 32, "cd" * 64]),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), st.sampled_from(SURROGATES), st.text(max_size=5)),
    st.text(min_size=120, max_size=300),
)
int_values = st.one_of(
    st.integers(min_value=-3, max_value=2**64 + 3),
    st.sampled_from([0, 1, 2**63, 2**64 - 1, 2**64, -(2**64), 10**30, -1]),
    st.integers(min_value=10**40, max_value=10**60),
)
scalars = st.one_of(st.none(), st.booleans(), int_values, st.floats(allow_nan=False, allow_infinity=False), text_values)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(FIELD_NAMES) | text_values, kids, max_size=4),
    max_leaves=16,
)

RAW_BODIES = [
    b"", b"{", b"[", b"null", b"NaN", b'{"fee": NaN}', b'{"a": Infinity}', b'{"a": 1, "a": 2}', b"\xff\xfe",
    b"\xef\xbb\xbf{}", b'"\\ud800"', b'{"type": "\\udfff"}', b"[" * 5000 + b"]" * 5000, b"{\"a\":" * 3000 + b"1" + b"}" * 3000,
    b"1" * 5000, b"-" + b"9" * 4000, b"1e999999", b"0.1", b"[" + b"1," * 2000 + b"1]", b"\x00", b'"' + b"a" * 70000 + b'"',
]


def deep(n, inner="1"):
    return "[" * n + inner + "]" * n


@st.composite
def mutated(draw, bases):
    """A valid wire object with one to three edits: a field deleted,
    replaced by any JSON value, added, or its text changed by a character."""
    obj = json.loads(json.dumps(draw(st.sampled_from(bases))))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = obj
        if isinstance(obj.get("payload"), dict) and draw(st.booleans()):
            target = obj["payload"]
        if not target:
            break
        name = draw(st.sampled_from(sorted(target)))
        edit = draw(st.sampled_from(["delete", "replace", "add", "flip", "chain_id", "nest"]))
        if edit == "delete":
            del target[name]
        elif edit == "replace":
            target[name] = draw(json_values)
        elif edit == "add":
            target[draw(st.sampled_from(FIELD_NAMES) | text_values)] = draw(json_values)
        elif edit == "flip" and isinstance(target[name], str) and target[name]:
            i = draw(st.integers(min_value=0, max_value=len(target[name]) - 1))
            ch = draw(st.sampled_from(["0", "f", "A", "\u00e9", "\ud800", ""]))
            target[name] = target[name][:i] + ch + target[name][i + 1:]
        elif edit == "chain_id":
            obj["chain_id"] = draw(st.sampled_from([CHAIN_ID, "other", "", "\ud800"]))
        elif edit == "nest":
            target[name] = json.loads(deep(draw(st.integers(min_value=1, max_value=400))))
    return obj


@st.composite
def deep_body(draw, bases, batch=False):
    """A valid wire object with one member (or a payload member) replaced by
    arrays or objects nested 60 to 1100 deep, as raw JSON text."""
    obj = json.loads(json.dumps(draw(st.sampled_from(bases))))
    target = obj["payload"] if draw(st.booleans()) else obj
    target[draw(st.sampled_from(sorted(target)))] = "\x00deep"
    # Most depths near Python's recursion limit (1000), where a parse that
    # succeeds leaves no room for the next walker.
    n = draw(st.integers(min_value=60, max_value=1100) | st.integers(min_value=880, max_value=1000))
    inner = draw(st.sampled_from(["1", '"x"', "[]", "{}"]))
    nested = draw(st.sampled_from([deep(n, inner), '{"a":' * n + inner + "}" * n, '[{"a":' * (n // 2) + inner + "}]" * (n // 2)]))
    text = json.dumps(obj).replace(json.dumps("\x00deep"), nested)
    return ("[" + text + "]" if batch else text).encode()


class FakeAttestor:
    """Answers at once with the mock coordinator's signed attestation."""

    def __init__(self, mock):
        self.mock = mock

    async def attest(self, request):
        return self.mock.attest(request)


# Three times the profile's examples (dev 90, ci 300): each costs about a
# millisecond or two, and the three fuzzers run in about 15 s under ci.
FUZZ = settings(settings.default, max_examples=3 * settings.default.max_examples)


class FuzzRPCTests(SynchronousTestCase):
    """One node per test method; hypothesis examples run against it in turn,
    so what one example admitted is there for the next."""

    def setUp(self):
        accounts = [(ALICE.address, GENESIS_BALANCE), (BOB.address, 10**6), (COORDINATOR.address, 10**6)]
        self.node = make_node(self, doc=genesis_doc(accounts=accounts))
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        self.node.attestor = FakeAttestor(mock)
        self.rpc, self.http = make_rpc(self.node, mock_coordinator=mock)
        self.rpc.p2p = P2P(self.node, KeyPair(bytes(range(32))), MemoryReactorClock())
        install_fake_proofs(self, self.node)  # getProof, until issue 11's state tree is merged
        self.accepted = set()
        # ALICE pays the escrow for job_1; the claims below settle it.
        payment = transfer(ALICE, 1, ESCROW, 5000)
        self.node.admission.submit(wire(payment))
        self.node.pipeline.propose()
        self.valid = [wire(transfer(ALICE, n, BOB, 10 + n)) for n in (2, 3, 4)]
        self.valid += [wire(transfer(BOB, 1, CAROL, 7)), transfer(ALICE, 2, CAROL, 5, fee=5000).to_wire()]
        self.valid.append(wire(sign_tx(AUTHORITY, CHAIN_ID, "MINT", 1, 0, {"to": CAROL.address, "amount": 99})))
        self.valid.append(wire(sign_tx(AUTHORITY, CHAIN_ID, "PARAM_UPDATE", 1, 0, {"key": "base_fee", "value": 11})))
        self.claims = []
        for n, (rid, job) in enumerate((("r1", "job_1"), ("r2", "job_1"), ("r3", "job_2"))):
            payload = sign_claim(MINER, CHAIN_ID, receipt_id=rid, job_id=job, client_addr=ALICE.address,
                                 miner_addr=MINER.address, compute_units=3, price=5000,
                                 output_hash="sha256:" + "ab" * 32, client_payment_tx=payment.hash)
            self.claims.append(wire(sign_tx(MINER, CHAIN_ID, CLAIM, 1, 1000, payload)))
        self.bases = self.valid + self.claims
        self.heights = []

    # -- one request --------------------------------------------------------
    def state(self):
        head = self.node.queries.get_head()
        return head, self.node.queries.get_supply(), dict(self.node.store.entries("acct"))

    def call(self, method, path, raw=None, headers=None, template=None):
        """Send one request; check the answer's form; returns (status, JSON or None)."""
        before = self.state()
        url = b"http://127.0.0.1" + (path if isinstance(path, bytes) else path.encode())
        resp = self.successResultOf(self.http.request(method, url, data=raw, headers=headers))
        content = self.successResultOf(self.http.content(resp))
        where = f"{method} {path!r} body={raw[:200]!r}" if raw is not None else f"{method} {path!r}"
        self.assertTrue(200 <= resp.code < 300 or 400 <= resp.code < 500, f"{where}: {resp.code} {content[:300]!r}")
        self.assertEqual(self.state(), before, f"{where} changed the chain's state")
        if method == "HEAD":
            self.assertEqual(content, b"", where)
            return resp.code, None
        ctype = resp.headers.getRawHeaders(b"content-type")
        if resp.code == 200 and template == "/rpc/metrics":
            self.assertTrue(ctype[0].startswith(b"text/plain"), where)
            return resp.code, None
        self.assertEqual(ctype, [b"application/json"], f"{where}: {resp.code} {content[:300]!r}")
        out = json.loads(content)
        if resp.code >= 400:
            jsonschema.validate(out, ERROR_SCHEMA)
            return resp.code, out
        self.assertEqual(resp.code, 200, where)
        if template is not None:
            schema = response_schema(method, template, 200)
            if schema is not None:
                jsonschema.validate(out, schema)
        if isinstance(out, dict):
            if "txHash" in out:
                self.accepted.add(out["txHash"])
            for r in out.get("results", []):  # sendTxs
                if "txHash" in r:
                    self.accepted.add(r["txHash"])
        return resp.code, out

    # -- after each example -------------------------------------------------
    def propose_and_check(self):
        """The proposer goes on; its block holds only accepted transactions,
        and every coin is accounted for."""
        height, _ = self.node.chain.head()
        supply, accounts = self.node.queries.get_supply(), dict(self.node.store.entries("acct"))
        block = self.node.pipeline.propose()
        self.assertIsNotNone(block)
        self.assertEqual(block["header"]["height"], height + 1)
        included = set(block["txs"])
        self.assertLessEqual(included, self.accepted, "a block included a transaction the RPC never accepted")
        after = self.node.queries.get_supply()
        balances = dict(self.node.store.entries("acct"))
        self.assertEqual(after["total"], sum(v[0] for v in balances.values()), "supply total != sum of balances")
        self.assertEqual(after["total"], sum(v for k, v in after.items() if k != "total"))
        minted = 0
        senders = {}
        for h in block["txs"]:
            tx = self.node.queries.get_tx(h)
            self.assertEqual(tx["status"], "included")
            t = tx["tx"]
            senders[t["sender"]] = senders.get(t["sender"], 0) + 1
            if t["type"] == "MINT":
                minted += t["payload"]["amount"]
            elif t["type"] == CLAIM:
                paid = self.node.queries.get_receipt(t["payload"]["receipt_id"])["paid"]
                minted += paid["mint"] + paid["coordinator_cut"] + paid["treasury_cut"]
        self.assertEqual(after["total"] - supply["total"], minted, "supply changed by more than MINTs and claims")
        for address, (balance, nonce) in balances.items():
            self.assertEqual(nonce, accounts.get(address, (0, 0))[1] + senders.get(address, 0), address)
        self.heights.append(height + 1)

    # -- the fuzzers ----------------------------------------------------------
    @FUZZ
    @given(st.data())
    def test_every_route_with_bodies_from_its_schema(self, data):
        routes = sorted(documented_routes())
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            method, template = data.draw(st.sampled_from(routes))
            path = self.fill(data, template)
            body = None
            schema = request_schema(method, template)
            if schema is not None:
                kind = data.draw(st.sampled_from(["schema", "schema", "mutated", "json", "raw"]))
                if kind == "schema":
                    body = json.dumps(data.draw(from_schema(schema))).encode()
                elif kind == "mutated":
                    obj = data.draw(mutated(self.bases))
                    if template == "/rpc/sendTxs":
                        obj = [obj] + data.draw(st.lists(mutated(self.bases) | st.sampled_from(self.bases), max_size=3))
                    body = json.dumps(obj).encode()
                elif kind == "json":
                    body = json.dumps(data.draw(json_values)).encode()
                else:
                    body = data.draw(st.sampled_from(RAW_BODIES) | st.binary(max_size=64))
            headers = data.draw(st.sampled_from([AUTH, AUTH, None, {b"Authorization": [b"Bearer wrong"]},
                                                 {b"Authorization": [b"\xff\xfe"]}]))
            self.call(method, path, body, headers, template)
        self.propose_and_check()

    @FUZZ
    @given(st.data())
    def test_transactions_valid_and_mutated(self, data):
        for _ in range(data.draw(st.integers(min_value=1, max_value=5))):
            route = data.draw(st.sampled_from(["/rpc/sendTx", "/rpc/sendTxs", "/rpc/submitReceipt", "/rpc/estimateFee"]))
            if data.draw(st.integers(min_value=0, max_value=5)) == 0:
                body = data.draw(deep_body(self.bases, batch=route == "/rpc/sendTxs"))
            else:
                items = data.draw(st.lists(st.sampled_from(self.bases) | mutated(self.bases), min_size=1, max_size=4))
                body = json.dumps(items if route == "/rpc/sendTxs" else items[0]).encode()
            self.call("POST", route, body, None, route)
        self.propose_and_check()

    @FUZZ
    @given(st.data())
    def test_odd_paths_methods_and_bytes(self, data):
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW"]))
            path = data.draw(st.one_of(
                st.builds(lambda b: b"/" + quote_from_bytes(b, safe="/").encode(), st.binary(max_size=40)),
                st.builds(lambda t, b: t.encode() + quote_from_bytes(b).encode(),
                          st.sampled_from(["/rpc/", "/rpc/getTx/", "/rpc/getBlock/", "/rpc/getReceipt/", "/admin/",
                                           "/rpc/getBalance/", "/rpc/getHistory/" + ALICE.address + "?limit=", "/p2p/",
                                           "/rpc/getBlock/1?full=", "/rpc/sendTx", "//rpc/getHead", "/rpc/getHead/",
                                           "/rpc/getTxProof/", "/rpc/getProof/", "/rpc/getProof/rcpt/", "/rpc/getHeaders?from=",
                                           "/rpc/getHeaders?from=0&limit=", "/rpc/getProof/acct/x?height="]),
                          st.binary(max_size=30)),
                st.sampled_from([b"/", b"//", b"/rpc", b"/rpc/getHead?", b"/rpc/../admin/paramSet", b"/rpc/getTx/" + b"a" * 5000,
                                 b"/rpc/getBlock/99999999999999999999", b"/rpc/getBlock/-1", b"/rpc/getBlock/%C2%B2",
                                 b"/rpc/getHistory/" + ALICE.address.encode() + b"?limit=%ff", b"/rpc/sendTxs?x"]),
            ))
            body = data.draw(st.none() | st.binary(max_size=80) | st.sampled_from(RAW_BODIES))
            self.call(method, path, body, data.draw(st.sampled_from([None, AUTH])))
        self.propose_and_check()

    def fill(self, data, template):
        """A path for template: its parameters well formed or not."""
        def param(match):
            name = match.group(1)
            kind = data.draw(st.sampled_from(["good", "text", "bytes"]))
            if kind == "good":
                value = data.draw({
                    # What is drawn never depends on the node's state (hypothesis
                    # replays draws): an index, mapped onto it when used.
                    "tx_hash": st.integers(0, 63).map(lambda i: (sorted(self.accepted) or ["ab" * 32])[
                        i % max(1, len(self.accepted))]) | st.text("0123456789abcdef", min_size=64, max_size=64),
                    "ref": st.integers(min_value=0, max_value=3).map(str) | st.just(None).map(
                        lambda _: self.node.queries.get_head()["hash"]),
                    "address": st.sampled_from(ADDRESSES),
                    "receipt_id": st.sampled_from(["r1", "r2", "r3", "nope"]),
                    "ns": st.sampled_from(["acct", "param", "chain", "authkey", "authupd", "evid", "pay", "rcpt"]),
                    "key": st.sampled_from(ADDRESSES + ["supply", "authorities", "finality", "base_fee", "r1", "a/b"]),
                }[name])
                return quote(value, safe="")
            if kind == "text":
                value = data.draw(text_values)
                return quote(value.encode("utf-8", "surrogatepass"), safe="")
            return quote_from_bytes(data.draw(st.binary(max_size=40)), safe="")
        path = re.sub(r"{([^}]+)}", param, template)
        if data.draw(st.booleans()):
            path += data.draw(st.sampled_from(["?full=true", "?full=1", "?limit=1", "?limit=500", "?limit=0", "?limit=x",
                                               "?limit=501", "?full=%ff", "?limit=99999999999999999999999", "?a=%00&b",
                                               "?from=0", "?from=1&limit=256", "?from=x", "?from=0&limit=257",
                                               "?height=0", "?height=1", "?height=99999999999999999999", "?height=-1"]))
        return path.encode()

    def tearDown(self):
        # The proposer kept going through the whole fuzz.
        if self.heights:
            self.assertEqual(self.heights, list(range(self.heights[0], self.heights[0] + len(self.heights))))
