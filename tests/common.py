"""Shared test fixtures: fixed keys, a genesis, and an in-process node."""

import hashlib
import json

import cbor2

from twisted.internet.task import Clock
from treq.testing import StubTreq

from aitnode.crypto import KeyPair
from aitnode.genesis import Genesis, make_genesis
from aitnode.node import compose
from aitnode.rpc import RPC
from aitnode.tx import sign_tx
from aitnode.web import make_web_server

CHAIN_ID = "ait-test"
ADMIN_TOKEN = "test-admin-token-0123456789"


def key(n):
    """A fixed key per small integer n (never a real secret)."""
    return KeyPair(bytes([n % 256, n // 256]) + bytes(30))


AUTHORITY = key(1)
ALICE = key(2)
BOB = key(3)
CAROL = key(4)
COORDINATOR = key(5)
ESCROW = key(6)
MINER = key(7)
GENESIS_BALANCE = 10**12


def genesis_doc(faucet=True, accounts=None, authorities=(AUTHORITY,), **params):
    """A genesis at timestamp 0 (a Clock's start) whose turns are 10 ms
    apart unless block_interval_ms says otherwise."""
    p = {
        "block_interval_ms": 10,
        "faucet": faucet,
        "coordinator": {"address": COORDINATOR.address, "public_key": COORDINATOR.public_key.hex()},
        "escrow": ESCROW.address,
    }
    p.update(params)
    if accounts is None:
        accounts = [(ALICE.address, GENESIS_BALANCE), (BOB.address, 10**6)]
    return make_genesis(CHAIN_ID, list(authorities), accounts, p, timestamp=0)


def make_node(testcase, doc=None, key=AUTHORITY, clock=None, mempool=None, verifier=None, **kw):
    """A Node (node.compose, as twistd builds it) on a fresh LMDB folder
    under the test's temp dir, its time on a Clock."""
    node = compose(testcase.mktemp(), Genesis(doc or genesis_doc()), clock or Clock(), key=key,
                   mempool=mempool, verifier=verifier, **kw)
    testcase.addCleanup(node.store.close)
    return node


def make_rpc(node, admin_token=ADMIN_TOKEN, **kw):
    """(rpc, StubTreq) serving node in process, through the real Site/Root."""
    rpc = RPC(node, admin_token=admin_token, **kw)
    site = make_web_server(rpc, Clock())
    return rpc, StubTreq(site.resource)


def transfer(sender, nonce, to, amount, fee=1000, chain_id=CHAIN_ID):
    return sign_tx(sender, chain_id, "TRANSFER", nonce, fee, {"to": to.address if hasattr(to, "address") else to, "amount": amount})


def wire(tx):
    """The JSON form a client sends (without chain_id)."""
    w = tx.to_wire()
    del w["chain_id"]
    return w


def dumps(obj):
    return json.dumps(obj).encode()


def payload_size(payload):
    return len(cbor2.dumps(payload, canonical=True))


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def state_dump(store):
    """Every raw state entry of a store, for comparing two states."""
    with store.env.begin(db=store._db["state"]) as t:
        return dict(t.cursor())


def built_node(testcase, extra_ini=""):
    """tap.build's service tree (not started) for a node on a fresh folder
    with the test genesis; its LMDB is closed in cleanup."""
    import os

    from aitnode.config import config_from_string
    from aitnode.tap import build

    d = os.path.abspath(testcase.mktemp())
    os.makedirs(d)
    with open(os.path.join(d, "genesis.json"), "w") as f:
        json.dump(genesis_doc(), f)
    cfg = config_from_string(
        f"[node]\nchain_id = {CHAIN_ID}\ngenesis = genesis.json\n[verifier]\nworkers = 0\n" + extra_ini, d, environ={})
    top = build(cfg, Clock())
    testcase.addCleanup(top.node.store.close)
    return top


def edited(obj, changes, drop=None):
    """A copy of the map obj with changes applied; a value that is drop
    deletes its key."""
    out = dict(obj)
    for k, v in changes.items():
        if v is drop:
            del out[k]
        else:
            out[k] = v
    return out
