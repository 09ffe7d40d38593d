"""docs/protocol.md against the implementation.

Every ```json vector:NAME``` block of the document is checked against
aitnode's own code, every error code the code can raise must be in one of
the document's error tables (with the status the code uses), every RPC
route must be mentioned, and the parameter table must match params.SPEC.
So the document and the node cannot drift apart unnoticed.
"""

import ast
import copy
import hashlib
import json
import os
import re
import stat
from types import SimpleNamespace

import cbor2
from twisted.trial.unittest import SynchronousTestCase

from aitnode import blocks, consensus, crypto, encoding, evidence, finality, p2p, params as P, receipts
from aitnode.errors import AitError
from aitnode.p2p.sync import locator
from aitnode.chain import Chain
from aitnode.genesis import Genesis
from aitnode.crypto import KeyPair
from aitnode import jmt
from tests.test_state import reference_root
from aitnode.steps import run_steps
from aitnode.store import Store
from aitnode.tx import parse_tx, sign_tx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "protocol.md")
PACKAGE = os.path.join(ROOT, "aitnode")

_VECTOR = re.compile(r"^```json vector:([a-z0-9_]+)\n(.*?)\n```$", re.M | re.S)
EXPECTED_VECTORS = {"cbor", "keys", "transfer", "min_fee", "merkle", "genesis", "block1", "claim", "peer_auth",
                    "finality_vote", "evidence", "authority_set", "state_tree"}


def doc_text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def load_vectors(text=None):
    """{name: the decoded JSON object} of every vector block in the doc."""
    text = doc_text() if text is None else text
    out = {}
    for m in _VECTOR.finditer(text):
        name = m.group(1)
        if name in out:
            raise ValueError(f"vector {name} appears twice in docs/protocol.md")
        out[name] = json.loads(m.group(2))
    return out


def doc_tables(text, first_header):
    """Rows (lists of cells) of every markdown table whose first header cell is first_header."""
    rows = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        cells = _cells(lines[i])
        if cells and cells[0].lower() == first_header and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            continue
        i += 1
    return rows


def _cells(line):
    line = line.strip()
    if not line.startswith("|"):
        return None
    return [c.strip() for c in line.strip("|").split("|")]


def raised_codes(package=PACKAGE):
    """{code: set of statuses} for every AitError("code", ...) in the package.

    The status is the status= keyword (or third argument), 400 when none
    is given; an AitError built only for .as_json() (its status set by the
    RPC error handler) counts with status None.
    """
    found = {}
    for dirpath, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            parents = {}
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    parents[child] = node
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and _name(node.func) == "AitError"):
                    continue
                if not node.args or not isinstance(node.args[0], ast.Constant) or type(node.args[0].value) is not str:
                    continue
                status = None
                for kw in node.keywords:
                    if kw.arg == "status" and isinstance(kw.value, ast.Constant):
                        status = kw.value.value
                if status is None and len(node.args) > 2 and isinstance(node.args[2], ast.Constant):
                    status = node.args[2].value
                if status is None:
                    parent = parents.get(node)
                    status = None if isinstance(parent, ast.Attribute) and parent.attr == "as_json" else 400
                found.setdefault(node.args[0].value, set()).add(status)
    return found


def _name(func):
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


