"""The block format: header fields, block hash and tx_root.

Block header: {"chain_id", "parent", "height", "timestamp", "proposer",
"tx_root", "state_root"}; block hash = sha256(canonical(header)); the
proposer signs the 32 hash bytes.  See docs/protocol.md.
"""

from aitnode.encoding import canonical, merkle_root, sha256_hex

HEADER_FIELDS = frozenset(("chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root"))


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
