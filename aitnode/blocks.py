"""The block format: header fields, block hash and tx_root.

Block header: {"chain_id", "parent", "height", "timestamp" (ms),
"proposer", "tx_root", "state_root", "votes_root", "evidence_root",
"authorities_hash"}; block hash = sha256(canonical(header)); the proposer
signs the 32 hash bytes.  See docs/protocol.md.
"""

from aitnode.encoding import canonical, canonical_unchecked, merkle_root, sha256_hex

HEADER_FIELDS = frozenset((
    "chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root",
    "votes_root", "evidence_root", "authorities_hash",
))

# The size of a block (docs/protocol.md 10.4), the measure max_block_bytes
# bounds: per transaction, its canonical wire form (the bytes hashed for
# its txHash) plus its txHash as text in the block's list; per claim, its
# txHash again and its attestation's canonical bytes.  A block as peers
# exchange it, {"block", "txs"} in a "block" or "blocks" message, takes at
# most ENTRY_OVERHEAD bytes more (header, sig, map keys, CBOR heads).
TX_HASH_BYTES = 66  # canonical bytes of 64 hex characters: 0x78 0x40, then the text
ENTRY_OVERHEAD = 4096


def tx_bytes(tx, attestation=None):
    """What one transaction (and a claim's attestation) adds to its block's size."""
    n = tx.size + TX_HASH_BYTES
    if attestation is not None:
        n += TX_HASH_BYTES + len(canonical_unchecked(attestation))
    return n


def block_bytes(txs, attestations=None):
    """The size of a block of txs (parsed Transactions) with these attestations."""
    attestations = attestations or {}
    return sum(tx_bytes(tx, attestations.get(tx.hash)) for tx in txs)


def block_hash(header):
    return sha256_hex(canonical(header))


def tx_leaf(tx_hash, attestation=None):
    """A transaction's tx_root leaf input: its hash, or for a claim the
    hash of [txHash, attestation], so the block hash covers the attestation."""
    if attestation is None:
        return tx_hash
    return sha256_hex(canonical([tx_hash, attestation]))


def tx_root(tx_hashes, attestations=None):
    attestations = attestations or {}
    return merkle_root([tx_leaf(h, attestations.get(h)) for h in tx_hashes])