class DocumentTests(SynchronousTestCase):
    def setUp(self):
        self.text = doc_text()
        self.v = load_vectors(self.text)

    def test_every_vector_present(self):
        self.assertEqual(set(self.v), EXPECTED_VECTORS)

    def test_placeholders_present(self):
        self.assertIn("\n## Compute receipts\n", self.text)
        self.assertIn("\n## Peer protocol\n", self.text)

    def test_sections_are_written(self):
        # The sections replaced the placeholders of the first version.
        self.assertNotIn("Specified with the", self.text)
        receipts_part = self.text[self.text.index("\n## Compute receipts\n"):self.text.index("\n## Peer protocol\n")]
        peers_part = self.text[self.text.index("\n## Peer protocol\n"):self.text.index("\n## Test vectors\n")]
        for code in receipts.ANSWER_FIELDS + receipts.CLAIM_FIELDS:
            self.assertIn(f"`{code}`", receipts_part)
        for mtype in ("hello", "auth", "reject", "status", "tx", "block", "get_blocks", "blocks"):
            self.assertIn(f"`{mtype}`", peers_part)
        for kind, points in p2p.PENALTY.items():
            self.assertIn(f"| *{kind}* | {points} |", peers_part)
        self.assertIn(f"last {p2p.SEEN_SIZE:,} transactions", peers_part)
        self.assertIn(f"banned for {p2p.BAN_SECONDS} s", peers_part)
        self.assertIn(f"reaches {p2p.BAN_SCORE} or lower", peers_part)
        self.assertIn(str(p2p.MAX_MESSAGE), peers_part)
        self.assertIn(f"(code {p2p.CLOSE_PROTOCOL})", peers_part)
        self.assertIn(f"(code {p2p.CLOSE_BANNED})", peers_part)
        self.assertIn(f'"limit": {p2p.SYNC_BATCH}', peers_part)

    def test_peer_limits_documented(self):
        """Every limit of the peer protocol is in its section, with the value
        the code uses."""
        from aitnode.chain import MAX_FUTURE_DRIFT
        from aitnode.p2p import book, held, peers, serve, sync, watch, wire
        peers_part = self.text[self.text.index("\n## Peer protocol\n"):self.text.index("\n## Test vectors\n")]
        limits = peers_part[peers_part.index("### Limits"):]
        limits = limits[:limits.index("\n### ", 4)]
        words = " ".join(peers_part.split())
        for text in (
            f"{serve.ANSWER_BYTES} bytes", f"{wire.SEND_LOW} bytes", f"{wire.SEND_HIGH} bytes",
            f"({sync.MAX_BRANCH_BYTES} bytes)", f"{wire.SEND_DEADLINE} s", f"{MAX_FUTURE_DRIFT // 1000} s",
            f"{held.HELD_BLOCKS} blocks", f"`HOLD_AHEAD` {held.HOLD_AHEAD} s", f"(`SCORE_TTL`, {book.SCORE_TTL} s)",
            f"{book.MAX_SCORES:,} scores", f"{book.MAX_BANS:,} bans", f"{book.MAX_PEER_ROWS:,} rows",
            f"every {book.PRUNE_INTERVAL} s", f"at most {peers.MAX_INBOUND} incoming", f"within {watch.HANDSHAKE_SECONDS} s",
            f"code {wire.CLOSE_FULL}", f"1 to {serve.MAX_LIMIT}", f"at most {serve.MAX_LOCATOR} locator hashes",
        ):
            self.assertTrue(text in words, f"{text!r} is not in the Peer protocol section")
        self.assertEqual(held.HELD_BYTES, 16 * 1024 * 1024)
        self.assertIn("16 MiB", limits)
        for row in ("one message or frame", "incoming peer connections", "time to finish the handshake",
                    "blocks one `get_blocks` asks for", "encoded block entries in one `blocks` answer",
                    "`get_blocks` requests of one peer", "unread output to one peer", "competing branch held while it is fetched",
                    "fork depth", "block timestamp", "gossiped blocks held until their time", "scores, bans, peer table rows"):
            self.assertTrue(f"| {row} |" in limits, f"no row {row!r} in the peer Limits table")

    def test_every_error_code_documented(self):
        rows = doc_tables(self.text, "code")
        self.assertTrue(rows, "no error table (first header cell 'code') in docs/protocol.md")
        table = {}
        for row in rows:
            m = re.fullmatch(r"`([a-z0-9_]+)`", row[0])
            self.assertIsNotNone(m, f"error table row without a `code`: {row}")
            self.assertNotIn(m.group(1), table, f"{m.group(1)} is listed twice")
            table[m.group(1)] = {int(s) for s in re.findall(r"\b[1-5]\d\d\b", row[1])}
        codes = raised_codes()
        self.assertIn("fee_too_low", codes)  # the scan works at all
        missing = sorted(set(codes) - set(table))
        self.assertEqual(missing, [], f"error codes raised in aitnode/ but not in docs/protocol.md: {missing}")
        for code, statuses in sorted(codes.items()):
            for status in statuses - {None}:
                self.assertIn(status, table[code], f"{code} is raised with status {status}; the doc says {table[code]}")
        # The statuses the RPC error handlers set.
        for code, status in (("not_found", 404), ("method_not_allowed", 405), ("internal_error", 500)):
            self.assertIn(status, table[code])

    def test_vectors_and_examples_are_the_nodes(self):
        # tests/vectors_tool.py rebuilds the vectors that depend on the block
        # format and the examples marked <!-- example: NAME --> with the
        # node's code: the document holds exactly what it makes.
        from tests import vectors_tool
        self.assertGreaterEqual(self.text.count("<!-- example: "), 7)
        self.assertEqual(vectors_tool.rebuild(self.text), self.text,
                         "docs/protocol.md is out of date: run PYTHONPATH=. python -m tests.vectors_tool")

    def test_error_codes_are_snake_case(self):
        for code in raised_codes():
            self.assertRegex(code, r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

    def test_every_route_documented(self):
        for dirpath, _, files in os.walk(PACKAGE):
            for name in files:
                if name != "rpc.py":
                    continue
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    source = f.read()
                # Klein routes, and the hot routes served as plain resources.
                routes = re.findall(r'@app\.route\("([^"]+)"', source)
                routes += re.findall(r'b"(/rpc/[A-Za-z]+)": FastRoute', source)
                self.assertIn("/rpc/sendTx", routes)
                for route in routes:
                    prefix = route.split("<")[0].rstrip("/")
                    self.assertIn(prefix, self.text, f"route {route} is not in docs/protocol.md")

    def test_params_table(self):
        rows = {}
        for row in doc_tables(self.text, "name"):
            m = re.fullmatch(r"`([a-z_]+)`", row[0])
            if m and m.group(1) in P.SPEC:
                rows[m.group(1)] = row
        self.assertEqual(set(rows), set(P.SPEC))
        for name, (default, updatable, _) in P.SPEC.items():
            row = rows[name]
            if default is None:
                want = "unset"
            elif type(default) is bool:
                want = "`true`" if default else "`false`"
            else:
                want = str(default)
            self.assertEqual(row[1], want, f"default of {name}")
            self.assertEqual(row[3], "yes" if updatable else "no", f"updatable flag of {name}")
        # the defaults the document states are the ones genesis applies
        self.assertEqual(P.defaults_applied({}), {k: d for k, (d, _, _) in P.SPEC.items() if d is not None})


class VectorTests(SynchronousTestCase):
    def setUp(self):
        self.v = load_vectors()

    def key(self, name):
        return KeyPair(bytes.fromhex(self.v["keys"][name]["private_key"]))

    def test_cbor(self):
        cases = self.v["cbor"]["cases"]
        self.assertGreater(len(cases), 10)
        for case in cases:
            self.assertEqual(encoding.canonical(case["value"]).hex(), case["cbor"], case["value"])

    def test_keys(self):
        keys = self.v["keys"]
        for name in ("authority", "sender", "receiver"):
            kv = keys[name]
            label = re.fullmatch(r'sha256\("(.*)"\)', kv["seed_of"]).group(1)
            self.assertEqual(hashlib.sha256(label.encode()).hexdigest(), kv["private_key"])
            k = self.key(name)
            self.assertEqual(k.public_key.hex(), kv["public_key"])
            self.assertEqual(hashlib.sha256(k.public_key).hexdigest(), kv["pubkey_sha256"])
            self.assertEqual(kv["pubkey_sha256"][:40], kv["address_bytes"])
            self.assertEqual(k.address, kv["address"])
            self.assertEqual(len(kv["address"]), 42)
            self.assertEqual(crypto.address_bytes(kv["address"]).hex(), kv["address_bytes"])
            self.assertTrue(crypto.pubkey_matches(k.public_key, kv["address"]))
        self.assertEqual(crypto.address_from_bytes(bytes(20)), keys["zero_address"])
        self.assertEqual(crypto.address_from_bytes(b"\xff" * 20), keys["ff_address"])
        self.assertEqual(crypto.address_bytes(keys["zero_address"]), bytes(20))

    def test_key_file(self):
        kf = self.v["keys"]["sender_key_file"]
        k = self.key("sender")
        self.assertEqual(k.to_json(), kf)
        path = self.mktemp()
        k.save(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f), kf)
        self.assertEqual(KeyPair.load(path).address, kf["address"])

    def test_transfer(self):
        t = self.v["transfer"]
        k = KeyPair(bytes.fromhex(t["seed"]))
        body = t["body"]
        self.assertEqual(body["sender"], k.address)
        tx = sign_tx(k, t["chain_id"], body["type"], body["nonce"], body["fee"], body["payload"])
        self.assertEqual(tx.body(), body)
        self.assertEqual(encoding.canonical(body).hex(), t["body_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(t["body_cbor"])).hexdigest(), t["sign_bytes"])
        self.assertEqual(tx.sign_hash.hex(), t["sign_bytes"])
        self.assertEqual(tx.sig.hex(), t["sig"])
        wire = tx.to_wire()
        self.assertEqual(wire["chain_id"], t["chain_id"])
        del wire["chain_id"]
        self.assertEqual(wire, t["wire"])
        self.assertEqual(encoding.canonical(tx.to_wire()).hex(), t["hashed_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(t["hashed_cbor"])).hexdigest(), t["tx_hash"])
        self.assertEqual(tx.hash, t["tx_hash"])
        # The node parses the wire form (with or without chain_id) to the same hash.
        for w in (t["wire"], dict(t["wire"], chain_id=t["chain_id"])):
            parsed = parse_tx(json.loads(json.dumps(w)), t["chain_id"])
            self.assertEqual(parsed.hash, t["tx_hash"])
            self.assertTrue(parsed.verify_signature())
        # Signed for this chain only.
        self.assertFalse(parse_tx(t["wire"], "another-chain").verify_signature())
        # Its fee is the minimum under default params.
        self.assertEqual(body["fee"], P.min_fee(P.defaults_applied({}), "TRANSFER", tx.payload_size))

    def test_min_fee(self):
        for case in self.v["min_fee"]["cases"]:
            raw = encoding.canonical(case["payload"])
            self.assertEqual(raw.hex(), case["payload_cbor"])
            self.assertEqual(len(raw), case["payload_size"])
            self.assertEqual(P.min_fee(case["params"], case["type"], len(raw)), case["min_fee"])

    def test_merkle(self):
        m = self.v["merkle"]
        self.assertEqual(m["hashes"], [hashlib.sha256(f"leaf {i}".encode()).hexdigest() for i in range(len(m["hashes"]))])
        self.assertEqual(set(m["roots"]), {"0", "1", "2", "3", "5"})
        for n, root in m["roots"].items():
            self.assertEqual(encoding.merkle_root(m["hashes"][: int(n)]), root)
            self.assertEqual(blocks.tx_root(m["hashes"][: int(n)]), root)
        self.assertEqual(m["roots"]["0"], "0" * 64)

    def test_state_tree(self):
        """Roots after each step, by the documented definition and by the
        tree; each proof verifies, and a proof with any bit flipped does not."""
        st = self.v["state_tree"]
        self.assertEqual(st["empty_root"], "00" * 32)
        state = {}
        nodes, root = {}, None
        for version, step in enumerate(st["steps"]):
            for ns, k, v in step["set"]:
                if v is None:
                    state.pop((ns, k), None)
                else:
                    state[(ns, k)] = v
            self.assertEqual(reference_root([(ns, k, v) for (ns, k), v in state.items()]), step["root"])
            up = jmt.TreeUpdate(nodes.get, version)
            up.run(root, sorted((jmt.key_hash(ns, k), None if v is None else jmt.value_hash(v) + encoding.canonical(v))
                                for ns, k, v in step["set"]))
            nodes.update(up.nodes)
            root = up.root
            self.assertEqual(up.root_hash().hex(), step["root"])
        top = bytes.fromhex(st["steps"][-1]["root"])
        self.assertEqual(len(st["proofs"]), 4)
        for p in st["proofs"]:
            kh = bytes.fromhex(p["key_hash"])
            self.assertEqual(kh, hashlib.sha256(encoding.canonical([p["namespace"], p["key"]])).digest())
            value = state.get((p["namespace"], p["key"]))
            self.assertEqual(p["value_cbor"], None if value is None else encoding.canonical(value).hex())
            vh = None if value is None else jmt.value_hash(value)
            proof = bytes.fromhex(p["proof"])
            jmt.verify_proof(top, kh, vh, proof)
            for i in range(len(proof) * 8):
                bad = bytearray(proof)
                bad[i // 8] ^= 0x80 >> (i % 8)
                self.assertRaises(jmt.ProofError, jmt.verify_proof, top, kh, vh, bytes(bad))

    def test_genesis(self):
        gv = self.v["genesis"]
        g = Genesis(gv["genesis_json"])
        self.assertEqual([[ns, k, v] for ns, k, v in g.entries], gv["entries"])
        first = gv["entries"][0]
        self.assertEqual(encoding.canonical(first).hex(), gv["first_entry_cbor"])
        kh = hashlib.sha256(encoding.canonical(first[:2])).digest()
        vh = hashlib.sha256(encoding.canonical(first[2])).digest()
        self.assertEqual(kh.hex(), gv["first_entry_key_hash"])
        self.assertEqual(vh.hex(), gv["first_entry_value_hash"])
        self.assertEqual(hashlib.sha256(b"\x00" + kh + vh).hexdigest(), gv["first_entry_leaf"])
        self.assertEqual(reference_root(gv["entries"]), gv["header"]["state_root"])
        # The set, in its state entry and hashed into the header.
        members = {(e[0], e[1]): e[2] for e in gv["entries"]}[("chain", "authorities")]
        self.assertEqual(members, [dict(a, jailed=False) for a in gv["genesis_json"]["authorities"]])
        self.assertEqual(encoding.canonical(members).hex(), gv["authorities_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(gv["authorities_cbor"])).hexdigest(), gv["header"]["authorities_hash"])
        self.assertEqual((gv["header"]["votes_root"], gv["header"]["evidence_root"]), ("0" * 64, "0" * 64))
        self.assertEqual(gv["header"]["timestamp"], gv["genesis_json"]["timestamp"])
        self.assertEqual(g.header, gv["header"])
        self.assertEqual(encoding.canonical(g.header).hex(), gv["header_cbor"])
        self.assertEqual(g.hash, gv["hash"])
        # And a node's store agrees.
        store = Store(self.mktemp())
        self.addCleanup(store.close)
        chain = Chain(store, g)
        self.assertEqual(chain.head(), (0, gv["hash"]))
        self.assertEqual(store.block_at(0)["sig"], "")

    def _state(self, store, namespaces=("acct", "authkey", "chain", "param")):
        out = []
        for ns in namespaces:
            for k, value in store.entries(ns):
                out.append([ns, k, value])
        self.assertEqual(len(out), store.count_entries(), f"state has entries outside {'/'.join(namespaces)}")
        return sorted(out, key=lambda e: (e[0], e[1]))

    def test_block1(self):
        b = self.v["block1"]
        g = Genesis(self.v["genesis"]["genesis_json"])
        chain_id = g.chain_id
        proposer = KeyPair(bytes.fromhex(b["proposer_seed"]))
        self.assertEqual(proposer.address, b["header"]["proposer"])
        self.assertEqual(b["txs"][0], self.v["transfer"]["wire"])
        txs = [parse_tx(w, chain_id) for w in b["txs"]]
        self.assertEqual([tx.hash for tx in txs], b["tx_hashes"])
        self.assertTrue(all(tx.verify_signature() for tx in txs))

        store = Store(self.mktemp())
        self.addCleanup(store.close)
        chain = Chain(store, g)
        block, records, view, failed = chain.build_block(txs, proposer, b["header"]["timestamp"])
        self.assertEqual(failed, {})
        self.assertEqual(block["header"], b["header"])
        self.assertEqual(block["hash"], b["hash"])
        self.assertEqual(block["sig"], b["sig"])
        self.assertEqual(block["txs"], b["tx_hashes"])
        self.assertEqual((block["votes"], block["evidence"], block["authorities"]),
                         (b["votes"], b["evidence"], b["authorities"]))
        # Block 1 begins the first epoch: it carries the set, whose hash is in its header.
        self.assertEqual(b["authorities"], {(e[0], e[1]): e[2] for e in self.v["genesis"]["entries"]}[("chain", "authorities")])
        self.assertEqual(b["header"]["authorities_hash"], encoding.sha256_hex(encoding.canonical(b["authorities"])))
        self.assertEqual((b["header"]["votes_root"], b["header"]["evidence_root"]), ("0" * 64, "0" * 64))
        self.assertEqual(blocks.block_bytes(txs), b["block_bytes"])
        self.assertEqual(b["block_bytes"], sum(len(encoding.canonical(tx.to_wire())) + 66 for tx in txs))
        self.assertEqual(b["header"]["tx_root"], encoding.merkle_root(b["tx_hashes"]))
        self.assertEqual(b["header"]["parent"], self.v["genesis"]["hash"])
        self.assertEqual(b["hash"], encoding.sha256_hex(encoding.canonical(b["header"])))
        self.assertTrue(crypto.verify(proposer.public_key, bytes.fromhex(b["sig"]), bytes.fromhex(b["hash"])))
        chain.commit(block, records, view)
        self.assertEqual(self._state(store), sorted(b["entries_after"], key=lambda e: (e[0], e[1])))
        self.assertEqual(reference_root(b["entries_after"]), b["header"]["state_root"])

        # Another node imports the block as given in the document.
        store2 = Store(self.mktemp())
        self.addCleanup(store2.close)
        chain2 = Chain(store2, g)
        given = {"header": b["header"], "hash": b["hash"], "sig": b["sig"], "txs": b["tx_hashes"],
                 "votes": b["votes"], "evidence": b["evidence"], "authorities": b["authorities"]}
        parsed = [parse_tx(w, chain_id) for w in b["txs"]]
        # Without the set it must carry, or stamped before its proposer's turn, it is invalid.
        without = {k: v for k, v in given.items() if k != "authorities"}
        self.assertIn("authority set", self.assertRaises(AitError, chain2.verify_block, without, parsed).message)
        early = dict(b["header"], timestamp=self.v["genesis"]["header"]["timestamp"] + P.SPEC["block_interval_ms"][0] - 1)
        early_hash = blocks.block_hash(early)
        err = self.assertRaises(AitError, chain2.verify_block, dict(given, header=early, hash=early_hash,
                                sig=proposer.sign(bytes.fromhex(early_hash)).hex()), parsed)
        self.assertIn("turn", err.message)
        checked, records2, view2 = chain2.verify_block(given, parsed)
        chain2.commit(checked, records2, view2)
        self.assertEqual(chain2.head(), (1, b["hash"]))
        self.assertEqual(self._state(store2), self._state(store))

    # -- compute receipts ----------------------------------------------------

    def _seeded(self, kv):
        label = re.fullmatch(r'sha256\("(.*)"\)', kv["seed_of"]).group(1)
        seed = hashlib.sha256(label.encode()).digest()
        self.assertEqual(seed.hex(), kv["private_key"])
        k = KeyPair(seed)
        self.assertEqual(k.public_key.hex(), kv["public_key"])
        if "address" in kv:
            self.assertEqual(k.address, kv["address"])
        return k

    def test_claim(self):
        c = self.v["claim"]
        cid = c["chain_id"]
        keys = {name: self._seeded(kv) for name, kv in c["keys"].items()}
        miner, coord = keys["miner"], keys["coordinator"]
        client = self.key("sender")
        authority = self.key("authority")
        g = Genesis(c["genesis_json"])
        self.assertEqual(g.hash, c["genesis_hash"])
        params = P.defaults_applied(c["genesis_json"]["params"])
        self.assertEqual(params["escrow"], keys["escrow"].address)
        self.assertEqual(params["treasury"], keys["treasury"].address)
        self.assertEqual(params["coordinator"], {"address": coord.address, "public_key": coord.public_key.hex()})

        # The escrow payment.
        payment = parse_tx(c["payment"]["wire"], cid)
        self.assertEqual(payment.hash, c["payment"]["tx_hash"])
        self.assertTrue(payment.verify_signature())
        self.assertEqual((payment.sender, payment.payload["to"]), (client.address, params["escrow"]))
        self.assertEqual(c["pay_entry"], ["pay", payment.hash, {"client": client.address, "amount": payment.payload["amount"], "claimed": ""}])

        # The miner's signature.
        wire = c["claim"]["wire"]
        payload = wire["payload"]
        self.assertEqual(c["miner_signed"], dict({k: payload[k] for k in receipts.MINER_SIGNED}, chain_id=cid))
        self.assertEqual(encoding.canonical(c["miner_signed"]).hex(), c["miner_signed_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(c["miner_signed_cbor"])).hexdigest(), c["miner_sign_bytes"])
        self.assertEqual(receipts.miner_sign_bytes(payload, cid).hex(), c["miner_sign_bytes"])
        self.assertEqual(miner.sign(bytes.fromhex(c["miner_sign_bytes"])).hex(), c["miner_sig"])
        fields = {k: payload[k] for k in receipts.MINER_SIGNED}
        self.assertEqual(receipts.sign_claim(miner, cid, **fields), payload)
        self.assertEqual(payload["miner_sig"], c["miner_sig"])
        self.assertEqual(payload["client_payment_tx"], payment.hash)

        # The claim transaction, sent by the miner at the minimum fee.
        tx = sign_tx(miner, cid, receipts.CLAIM, wire["nonce"], wire["fee"], payload)
        w = tx.to_wire()
        del w["chain_id"]
        self.assertEqual(w, wire)
        self.assertEqual(tx.hash, c["claim"]["tx_hash"])
        self.assertEqual(parse_tx(json.loads(json.dumps(wire)), cid).hash, tx.hash)
        self.assertEqual(wire["fee"], P.min_fee(params, receipts.CLAIM, tx.payload_size))

        # The attestation.
        request = receipts.attestation_request(payload)
        self.assertEqual(request, c["attestation_request"])
        att = receipts.sign_attestation(coord, cid, request)
        self.assertEqual(att, c["attestation"])
        signed = dict({k: v for k, v in att.items() if k != "sig"}, chain_id=cid)
        self.assertEqual(signed, c["attestation_signed"])
        self.assertEqual(encoding.canonical(signed).hex(), c["attestation_signed_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(c["attestation_signed_cbor"])).hexdigest(), c["attestation_sign_bytes"])
        self.assertEqual(receipts.attestation_sign_bytes(att, cid).hex(), c["attestation_sign_bytes"])
        receipts.check_attestation(att, payload, params, cid)  # the node's own check passes
        self.assertRaises(AitError, receipts.check_attestation, att, payload, params, "another-chain")

        # The claim's tx_root leaf.
        self.assertEqual(blocks.tx_leaf(tx.hash, att), c["leaf_input"])
        self.assertEqual(encoding.sha256_hex(encoding.canonical([tx.hash, att])), c["leaf_input"])
        self.assertEqual(hashlib.sha256(b"\x00" + bytes.fromhex(c["leaf_input"])).hexdigest(), c["leaf"])
        self.assertEqual(blocks.tx_root([tx.hash], {tx.hash: att}), c["leaf"])
        self.assertEqual(c["block2"]["header"]["tx_root"], c["leaf"])

        # Settlement numbers.
        st = c["settlement"]
        self.assertEqual(st["params"], {
            "mint_per_unit": params["mint_per_unit"], "coordinator_ratio_bps": params["coordinator_ratio_bps"],
            "treasury_ratio_bps": params["treasury_ratio_bps"], "treasury_set": True,
        })
        self.assertEqual((st["compute_units"], st["price"]), (payload["compute_units"], payload["price"]))
        mint, coord_cut, treasury_cut = receipts.settlement(payload, params)
        self.assertEqual((st["mint"], st["coordinator_cut"], st["treasury_cut"]), (mint, coord_cut, treasury_cut))
        self.assertEqual(st["mint"], st["compute_units"] * st["params"]["mint_per_unit"])
        self.assertEqual(st["coordinator_cut"], st["mint"] * st["params"]["coordinator_ratio_bps"] // 10000)
        self.assertEqual(st["treasury_cut"], st["mint"] * st["params"]["treasury_ratio_bps"] // 10000)
        self.assertEqual((st["miner_paid"], st["fee"], st["miner_net"]), (st["price"] + mint, tx.fee, st["price"] + mint - tx.fee))

        # The chain: block 1 holds the payment, block 2 the claim.
        store = Store(self.mktemp())
        self.addCleanup(store.close)
        chain = Chain(store, g)
        b1 = c["block1"]
        block, records, view, failed = chain.build_block([payment], authority, b1["header"]["timestamp"])
        self.assertEqual(failed, {})
        self.assertEqual((block["header"], block["hash"], block["sig"]), (b1["header"], b1["hash"], b1["sig"]))
        chain.commit(block, records, view)
        self.assertEqual(["pay", payment.hash, store.entry("pay", payment.hash)], c["pay_entry"])
        b2 = c["block2"]
        block, records, view, failed = chain.build_block([tx], authority, b2["header"]["timestamp"], attestations={tx.hash: att})
        self.assertEqual(failed, {})
        self.assertEqual((block["header"], block["hash"], block["sig"]), (b2["header"], b2["hash"], b2["sig"]))
        self.assertEqual(block["attestations"], b2["attestations"])
        self.assertEqual(b2["attestations"], {tx.hash: att})
        self.assertEqual(blocks.block_bytes([tx], block["attestations"]), c["block2_bytes"])
        self.assertEqual(c["block2_bytes"], len(encoding.canonical(tx.to_wire())) + 66 + 66 + len(encoding.canonical(att)))
        self.assertEqual(records[0][1]["result"], c["receipt"])
        chain.commit(block, records, view)
        after = self._state(store, ("acct", "authkey", "chain", "param", "pay", "rcpt"))
        self.assertEqual(after, sorted(c["entries_after"], key=lambda e: (e[0], e[1])))
        self.assertEqual(reference_root(c["entries_after"]), b2["header"]["state_root"])
        entries = {(e[0], e[1]): e[2] for e in c["entries_after"]}
        supply = entries[("chain", "supply")]
        balances = sum(v[0] for (ns, _), v in entries.items() if ns == "acct")
        self.assertEqual(sum(supply.values()), balances)
        self.assertEqual(sum(supply.values()), st["supply_total_after"])
        rcpt = entries[("rcpt", payload["receipt_id"])]
        self.assertEqual((rcpt["mint"], rcpt["coordinator_cut"], rcpt["treasury_cut"], rcpt["miner_paid"], rcpt["fee"]),
                         (mint, coord_cut, treasury_cut, st["miner_paid"], tx.fee))
        self.assertEqual(entries[("pay", payment.hash)]["claimed"], payload["receipt_id"])

        # Another node imports both blocks as the document gives them, and
        # refuses block 2 with its attestation changed.
        store2 = Store(self.mktemp())
        self.addCleanup(store2.close)
        chain2 = Chain(store2, g)
        given1 = dict(b1, txs=[payment.hash])
        chain2.commit(*chain2.verify_block(given1, [parse_tx(c["payment"]["wire"], cid)]))
        forged = copy.deepcopy(b2)
        forged["attestations"][tx.hash]["compute_units"] += 1
        forged["txs"] = [tx.hash]
        err = self.assertRaises(AitError, chain2.verify_block, forged, [parse_tx(wire, cid)])
        self.assertIn("tx_root", err.message)
        chain2.commit(*chain2.verify_block(dict(b2, txs=[tx.hash]), [parse_tx(wire, cid)]))
        self.assertEqual(chain2.head(), (2, b2["hash"]))

    # -- the authority set, turns, votes and evidence ------------------------

    def test_authority_set(self):
        av = self.v["authority_set"]
        cid = av["chain_id"]
        a, b = self.key("authority"), self._seeded(av["authority_b"])
        g = Genesis(av["genesis_json"])
        self.assertEqual(g.hash, av["genesis_hash"])
        self.assertEqual((g.params["block_interval_ms"], g.params["epoch_length"]), (1000, 2))
        change = {"action": "add", "address": b.address, "public_key": b.public_key.hex()}
        self.assertEqual(av["change"], change)
        self.assertEqual(encoding.canonical(change).hex(), av["change_cbor"])
        self.assertEqual(consensus.change_id(change), av["change_id"])
        self.assertEqual(encoding.sha256_hex(bytes.fromhex(av["change_cbor"])), av["change_id"])
        update = sign_tx(a, cid, "AUTHORITY_UPDATE", 1, 0, change)
        self.assertEqual(update.hash, av["update_tx_hash"])
        self.assertEqual(P.min_fee(g.params, "AUTHORITY_UPDATE", update.payload_size), 0)

        # The node rebuilds the five blocks as the document describes them.
        store = Store(self.mktemp())
        self.addCleanup(store.close)
        chain = Chain(store, g)
        entries = av["blocks"]
        hashes = {0: g.hash}

        def vote(k, height, source):
            return finality.sign_vote(k, cid, height, hashes[height], source, hashes[source])

        other_3 = hashlib.sha256(b"aitnode vector block 3b").hexdigest()
        plan = [  # (txs, ms after the parent, votes, evidence)
            ([update], 1000, lambda: [], lambda: []),
            ([], 1000, lambda: [vote(a, 1, 0).to_wire()], lambda: []),
            ([], 3000, lambda: [vote(a, 2, 1).to_wire()], lambda: []),
            ([], 1000, lambda: finality.block_votes([vote(a, 3, 2), vote(b, 3, 2)]),
             lambda: [evidence.vote_evidence(vote(b, 3, 2), finality.sign_vote(b, cid, 3, other_3, 2, hashes[2])).to_wire()]),
            ([], 1000, lambda: [vote(a, 4, 3).to_wire()], lambda: []),
        ]
        ts = g.timestamp
        for height, (txs, after, votes, evid) in enumerate(plan, 1):
            ts += after
            block, records, view, failed = run_steps(chain.build_steps(txs, a, ts, votes=votes(), evidence=evid()))
            self.assertEqual(failed, {})
            chain.commit(block, records, view)
            self.assertEqual(chain.block_entry(height), json.loads(json.dumps(entries[height - 1])), f"block {height}")
            hashes[height] = block["hash"]
            if height == 1:
                self.assertEqual(records[0][1]["result"], av["update_receipt"])
                self.assertEqual(self._state(store, ("acct", "authkey", "authupd", "chain", "param")), av["entries_after_1"])
        self.assertEqual(self._state(store, ("acct", "authkey", "authupd", "chain", "evid", "param")), av["entries_after"])

        # The document's story: who carries the set, whose turn, what is justified.
        records_ = [e["block"] for e in entries]
        self.assertEqual([("authorities" in r) for r in records_], [True, False, True, False, True])
        self.assertEqual([len(r["votes"]) for r in records_], [0, 1, 1, 2, 1])
        self.assertEqual([r["header"]["timestamp"] - g.timestamp for r in records_], [1000, 2000, 5000, 6000, 7000])
        self.assertEqual(records_[2]["authorities"], [{"address": k.address, "public_key": k.public_key.hex(), "jailed": False}
                                                      for k in (a, b)])
        self.assertEqual([m["jailed"] for m in records_[4]["authorities"]], [False, True])
        for r in records_:
            self.assertEqual(r["header"]["votes_root"], finality.votes_root(r["votes"]))
            self.assertEqual(r["header"]["evidence_root"], evidence.evidence_root(r["evidence"]))
        final = {(e[0], e[1]): e[2] for e in av["entries_after"]}
        self.assertEqual(final[("chain", "finality")], {"justified": {"height": 3, "hash": hashes[3]},
                                                       "finalized": {"height": 2, "hash": hashes[2]}})
        self.assertEqual(final[("chain", "set_since")], 5)

        # Another node imports the entries as given, and refuses block 3
        # stamped before a's turn (it was b's) or without the set it carries.
        store2 = Store(self.mktemp())
        self.addCleanup(store2.close)
        chain2 = Chain(store2, g)
        for height, e in enumerate(entries, 1):
            txs = [parse_tx(w, cid) for w in e["txs"]]
            if height == 3:
                early = dict(e["block"]["header"], timestamp=e["block"]["header"]["timestamp"] - 1)
                h = blocks.block_hash(early)
                forged = dict(e["block"], header=early, hash=h, sig=a.sign(bytes.fromhex(h)).hex())
                self.assertIn("turn", self.assertRaises(AitError, chain2.verify_block, forged, txs).message)
                bare = {k: v for k, v in e["block"].items() if k != "authorities"}
                self.assertIn("authority set", self.assertRaises(AitError, chain2.verify_block, bare, txs).message)
            chain2.commit(*chain2.verify_block(e["block"], txs))
        self.assertEqual(chain2.head(), (5, hashes[5]))
        self.assertEqual(self._state(store2, ("acct", "authkey", "authupd", "chain", "evid", "param")), av["entries_after"])

    # -- peers ---------------------------------------------------------------

    def test_peer_auth(self):
        pv = self.v["peer_auth"]
        cid, ghash = pv["chain_id"], pv["genesis"]
        self.assertEqual(ghash, self.v["genesis"]["hash"])
        a, b = self._seeded(pv["node_a"]), self._seeded(pv["node_b"])
        a_id, b_id = a.public_key.hex(), b.public_key.hex()
        for name in ("a", "b"):
            self.assertEqual(hashlib.sha256(f"aitnode vector challenge {name}".encode()).hexdigest(), pv[f"challenge_{name}"])

        # A's hello, as the node builds it.
        fake = SimpleNamespace(
            chain=SimpleNamespace(chain_id=cid, head=lambda: (0, ghash), genesis=SimpleNamespace(hash=ghash)),
            node_id=a_id,
        )
        hello = p2p.P2P.hello(fake, pv["challenge_a"])
        self.assertEqual(hello, pv["hello_a"])
        self.assertEqual(p2p.encode("hello", hello).hex(), pv["hello_a_frame"])
        self.assertEqual(encoding.canonical({"type": "hello", "data": hello}).hex(), pv["hello_a_frame"])
        self.assertEqual(cbor2.loads(bytes.fromhex(pv["hello_a_frame"])), {"type": "hello", "data": hello})

        # B proves its id by signing A's challenge.
        self.assertEqual(pv["auth_b_signed"], {"chain_id": cid, "challenge": pv["challenge_a"], "node_id": b_id})
        self.assertEqual(encoding.canonical(pv["auth_b_signed"]).hex(), pv["auth_b_signed_cbor"])
        self.assertEqual(hashlib.sha256(bytes.fromhex(pv["auth_b_signed_cbor"])).hexdigest(), pv["auth_b_bytes"])
        self.assertEqual(p2p.auth_bytes(cid, pv["challenge_a"], b_id).hex(), pv["auth_b_bytes"])
        self.assertEqual(b.sign(bytes.fromhex(pv["auth_b_bytes"])).hex(), pv["auth_b_sig"])
        self.assertEqual(p2p.encode("auth", {"sig": pv["auth_b_sig"]}).hex(), pv["auth_b_frame"])
        self.assertEqual(p2p.auth_bytes(cid, pv["challenge_b"], a_id).hex(), pv["auth_a_bytes"])
        self.assertEqual(a.sign(bytes.fromhex(pv["auth_a_bytes"])).hex(), pv["auth_a_sig"])

        # A's node accepts B's auth as given; with the challenges swapped it does not.
        conn = SimpleNamespace(claimed_id=b_id, challenge=pv["challenge_a"], authed_in=False, remote_id=None)
        p2p.ServerPeer.on_auth(conn, {"sig": pv["auth_b_sig"]}, cid)
        self.assertEqual((conn.authed_in, conn.remote_id), (True, b_id))
        conn = SimpleNamespace(claimed_id=b_id, challenge=pv["challenge_b"], authed_in=False, remote_id=None)
        self.assertRaises(p2p.PeerError, p2p.ServerPeer.on_auth, conn, {"sig": pv["auth_b_sig"]}, cid)
        self.assertIsNone(conn.remote_id)

        # The locator's heights.
        loc = pv["locator"]
        fake = SimpleNamespace(chain=SimpleNamespace(
            store=SimpleNamespace(hash_at=lambda h: h), head=lambda: (loc["head_height"], None)))
        self.assertEqual(locator(fake.chain), loc["heights"])


class ToolTests(SynchronousTestCase):
    """The helpers above find what they should."""

    def test_load_vectors_refuses_duplicates(self):
        text = "```json vector:a\n{}\n```\n\n```json vector:a\n{}\n```\n"
        self.assertRaises(ValueError, load_vectors, text)

    def test_doc_tables(self):
        text = "x\n\n| code | status | meaning |\n|---|---|---|\n| `a` | 400 | m |\n| `b` | 409 | n |\n\nafter\n"
        self.assertEqual(doc_tables(text, "code"), [["`a`", "400", "m"], ["`b`", "409", "n"]])

    def test_raised_codes(self):
        pkg = self.mktemp()
        os.makedirs(pkg)
        with open(os.path.join(pkg, "m.py"), "w") as f:
            f.write(
                "def f():\n"
                "    raise AitError(\n        'one_code', 'x (y)')\n"
                "def g():\n"
                "    raise AitError('two', f'{1}', status=409)\n"
                "def h(r):\n"
                "    return r(AitError('three', 'x').as_json(), 404)\n"
            )
        self.assertEqual(raised_codes(pkg), {"one_code": {400}, "two": {409}, "three": {None}})
