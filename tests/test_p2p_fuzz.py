"""Every peer message type fuzzed in process, at every stage of the
handshake (issue 9).

One authority (the node under attack) and an honest follower share
tests.test_p2p's in-memory network.  For each example hypothesis chooses
a stage (a connection that has said nothing, one that sent its hello but
no auth, one that is ready), a frame (a message of any type with any CBOR
value as data, a mutation of a valid message of each type, random bytes,
a text frame, a CBOR value that is no message) and sends it on a new
connection.  Then:

- nothing escapes onMessage, nothing is logged as an unhandled error or
  a failure (flushLoggedErrors and the log are clean);
- a frame that is garbage, out of its stage, of an unknown type, or whose
  data is not a map closes that connection (and before auth costs only
  its address; an id it merely claimed is never scored);
- the node's head and state do not change, its honest peer stays
  connected with score 0;
- the node still proposes a block, and its follower imports it.

Example counts follow the hypothesis profile (tests/__init__.py).
"""

import cbor2
from hypothesis import given, settings, strategies as st
from twisted.python import log as twisted_log

from aitnode.crypto import KeyPair
from aitnode.p2p import auth_bytes
from aitnode.receipts import CLAIM, attestation_request, sign_attestation, sign_claim
from aitnode.tx import sign_tx

from tests.common import ALICE, BOB, CHAIN_ID, COORDINATOR, ESCROW, MINER, genesis_doc, make_node, state_dump, transfer
from tests.test_p2p import K1, K2, P2PTestCase, RawClient, hashes

KNOWN = ("hello", "auth", "reject", "status", "tx", "block", "get_blocks", "blocks", "vote", "evidence")
STAGES = ("fresh", "hello", "ready", "asked")  # asked: ready, and the node asked it for blocks

# -- values -------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64 - 1, 2**64, 2**200, -(2**64)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.binary(max_size=40),
    st.sampled_from(["", "ab" * 32, "AB" * 32, "zz" * 32, "00" * 64, "\ud800", "x" * 300]),
)
cbor_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-5, 5)), inner, max_size=5),
    ),
    max_leaves=20,
)


def deep(depth):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


odd_values = st.one_of(cbor_values, st.sampled_from([deep(150), deep(390), deep(399)]))


# -- mutations of valid messages ---------------------------------------------

