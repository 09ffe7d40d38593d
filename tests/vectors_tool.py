"""Rebuild the test vectors and RPC examples of docs/protocol.md with the
node's own code.

    PYTHONPATH=. python -m tests.vectors_tool          # rewrite docs/protocol.md
    PYTHONPATH=. python -m tests.vectors_tool --check  # exit 1 if anything would change

Each vector below is built from fixed seeds and the description beside it
in the document, with aitnode's genesis, chain, evidence and finality code
(tests/test_protocol_vectors.py then checks every value, and
tests/independent_client.py reproduces them from the text alone).  The
JSON block after ``<!-- example: NAME -->`` is the answer of a node in
process (aitnode.node.compose) holding the vectors' chain.  Hashes in the
document are never typed by hand: change the builder and run this.
"""

import hashlib
import json
import re
import sys
import tempfile

from twisted.internet.task import Clock

from aitnode import evidence as E, finality as F, params as P, receipts
from aitnode.blocks import block_bytes, block_hash, tx_leaf
from aitnode.chain import Chain
from aitnode.consensus import change_id
from aitnode.crypto import KeyPair
from aitnode.encoding import canonical, sha256_hex
from aitnode.genesis import Genesis
from aitnode.node import compose
from aitnode.p2p import P2P, auth_bytes, encode
from aitnode import jmt
from aitnode.steps import run_steps
from aitnode.store import Store
from aitnode.tx import sign_tx
from tests.test_protocol_vectors import DOC, _VECTOR

CID = "ait-vector"
T0 = 1_700_000_000_000  # the genesis timestamp of every vector chain (ms)
ZERO = "0" * 64


def seeded(label):
    return KeyPair(hashlib.sha256(label.encode()).digest())


def label_hash(label):
    return hashlib.sha256(label.encode()).hexdigest()


AUTHORITY = seeded("aitnode vector authority")
AUTHORITY_B = seeded("aitnode vector authority b")
SENDER = seeded("aitnode vector 1")
RECEIVER = seeded("aitnode vector 2")
MINER = seeded("aitnode vector miner")
COORDINATOR = seeded("aitnode vector coordinator")
ESCROW = seeded("aitnode vector escrow")
TREASURY = seeded("aitnode vector treasury")


def member(k):
    return {"address": k.address, "public_key": k.public_key.hex()}


def key_json(label, k):
    return {"seed_of": f'sha256("{label}")', "private_key": k.seed.hex(), "public_key": k.public_key.hex(),
            "address": k.address}


def entries_of(store, namespaces):
    out = [[ns, k, v] for ns in namespaces for k, v in store.entries(ns)]
    if len(out) != store.count_entries():
        raise AssertionError("the state has entries outside " + ", ".join(namespaces))
    return sorted(out, key=lambda e: (e[0], e[1]))


