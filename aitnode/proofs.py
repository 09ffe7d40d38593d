"""The read side for clients that check what they are told (issue 11):
headers with their signatures and votes, a transaction's Merkle branch to
its block's tx_root, and a state entry's proof against a block's
state_root.  docs/protocol.md section 12 gives the answers' forms.

Everything here reads the chain through its Store API and changes nothing;
the work and the size of each answer are bounded (the routes are public).
"""

from collections import OrderedDict

import cbor2

from aitnode.blocks import tx_leaf
from aitnode.encoding import merkle_branch, merkle_levels
from aitnode.errors import AitError
from aitnode.httpjson import dump

# The namespaces of state (docs/protocol.md 11.1 and Compute receipts).
STATE_NAMESPACES = ("acct", "param", "chain", "authkey", "authupd", "evid", "pay", "rcpt")

MAX_HEADERS = 256  # headers one getHeaders answer may be asked for
DEFAULT_HEADERS = 64
# getHeaders ends its answer before the header that would take it past
# this many bytes of JSON (it always gives one).  A header with its hash
# and signature is about 820 bytes, a vote about 375, a member of the set
# about 150: 256 headers of a 1,000-authority chain would be 96 MB, far
# too much for one answer.  1 MiB holds 256 headers of a chain of up to 8
# authorities, and 2 headers of a 1,000-authority chain.
MAX_HEADERS_BYTES = 1 << 20
# ... and after the block that takes the txHashes it decoded (each block
# record lists its transactions) past this many: 256 blocks of 100,000
# transactions would be 1.7 GB of CBOR to decode on the reactor.  65,536
# txHashes are about 4.3 MB of CBOR, a few tens of milliseconds.
MAX_HEADERS_TXS = 1 << 16
# Tree levels of recent blocks kept for getTxProof, counted in nodes (32
# bytes each, about 65 with Python's object header): about 8.5 MB, a whole
# block of up to 65,536 transactions.
MAX_CACHED_NODES = 1 << 17


class TreeCache:
    """The tx_root tree levels of recently asked blocks, by block hash (a
    block's content never changes under its hash), least recently used
    first out; at most MAX_CACHED_NODES nodes in all."""

    def __init__(self, max_nodes=MAX_CACHED_NODES):
        self.max_nodes = max_nodes
        self.nodes = 0
        self._levels = OrderedDict()

    def levels(self, block):
        h = block["hash"]
        levels = self._levels.get(h)
        if levels is not None:
            self._levels.move_to_end(h)
            return levels
        atts = block.get("attestations", {})
        levels = merkle_levels([tx_leaf(t, atts.get(t)) for t in block["txs"]])
        size = sum(map(len, levels))
        if size <= self.max_nodes:
            self._levels[h] = levels
            self.nodes += size
            while self.nodes > self.max_nodes:
                _, old = self._levels.popitem(last=False)
                self.nodes -= sum(map(len, old))
        return levels


def headers(chain, start, limit=DEFAULT_HEADERS):
    """getHeaders: blocks start.. of the current chain, at most limit, each
    with the votes for it its child carries; fewer when MAX_HEADERS_BYTES
    or MAX_HEADERS_TXS end the answer first (never none while start is at
    most the head's height)."""
    store = chain.store
    height, head_hash = chain.head()
    out = {"headers": [], "head": {"height": height, "hash": head_hash},
           "finalized": chain.finality().finalized.to_json()}
    if start > height:
        return out
    end = min(start + limit - 1, height)
    size = txs = 0
    block = store.block_at(start)
    for h in range(start, end + 1):
        child = store.block_at(h + 1) if h < height else None
        item = {"header": block["header"], "hash": block["hash"], "sig": block["sig"],
                "votes": child.get("votes", []) if child is not None else []}
        if "authorities" in block:
            item["authorities"] = block["authorities"]
        size += len(dump(item)) + 1
        txs += len(block["txs"])
        if out["headers"] and size > MAX_HEADERS_BYTES:
            break
        out["headers"].append(item)
        if txs >= MAX_HEADERS_TXS:
            break
        block = child
    return out


def tx_proof(chain, tx_hash, cache):
    """getTxProof: an included transaction, its block's header and the
    Merkle branch from its leaf to the header's tx_root; None while the
    transaction is in no block of the current chain."""
    store = chain.store
    rec = store.tx_record(tx_hash)
    if rec is None or store.hash_at(rec["height"]) != rec["block"]:
        return None
    block = store.block_by_hash(rec["block"])
    index = rec["index"]
    if block["txs"][index] != tx_hash:
        raise AssertionError(f"transaction {tx_hash} is not at index {index} of its block")
    att = block.get("attestations", {}).get(tx_hash)
    out = {"tx_hash": tx_hash, "tx": rec["tx"]}
    if att is not None:
        out["attestation"] = att
    out.update({
        "height": rec["height"], "block_hash": block["hash"], "header": block["header"], "sig": block["sig"],
        "index": index, "count": len(block["txs"]), "leaf": tx_leaf(tx_hash, att),
        "branch": merkle_branch(cache.levels(block), index),
    })
    return out


def state_proof(chain, ns, key, height=None):
    """getProof: entry (ns, key) of the state block height left (the latest
    finalized block's by default), with its proof against that block's
    state_root.  AitError unknown_block or state_pruned."""
    if ns not in STATE_NAMESPACES:
        raise AitError("bad_namespace", f"namespace must be one of {', '.join(STATE_NAMESPACES)}")
    store = chain.store
    if height is None:
        height = chain.finality().finalized.height
    block_hash = store.hash_at(height) if height <= chain.head()[0] else None
    if block_hash is None:
        raise AitError("unknown_block", f"no block at height {height}", status=404)
    try:
        raw, proof = store.proof(ns, key, height)
    except KeyError:
        raise AitError("unknown_block", f"no block at height {height}", status=404)
    except LookupError:  # store.Pruned
        raise AitError("state_pruned", f"this node no longer keeps the state tree of height {height}", status=410)
    return {
        "height": height, "block_hash": block_hash, "state_root": store.state_root(height),
        "namespace": ns, "key": key,
        "value": None if raw is None else cbor2.loads(raw),
        "value_cbor": None if raw is None else raw.hex(),
        "proof": proof.hex(),
    }