def paths(value, prefix=()):
    """Every path into value's maps and lists (the root included)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def with_change(value, path, op, new):
    """A copy of value with the item at path replaced, deleted or added to."""
    if not path:
        if op == "add" and isinstance(value, dict):
            return dict(value, **{"extra": new})
        if op == "add" and isinstance(value, list):
            return value + [new]
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        out = dict(value)
        if op == "delete" and not rest:
            out.pop(head, None)
        else:
            out[head] = with_change(value[head], rest, op, new)
        return out
    out = list(value)
    if op == "delete" and not rest:
        del out[head]
    else:
        out[head] = with_change(value[head], rest, op, new)
    return out


@st.composite
def mutated(draw, templates):
    """(type, data): a template's data changed at one to three places, sent
    as its own type or, now and then, as another."""
    name = draw(st.sampled_from(sorted(templates)))
    mtype, value = templates[name]
    if draw(st.integers(0, 9)) == 0:
        mtype = draw(st.sampled_from(KNOWN))
        if draw(st.booleans()):
            return mtype, value
    for _ in range(draw(st.integers(1, 3))):
        options = list(paths(value))
        path = options[draw(st.integers(0, len(options) - 1))]
        op = draw(st.sampled_from(["replace", "delete", "add", "edge", "edge"]))
        if op == "edge":  # a value of the same type at its edges: the likeliest to slip through
            old = lookup(value, path)
            new = draw(st.sampled_from(EDGES.get(type(old), EDGES[None])))
            op = "replace"
        else:
            new = draw(odd_values)
        value = with_change(value, path, op, new)
    return mtype, value


EDGES = {
    int: [-1, 0, 2**63, 2**64 - 1, 2**64, 2**200, -(2**64), True, 1.0],
    str: ["", "\x00", "ab" * 32, "AB" * 32, "ab" * 31, "ab" * 33, "x" * 5000, "ait1", 1],
    list: [[], [None], list(range(600)), [[]] * 70, {}],
    dict: [{}, [], {"": None}, None],
    bool: [0, 1, None, "true"],
    None: [None, 0, "", [], {}],
}


def lookup(value, path):
    for key in path:
        value = value[key]
    return value


@st.composite
def frames(draw, templates):
    """(kind, mtype, data, payload bytes, isBinary)."""
    kind = draw(st.sampled_from(["message", "mutated", "mutated", "mutated", "mutated", "bytes", "text", "not_a_message"]))
    if kind == "message":
        mtype = draw(st.one_of(st.sampled_from(KNOWN), st.text(max_size=12), cbor_values))
        data = draw(odd_values)
    elif kind == "mutated":
        mtype, data = draw(mutated(templates))
        kind = "message"
    elif kind == "bytes":
        raw = draw(st.one_of(st.binary(max_size=200), st.sampled_from([
            b"\xa2\x64type\x63\xed\xa0\x80\x64data\xf6",  # a text that is not UTF-8 (a lone surrogate)
            b"\x81" * 1000 + b"\x00",  # nested deeper than the decoder goes
            b"\x9f" * 10,  # indefinite arrays never closed
            b"\xc2\x5a\xff\xff\xff\xff",  # a bignum longer than the frame
        ])))
        return kind, None, None, raw, True
    elif kind == "text":
        return kind, None, None, draw(st.text(max_size=50)).encode("utf-8", "surrogatepass"), False
    else:
        value = draw(st.one_of(cbor_values, st.fixed_dictionaries({"type": st.text(max_size=5)}),
                               st.fixed_dictionaries({"type": cbor_values, "data": cbor_values, "x": scalars})))
        try:
            return kind, None, None, cbor2.dumps(value), True
        except (TypeError, ValueError, cbor2.CBOREncodeError):  # a lone surrogate has no UTF-8 form
            return kind, None, None, cbor2.dumps([1]), True
    try:
        payload = cbor2.dumps({"type": mtype, "data": data})
    except (TypeError, ValueError, cbor2.CBOREncodeError):
        payload = cbor2.dumps({"type": "status", "data": None})
        mtype, data = "status", None
    return kind, mtype, data, payload, True


# -- the node under attack ----------------------------------------------------

class PeerFuzzTests(P2PTestCase):
    def setUp(self):
        super().setUp()
        doc = genesis_doc(authorities=(K1, K2))
        self.auth = self.net.peer(doc=doc, key=K1)
        self.follower = self.net.peer(doc=doc, key=None)
        self.net.connect(self.follower, self.auth)
        payment = transfer(ALICE, 1, ESCROW, 5000)
        self.auth.node.admission.submit(payment.to_wire())
        self.auth.node.pipeline.propose()
        self.auth.node.pipeline.propose()
        self.net.settle()
        self.templates = self.make_templates(doc, payment)
        self.unhandled = []
        twisted_log.addObserver(self.on_log)
        self.addCleanup(twisted_log.removeObserver, self.on_log)

    def on_log(self, event):
        if event.get("isError") or event.get("log_failure") is not None:
            self.unhandled.append(event)

    def make_templates(self, doc, payment):
        """A valid message of each type that changes no head: the blocks are
        another authority's, at heights the node already has."""
        other = make_node(self, doc=doc, key=K2, clock=self.net.clock)
        other.pipeline.propose()
        other.pipeline.propose()
        entry = other.chain.block_entry(1)
        nk = KeyPair.generate()
        hello = dict(self.auth.hello("ab" * 32), node_id=nk.public_key.hex(), height=1,
                     head=other.store.hash_at(1))
        payload = sign_claim(MINER, CHAIN_ID, receipt_id="r1", job_id="job_1", client_addr=ALICE.address,
                             miner_addr=MINER.address, compute_units=3, price=5000, output_hash="out",
                             client_payment_tx=payment.hash)
        claim = sign_tx(MINER, CHAIN_ID, CLAIM, 1, 1000, payload)
        return {  # name: (type, data)
            "hello": ("hello", hello),
            "auth": ("auth", {"sig": nk.sign(b"\x00" * 32).hex()}),
            "reject": ("reject", {"reason": "no"}),
            "status": ("status", {"height": 1, "head": other.store.hash_at(1)}),
            "tx": ("tx", {"tx": transfer(BOB, 1, ALICE, 5).to_wire()}),
            "claim": ("tx", {"tx": claim.to_wire(),
                             "attestation": sign_attestation(COORDINATOR, CHAIN_ID, attestation_request(payload))}),
            "block": ("block", entry),
            "get_blocks": ("get_blocks", {"locator": [self.auth.node.store.hash_at(1), "ee" * 32], "limit": 5}),
            "get_blocks_from": ("get_blocks", {"from": 1, "limit": 2}),
            "blocks": ("blocks", {"blocks": [entry, other.chain.block_entry(2)], "height": 2}),
        }

    def open_at(self, stage):
        """A raw connection to the node, at stage; (link, node key)."""
        link = self.net.connect(None, self.auth, protocol=RawClient)
        nk = KeyPair.generate()
        if stage != "fresh":
            theirs = link.client.first("hello")
            link.client.send("hello", dict(theirs, node_id=nk.public_key.hex(), challenge="cd" * 32,
                                           height=10**6 if stage == "asked" else 0, head=self.auth.node.chain.genesis.hash))
            if stage in ("ready", "asked"):
                link.client.send("auth", {"sig": nk.sign(auth_bytes(CHAIN_ID, theirs["challenge"],
                                                                    nk.public_key.hex())).hex()})
            self.net.settle()
        self.assertFalse(link.closed)
        if stage == "asked":
            self.assertIs(self.auth.sync.syncing, link.server)
        return link, nk

    @settings(max_examples=settings.default.max_examples * 6)
    @given(stage=st.sampled_from(STAGES), data=st.data())
    def test_any_frames_at_any_stage(self, stage, data):
        auth = self.auth
        auth.bans.clear()  # each example starts from a clean slate (one host: 127.0.0.1)
        auth.scores.clear()
        auth.scores[self.follower.node_id] = 0
        sent = data.draw(st.lists(frames(self.templates), min_size=1, max_size=4))
        kind, mtype, data, _, _ = sent[0]
        link, nk = self.open_at(stage)
        head, state = hashes(auth), state_dump(auth.node.store)
        for _, _, _, payload, binary in sent:
            link.client.sendMessage(payload, isBinary=binary)
        self.net.settle()
        self.net.advance(1)  # timers (held blocks, waiting answers) get their turn
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.unhandled, [], [e.get("log_format") for e in self.unhandled])
        self.assertEqual(hashes(auth), head)
        self.assertEqual(state_dump(auth.node.store), state)
        claimed = nk.public_key.hex()
        if stage in ("fresh", "hello"):
            self.assertNotIn(claimed, auth.scores)
            self.assertNotIn(claimed, auth.bans)
            self.assertNotIn(claimed, auth.node.local.peers())
        bad = (kind != "message" or type(mtype) is not str or mtype not in KNOWN
               or (stage in ("fresh", "hello") and mtype not in ("hello", "auth", "reject"))
               or (mtype != "reject" and type(data) is not dict)
               or (stage == "fresh" and mtype == "auth"))
        if bad:  # the first frame closes the connection: what follows is not read
            self.assertTrue(link.closed, (stage, kind, mtype))
        # The honest peer is untouched; the node goes on.
        self.assertEqual(auth.scores[self.follower.node_id], 0)
        self.assertEqual(len(self.follower.conns), 1)
        if not link.closed:
            link.client.dropConnection(abort=True)
            self.net.settle()
        block = auth.node.pipeline.propose()
        self.net.settle()
        self.assertEqual(self.follower.node.chain.head(), (block["header"]["height"], block["hash"]))

    def test_templates_are_valid(self):
        """The mutations start from messages the node takes (the fuzzing
        would find little from invalid ones)."""
        link, nk = self.open_at("ready")
        t = self.templates
        for name in ("status", "get_blocks", "get_blocks_from", "tx", "claim", "block"):
            link.client.send(*t[name])
        self.net.settle()
        self.assertFalse(link.closed)
        self.assertEqual(self.auth.scores[nk.public_key.hex()], 0)
        self.assertEqual(len([m for m in link.client.got if m["type"] == "blocks"]), 2)
        self.assertEqual(len(self.auth.node.mempool), 2)  # the transfer and the claim

    def test_every_field_of_every_message_at_its_edges(self):
        """Systematically: each place in each valid message (every map
        member and list item, and the whole data) replaced by values of
        its own type at their edges and by values of other types, or
        removed, on a connection at the stage where that message counts."""
        auth = self.auth
        generic = [None, [], {}, "", "x", 0, -1, 2**64, 1.5, b"\x00", True]
        cases = []
        for name, (mtype, value) in sorted(self.templates.items()):
            stage = {"hello": "fresh", "auth": "hello", "blocks": "asked"}.get(name, "ready")
            for path in paths(value):
                old = lookup(value, path)
                news = {repr(v): v for v in EDGES.get(type(old), EDGES[None]) + generic}
                for new in news.values():
                    cases.append((stage, mtype, with_change(value, path, "replace", new)))
                if path:
                    cases.append((stage, mtype, with_change(value, path, "delete", None)))
        self.assertGreater(len(cases), 1500)
        link = None
        for n, (stage, mtype, data) in enumerate(cases):
            if link is None or link.closed or stage != link.stage:
                if link is not None and not link.closed:
                    link.client.dropConnection(abort=True)
                    self.net.settle()
                auth.bans.clear()
                auth.scores.clear()
                auth.scores[self.follower.node_id] = 0
                link, _ = self.open_at(stage)
                link.stage = stage
            head = auth.node.chain.head()
            link.client.send(mtype, data)
            self.net.settle()
            self.assertEqual(self.flushLoggedErrors(), [], (mtype, data))
            self.assertEqual(self.unhandled, [], (mtype, data, [e.get("log_format") for e in self.unhandled]))
            self.assertEqual(auth.node.chain.head(), head, (mtype, data))
            if type(data) is not dict and mtype != "reject":
                self.assertTrue(link.closed, (stage, mtype, data))
            if stage != "asked" and not link.closed and mtype != "hello":
                link.stage = None  # a fresh connection for the next one: each case on its own state
            if n % 200 == 0:
                auth.node.pipeline.propose()
                self.net.settle()
                self.assertEqual(self.follower.node.chain.head(), auth.node.chain.head())
        self.assertEqual(auth.scores[self.follower.node_id], 0)