class Scratch:
    """Stores in one temporary folder, closed at the end."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="aitnode-vectors-")
        self.closers = []
        self.n = 0

    def path(self):
        self.n += 1
        return f"{self.dir.name}/{self.n}"

    def chain(self, genesis):
        store = Store(self.path())
        self.closers.append(store.close)
        return Chain(store, genesis)

    def node(self, genesis, key, seconds):
        node = compose(self.path(), genesis, Clock(), key=key)
        node.clock.advance(seconds)
        self.closers.append(node.store.close)
        return node

    def close(self):
        for c in reversed(self.closers):
            c()
        self.dir.cleanup()


def build(chain, txs, key, timestamp, votes=(), evidence=(), attestations=None):
    block, records, view, failed = run_steps(chain.build_steps(
        txs, key, timestamp, attestations=attestations, votes=votes, evidence=evidence))
    if failed:
        raise AssertionError(f"a vector transaction failed: {failed}")
    chain.commit(block, records, view)
    return block, records


# -- the vectors -------------------------------------------------------------

def min_fee_vector():
    cases = [
        ({"base_fee": 10, "fee_per_byte": 1}, "TRANSFER", {"to": RECEIVER.address, "amount": 12345}),
        ({"base_fee": 100, "fee_per_byte": 3}, "TRANSFER", {"to": RECEIVER.address, "amount": 2**40}),
        ({"base_fee": 100, "fee_per_byte": 3}, "MINT", {"to": RECEIVER.address, "amount": 7}),
        ({"base_fee": 100, "fee_per_byte": 3}, "AUTHORITY_UPDATE",
         {"action": "add", "address": AUTHORITY_B.address, "public_key": AUTHORITY_B.public_key.hex()}),
    ]
    out = []
    for params, ttype, payload in cases:
        raw = canonical(payload)
        out.append({"params": params, "type": ttype, "payload": payload, "payload_cbor": raw.hex(),
                    "payload_size": len(raw), "min_fee": P.min_fee(params, ttype, len(raw))})
    return {"cases": out}


def genesis_doc():
    return {
        "chain_id": CID,
        "timestamp": T0,
        "authorities": [member(AUTHORITY)],
        "accounts": [{"address": SENDER.address, "balance": 1000000}, {"address": RECEIVER.address, "balance": 0}],
        "params": {"faucet": True, "base_fee": 10},
    }


def genesis_vector():
    doc = genesis_doc()
    g = Genesis(doc)
    entries = [[ns, k, v] for ns, k, v in g.entries]
    first = entries[0]
    return {
        "genesis_json": doc,
        "entries": entries,
        "first_entry_cbor": canonical(first).hex(),
        "first_entry_key_hash": jmt.key_hash(first[0], first[1]).hex(),
        "first_entry_value_hash": jmt.value_hash(first[2]).hex(),
        "first_entry_leaf": jmt.leaf_hash(jmt.key_hash(first[0], first[1]), jmt.value_hash(first[2])).hex(),
        "authorities_cbor": canonical(g.members).hex(),
        "header": g.header,
        "header_cbor": canonical(g.header).hex(),
        "hash": g.hash,
    }


def state_tree_vector():
    """A small tree: its root after each step, and proofs of membership
    and absence (docs/protocol.md 11.2 and 11.3)."""
    entries = [["acct", f"key {i}", [i * 100, i]] for i in range(6)] + [["param", "base_fee", 10]]
    nodes = {}
    steps = []
    root = None
    for version, batch in enumerate((entries[:1], entries[1:], [["acct", "key 3", None]])):
        up = jmt.TreeUpdate(nodes.get, version)
        ups = sorted((jmt.key_hash(ns, k), None if v is None else jmt.value_hash(v) + canonical(v)) for ns, k, v in batch)
        up.run(root, ups)
        nodes.update(up.nodes)
        root = up.root
        steps.append({"set": batch, "root": up.root_hash().hex()})

    def proof(ns, key):
        leaf, siblings, value = jmt.prove(nodes.get, root, jmt.key_hash(ns, key))
        return {"namespace": ns, "key": key, "key_hash": jmt.key_hash(ns, key).hex(),
                "value_cbor": None if value is None else value.hex(),
                "proof": jmt.encode_proof(leaf, siblings).hex()}
    return {
        "empty_root": jmt.EMPTY.hex(),
        "steps": steps,
        "proofs": [proof("acct", "key 1"), proof("param", "base_fee"), proof("acct", "key 3"), proof("acct", "nobody")],
    }


def transfer_tx():
    return sign_tx(SENDER, CID, "TRANSFER", 1, 68, {"to": RECEIVER.address, "amount": 12345})


def block1_txs():
    return [transfer_tx(), sign_tx(AUTHORITY, CID, "MINT", 1, 0, {"to": RECEIVER.address, "amount": 500})]


BLOCK1_TIME = T0 + 10_000


def block1_vector(scratch):
    chain = scratch.chain(Genesis(genesis_doc()))
    txs = block1_txs()
    block, _ = build(chain, txs, AUTHORITY, BLOCK1_TIME)
    return {
        "txs": [wire(tx) for tx in txs],
        "tx_hashes": [tx.hash for tx in txs],
        "proposer_seed": hashlib.sha256(b"aitnode vector authority").hexdigest(),
        "entries_after": entries_of(chain.store, ("acct", "authkey", "chain", "param")),
        "header": block["header"],
        "hash": block["hash"],
        "sig": block["sig"],
        "votes": block["votes"],
        "evidence": block["evidence"],
        "authorities": block["authorities"],
        "block_bytes": block_bytes(txs),
    }


def wire(tx):
    w = tx.to_wire()
    del w["chain_id"]
    return w


def claim_genesis_doc():
    return {
        "chain_id": CID,
        "timestamp": T0,
        "authorities": [member(AUTHORITY)],
        "accounts": [{"address": SENDER.address, "balance": 1000000}],
        "params": {
            "mint_per_unit": 1003,
            "treasury_ratio_bps": 250,
            "escrow": ESCROW.address,
            "treasury": TREASURY.address,
            "coordinator": member(COORDINATOR),
        },
    }


def claim_parts():
    payment = sign_tx(SENDER, CID, "TRANSFER", 1, 68, {"to": ESCROW.address, "amount": 6000})
    fields = dict(receipt_id="rcpt-0001", job_id="job_42", client_addr=SENDER.address, miner_addr=MINER.address,
                  compute_units=7, price=5000, output_hash=label_hash("output of job_42"),
                  client_payment_tx=payment.hash)
    payload = receipts.sign_claim(MINER, CID, **fields)
    g = Genesis(claim_genesis_doc())
    fee = P.min_fee(g.params, receipts.CLAIM, len(canonical(payload)))
    claim = sign_tx(MINER, CID, receipts.CLAIM, 1, fee, payload)
    att = receipts.sign_attestation(COORDINATOR, CID, receipts.attestation_request(payload))
    return g, payment, claim, att


def claim_chain(chain, payment, claim, att):
    b1, _ = build(chain, [payment], AUTHORITY, T0 + 10_000)
    b2, records = build(chain, [claim], AUTHORITY, T0 + 20_000, attestations={claim.hash: att})
    return b1, b2, records


def claim_vector(scratch, old):
    """The claim vector: its parts that depend on the block format are
    rebuilt; the rest (keys, signatures of the payment, claim and
    attestation) are rebuilt too and must equal what the document holds."""
    g, payment, claim, att = claim_parts()
    chain = scratch.chain(g)
    b1, b2, records = claim_chain(chain, payment, claim, att)
    payload = claim.payload
    params = g.params
    mint, coord_cut, treasury_cut = receipts.settlement(payload, params)
    signed = dict({k: v for k, v in att.items() if k != "sig"}, chain_id=CID)
    miner_signed = dict({k: payload[k] for k in receipts.MINER_SIGNED}, chain_id=CID)
    out = {
        "chain_id": CID,
        "keys": {name: key_json(f"aitnode vector {name}", k) for name, k in
                 (("miner", MINER), ("coordinator", COORDINATOR), ("escrow", ESCROW), ("treasury", TREASURY))},
        "genesis_json": claim_genesis_doc(),
        "genesis_hash": g.hash,
        "payment": {"wire": wire(payment), "tx_hash": payment.hash},
        "pay_entry": ["pay", payment.hash, {"client": SENDER.address, "amount": 6000, "claimed": ""}],
        "miner_signed": miner_signed,
        "miner_signed_cbor": canonical(miner_signed).hex(),
        "miner_sign_bytes": receipts.miner_sign_bytes(payload, CID).hex(),
        "miner_sig": payload["miner_sig"],
        "claim": {"wire": wire(claim), "tx_hash": claim.hash},
        "attestation_request": receipts.attestation_request(payload),
        "attestation_signed": signed,
        "attestation_signed_cbor": canonical(signed).hex(),
        "attestation_sign_bytes": receipts.attestation_sign_bytes(att, CID).hex(),
        "attestation": att,
        "leaf_input": tx_leaf(claim.hash, att),
        "leaf": b2["header"]["tx_root"],
        "block2_bytes": block_bytes([claim], b2["attestations"]),
        "block1": {"header": b1["header"], "hash": b1["hash"], "sig": b1["sig"], "authorities": b1["authorities"]},
        "block2": {"header": b2["header"], "hash": b2["hash"], "sig": b2["sig"], "attestations": b2["attestations"]},
        "settlement": {
            "params": {"mint_per_unit": params["mint_per_unit"], "coordinator_ratio_bps": params["coordinator_ratio_bps"],
                       "treasury_ratio_bps": params["treasury_ratio_bps"], "treasury_set": True},
            "compute_units": payload["compute_units"],
            "price": payload["price"],
            "mint": mint,
            "coordinator_cut": coord_cut,
            "treasury_cut": treasury_cut,
            "miner_paid": payload["price"] + mint,
            "fee": claim.fee,
            "miner_net": payload["price"] + mint - claim.fee,
            "supply_total_after": sum(chain.store.entry("chain", "supply").values()),
        },
        "receipt": records[0][1]["result"],
        "entries_after": entries_of(chain.store, ("acct", "authkey", "chain", "param", "pay", "rcpt")),
    }
    # What signatures and keys make must not have moved: only block data may.
    for name in ("keys", "payment", "miner_signed", "miner_sig", "claim", "attestation", "leaf_input", "leaf"):
        if old is not None and old.get(name) != out[name]:
            raise AssertionError(f"claim vector: {name} changed; the builder does not match the document")
    return out


def peer_auth_vector(old):
    g = Genesis(genesis_doc())
    a, b = seeded("aitnode vector node a"), seeded("aitnode vector node b")
    ch_a, ch_b = label_hash("aitnode vector challenge a"), label_hash("aitnode vector challenge b")

    class Fake:
        chain = type("C", (), {"chain_id": CID, "head": staticmethod(lambda: (0, g.hash)), "genesis": g})()
        node_id = a.public_key.hex()

    hello = P2P.hello(Fake, ch_a)
    b_id, a_id = b.public_key.hex(), a.public_key.hex()
    signed = {"chain_id": CID, "challenge": ch_a, "node_id": b_id}
    sig_b = b.sign(auth_bytes(CID, ch_a, b_id)).hex()
    out = {
        "chain_id": CID,
        "genesis": g.hash,
        "node_a": key_json("aitnode vector node a", a),
        "node_b": key_json("aitnode vector node b", b),
        "challenge_a": ch_a,
        "challenge_b": ch_b,
        "hello_a": hello,
        "hello_a_frame": encode("hello", hello).hex(),
        "auth_b_signed": signed,
        "auth_b_signed_cbor": canonical(signed).hex(),
        "auth_b_bytes": auth_bytes(CID, ch_a, b_id).hex(),
        "auth_b_sig": sig_b,
        "auth_b_frame": encode("auth", {"sig": sig_b}).hex(),
        "auth_a_bytes": auth_bytes(CID, ch_b, a_id).hex(),
        "auth_a_sig": a.sign(auth_bytes(CID, ch_b, a_id)).hex(),
        "locator": old["locator"],
    }
    return out


def evidence_vector():
    k = AUTHORITY
    blk = lambda label: label_hash(f"aitnode vector block {label}")  # noqa: E731
    first = F.sign_vote(k, CID, 7, blk(7), 6, blk(6))
    headers = [{"chain_id": CID, "parent": blk(6), "height": 7, "timestamp": ts, "proposer": k.address,
                "tx_root": ZERO, "state_root": label_hash("aitnode vector state"), "votes_root": ZERO,
                "evidence_root": ZERO, "authorities_hash": label_hash("aitnode vector authorities")}
               for ts in (T0 + 70_000, T0 + 71_000)]
    built = {
        "double_vote": E.vote_evidence(first, F.sign_vote(k, CID, 7, blk("7b"), 6, blk(6))),
        "surround_vote": E.vote_evidence(F.sign_vote(k, CID, 9, blk(9), 5, blk(5)), first),
        "double_proposal": E.proposal_evidence(*(x for hd in headers for x in (hd, k.sign(bytes.fromhex(block_hash(hd))).hex()))),
    }
    out = {"chain_id": CID, "offender": k.address}
    for name, ev in built.items():
        w = ev.to_wire()
        item = {}
        if name == "double_proposal":
            item["block_hashes"] = [block_hash(w["a"]["header"]), block_hash(w["b"]["header"])]
        else:
            item["leaves"] = [sha256_hex(canonical(w["a"])), sha256_hex(canonical(w["b"]))]
        item.update(wire=w, cbor=canonical(w).hex(), id=ev.id)
        out[name] = item
    block = E.block_evidence(built.values())
    out["block_ids"] = [sha256_hex(canonical(w)) for w in block]
    out["evidence_root"] = E.evidence_root(block)
    return out


# The authority_set chain: epochs of 2 blocks, turns 1 s apart.
AUTH_PARAMS = {"block_interval_ms": 1000, "epoch_length": 2}


def authority_set_doc():
    return {"chain_id": CID, "timestamp": T0, "authorities": [member(AUTHORITY)], "params": dict(AUTH_PARAMS)}


def authority_set_vector(scratch):
    a, b = AUTHORITY, AUTHORITY_B
    g = Genesis(authority_set_doc())
    chain = scratch.chain(g)
    change = {"action": "add", "address": b.address, "public_key": b.public_key.hex()}
    update = sign_tx(a, CID, "AUTHORITY_UPDATE", 1, 0, change)
    blocks, receipts_ = [], {}
    ts = T0
    hashes = {0: g.hash}

    def step(height, txs, key, after, votes=(), evidence=()):
        nonlocal ts
        ts += after
        block, records = build(chain, txs, key, ts, votes=votes, evidence=evidence)
        if block["header"]["timestamp"] != ts or block["header"]["height"] != height:
            raise AssertionError(f"block {height} is not stamped as planned")
        hashes[height] = block["hash"]
        for h, rec in records:
            receipts_[h] = rec["result"]
        blocks.append({"block": block, "txs": [tx.to_wire() for tx in txs]})  # a block entry (Peer protocol)
        return block

    def vote(k, height, source):
        return F.sign_vote(k, CID, height, hashes[height], source, hashes[source]).to_wire()

    step(1, [update], a, 1000)
    after_1 = entries_of(chain.store, ("acct", "authkey", "authupd", "chain", "param"))
    step(2, [], a, 1000, votes=[vote(a, 1, 0)])
    step(3, [], a, 3000, votes=[vote(a, 2, 1)])  # b is in turn at height 3; a backs it up (rank 1)
    b_other = F.sign_vote(b, CID, 3, label_hash("aitnode vector block 3b"), 2, hashes[2])
    double = E.vote_evidence(F.parse_vote(vote(b, 3, 2)), b_other).to_wire()
    step(4, [], a, 1000, votes=F.block_votes([F.parse_vote(vote(k, 3, 2)) for k in (a, b)]), evidence=[double])
    step(5, [], a, 1000, votes=[vote(a, 4, 3)])
    return {
        "chain_id": CID,
        "authority_b": key_json("aitnode vector authority b", b),
        "genesis_json": authority_set_doc(),
        "genesis_hash": g.hash,
        "change": change,
        "change_cbor": canonical(change).hex(),
        "change_id": change_id(change),
        "update_tx_hash": update.hash,
        "update_receipt": receipts_[update.hash],
        "entries_after_1": after_1,
        "blocks": blocks,
        "entries_after": entries_of(chain.store, ("acct", "authkey", "authupd", "chain", "evid", "param")),
    }


# -- RPC examples: a node in process holding the vectors' chain ------------------

def rpc_examples(scratch):
    out = {}
    node = scratch.node(Genesis(genesis_doc()), AUTHORITY, BLOCK1_TIME / 1000)
    txs = block1_txs()
    block, _ = build(node.chain, txs, AUTHORITY, BLOCK1_TIME)
    q = node.queries
    out["getTx"] = q.get_tx(txs[0].hash)
    out["getBlock"] = q.get_block(1)
    out["getHead"] = q.get_head()
    out["getParams"] = q.get_params()
    out["getHeaders"] = q.get_headers(0, 2)
    out["getTxProof"] = q.get_tx_proof(txs[1].hash)
    g, payment, claim, att = claim_parts()
    node = scratch.node(g, AUTHORITY, 0)
    b1, b2, _ = claim_chain(node.chain, payment, claim, att)
    q = node.queries
    out["getReceipt"] = q.get_receipt("rcpt-0001")
    out["getTxClaim"] = q.get_tx(claim.hash)
    out["getBlockClaim"] = q.get_block(2, full=True)
    return out


# -- writing the document -----------------------------------------------------

WIDTH = 120


def dumps(value, indent=0, prefix=""):
    """JSON with small containers on one line, others one member a line."""
    flat = json.dumps(value)
    if not isinstance(value, (dict, list)) or not value or indent + len(prefix) + len(flat) <= WIDTH:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 2, json.dumps(k) + ': ')}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dumps(v, indent + 2) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def replace_vector(text, name, value):
    block = f"```json vector:{name}\n{dumps(value)}\n```"
    pattern = re.compile(rf"^```json vector:{name}\n.*?\n```$", re.M | re.S)
    if pattern.search(text) is None:
        raise KeyError(f"no vector {name} in the document")
    return pattern.sub(lambda m: block, text, count=1)


_EXAMPLE = re.compile(r"^<!-- example: ([A-Za-z]+) -->\n```json\n.*?\n```$", re.M | re.S)


def replace_examples(text, examples):
    seen = set()

    def sub(m):
        seen.add(m.group(1))
        return f"<!-- example: {m.group(1)} -->\n```json\n{dumps(examples[m.group(1)])}\n```"

    text = _EXAMPLE.sub(sub, text)
    missing = set(examples) - seen
    if missing:
        raise KeyError(f"examples without a marker in the document: {sorted(missing)}")
    return text


def vectors_from_doc(text):
    return {m.group(1): json.loads(m.group(2)) for m in _VECTOR.finditer(text)}


def rebuild(text):
    old = vectors_from_doc(text)
    scratch = Scratch()
    try:
        new = {
            "min_fee": min_fee_vector(),
            "genesis": genesis_vector(),
            "state_tree": state_tree_vector(),
            "block1": block1_vector(scratch),
            "claim": claim_vector(scratch, old.get("claim")),
            "peer_auth": peer_auth_vector(old["peer_auth"]),
            "evidence": evidence_vector(),
            "authority_set": authority_set_vector(scratch),
        }
        examples = rpc_examples(scratch)
    finally:
        scratch.close()
    for name, value in new.items():
        text = replace_vector(text, name, value)
    return replace_examples(text, examples)


def main(argv):
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    out = rebuild(text)
    if "--check" in argv:
        if out != text:
            print("docs/protocol.md: vectors or examples are out of date (run python -m tests.vectors_tool)")
            return 1
        return 0
    if out != text:
        with open(DOC, "w", encoding="utf-8") as f:
            f.write(out)
        print("docs/protocol.md rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
