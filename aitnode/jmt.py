"""The state tree: a Jellyfish Merkle Tree over the state's entries.

Its root hash is that of a binary sparse Merkle tree over 256-bit key
hashes in which a subtree holding one leaf is that leaf (docs/protocol.md
11.2):

    key_hash   = H(canonical([namespace, key]))
    value_hash = H(canonical(value))
    leaf       = H(0x00 || key_hash || value_hash)
    inner      = H(0x01 || left || right)
    EMPTY      = 32 zero bytes (an empty subtree, and the empty state's root)

Stored, it is 16-ary: an internal node covers four bit levels, so a path
from the root to a leaf among a million keys passes about six nodes, each
one LMDB record.  A node is keyed by the version (block height) that
wrote it and its nibble path, so a block's writes are one sequential run
of keys; a node that a later version replaces is recorded as stale from
that version on, so old versions can be pruned and a version undone.

A ``TreeUpdate`` applies one block's changes to the tree of a base
version, reading nodes through a callable and collecting what to write;
``prove`` walks a version's tree for one key; ``verify_proof`` needs
nothing but a root, a key hash, a value hash and the proof bytes.  No I/O
here: store.Store reads and writes the nodes.
"""

import hashlib
import struct

from aitnode.encoding import canonical_unchecked
from aitnode.proof import EMPTY, ProofError, bit, decode_proof, encode_proof, inner_hash, leaf_hash, verify_proof

__all__ = ["EMPTY", "ProofError", "TreeUpdate", "bit", "decode_proof", "encode_proof", "inner_hash", "key_hash",
           "leaf_hash", "node_key", "prove", "root_of", "root_of_entries", "value_hash", "value_hash_raw",
           "verify_proof"]

LEAF, INNER = 0, 1

_sha256 = hashlib.sha256
_ver = struct.Struct(">Q")


def key_hash(ns, key):
    return _sha256(canonical_unchecked([ns, key])).digest()


def value_hash_raw(raw):
    """value_hash of a value given as its canonical bytes."""
    return _sha256(raw).digest()


def value_hash(value):
    return _sha256(canonical_unchecked(value)).digest()


def nibble(kh, d):
    b = kh[d >> 1]
    return b & 15 if d & 1 else b >> 4


def node_key(version, path):
    """The LMDB key of the node at nibble path (bytes, one nibble each)
    written by version: 8 big-endian bytes, then the path."""
    return _ver.pack(version) + path


# -- nodes ---------------------------------------------------------------
# A child reference is (version, is_leaf, hash).  Stored forms:
#   leaf:  0x00 || key_hash || value_hash || the value's canonical bytes
#          (so a proof at any kept version reads the value from its leaf)
#   inner: 0x01 || present bitmap (2) || leaf bitmap (2) || per present
#          child in nibble order: version (8) || hash (32)

def encode_leaf(kh, vh):
    return b"\x00" + kh + vh


def encode_inner(children):
    present = leaves = 0
    parts = []
    for i, c in enumerate(children):
        if c is not None:
            present |= 0x8000 >> i
            if c[1]:
                leaves |= 0x8000 >> i
            parts.append(_ver.pack(c[0]) + c[2])
    return b"\x01" + present.to_bytes(2, "big") + leaves.to_bytes(2, "big") + b"".join(parts)


def decode_inner(raw):
    present = int.from_bytes(raw[1:3], "big")
    leaves = int.from_bytes(raw[3:5], "big")
    out = [None] * 16
    pos = 5
    for i in range(16):
        m = 0x8000 >> i
        if present & m:
            out[i] = (_ver.unpack_from(raw, pos)[0], bool(leaves & m), raw[pos + 8:pos + 40])
            pos += 40
    return out


def inner_node_hash(children, counter=None):
    """The hash of an internal node: the 4-level binary tree over its 16
    slots, a lone leaf standing for its subtree.  counter: a one-item
    list to which the number of hashes computed is added."""
    level = [None if c is None else (c[1], c[2]) for c in children]
    n = 0
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            a, b = level[i], level[i + 1]
            if a is None:
                if b is None or b[0]:
                    nxt.append(b)
                    continue
                a = (False, EMPTY)
            elif b is None:
                if a[0]:
                    nxt.append(a)
                    continue
                b = (False, EMPTY)
            nxt.append((False, _sha256(b"\x01" + a[1] + b[1]).digest()))
            n += 1
        level = nxt
    if counter is not None:
        counter[0] += n
    return level[0][1]


def _groups(items, depth):
    """Split items sorted by key hash into runs sharing nibble depth."""
    out = []
    start = 0
    cur = nibble(items[0][0], depth)
    for i in range(1, len(items)):
        nb = nibble(items[i][0], depth)
        if nb != cur:
            out.append((cur, items[start:i]))
            start, cur = i, nb
    out.append((cur, items[start:]))
    return out


class TreeUpdate:
    """One version's changes to the tree.

    read(node_key) -> the stored bytes of a node of an earlier version
    (KeyError-free: None only for a damaged store).  After ``run``:
    root (the new root reference or None), nodes ({node_key: bytes} to
    write), stale ([node_key] no longer in the tree from this version on)
    and hashes (how many SHA-256 computations it took).
    """

    def __init__(self, read, version):
        self.read = read
        self.version = version
        self.nodes = {}
        self.stale = []
        self.hashes = 0
        self.root = None

    def run_steps(self, base, updates):
        """Apply updates (sorted [(key_hash, payload or None)], one per key;
        payload = value_hash || the value's canonical bytes) to the tree whose root reference is base; a generator that
        yields between subtrees near the root, returning the new root
        reference (also kept as self.root)."""
        if not updates:
            self.root = base
            return base
        self.root = yield from self._update(base, b"", 0, updates)
        return self.root

    def run(self, base, updates):
        steps = self.run_steps(base, updates)
        try:
            while True:
                next(steps)
        except StopIteration as stop:
            return stop.value

    def root_hash(self):
        return EMPTY if self.root is None else self.root[2]

    def _load(self, version, path):
        raw = self.read(node_key(version, path))
        if raw is None:
            raise LookupError(f"state tree node {version}/{path.hex()} is missing (data_dir damaged or pruned)")
        return raw

    def _leaf(self, path, kh, payload):
        """payload: value_hash || the value's canonical bytes."""
        key = node_key(self.version, path)
        self.nodes[key] = b"\x00" + kh + payload
        self.hashes += 1
        return (self.version, True, _sha256(b"\x00" + kh + payload[:32]).digest())

    def _inner(self, path, children):
        self.nodes[node_key(self.version, path)] = encode_inner(children)
        c = [0]
        h = inner_node_hash(children, c)
        self.hashes += c[0]
        return (self.version, False, h)

    def _build(self, path, depth, items):
        """A new subtree at path for items [(kh, payload)] sorted (no deletes)."""
        if not items:
            return None
        if len(items) == 1:
            kh, payload = items[0]
            return self._leaf(path, kh, payload)
        children = [None] * 16
        for nb, group in _groups(items, depth):
            children[nb] = self._build(path + bytes((nb,)), depth + 1, group)
        return self._inner(path, children)

    def _update(self, ref, path, depth, updates):
        if ref is None:
            return self._build(path, depth, [u for u in updates if u[1] is not None])
        if ref[1]:
            raw = self._load(ref[0], path)
            kh, payload = raw[1:33], raw[33:]
            merged = {kh: payload}
            for k, v in updates:
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            if merged == {kh: payload}:
                return ref
            self.stale.append(node_key(ref[0], path))
            return self._build(path, depth, sorted(merged.items()))
        children = decode_inner(self._load(ref[0], path))
        new = list(children)
        shallow = depth < 2
        for nb, group in _groups(updates, depth):
            if shallow:
                new[nb] = yield from self._update(children[nb], path + bytes((nb,)), depth + 1, group)
                yield
            else:
                new[nb] = _run_now(self._update(children[nb], path + bytes((nb,)), depth + 1, group))
        if new == children:
            return ref
        self.stale.append(node_key(ref[0], path))
        present = [(i, c) for i, c in enumerate(new) if c is not None]
        if not present:
            return None
        if len(present) == 1 and present[0][1][1]:
            # A lone leaf below: it moves up to this path.
            i, c = present[0]
            child_path = path + bytes((i,))
            raw = self.nodes.pop(node_key(c[0], child_path), None) if c[0] == self.version else None
            if raw is None:
                raw = self._load(c[0], child_path)
                self.stale.append(node_key(c[0], child_path))
            key = node_key(self.version, path)
            self.nodes[key] = raw
            return (self.version, True, c[2])
        return self._inner(path, new)


def _run_now(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


# -- proofs ----------------------------------------------------------------

def _span(children, lo, size):
    """(is_leaf, hash, index of the lone leaf) of the binary subtree over
    slots lo..lo+size, or None when empty."""
    if size == 1:
        c = children[lo]
        return None if c is None else (c[1], c[2], lo)
    half = size // 2
    a = _span(children, lo, half)
    b = _span(children, lo + half, half)
    if a is None:
        if b is None or b[0]:
            return b
        return (False, inner_hash(EMPTY, b[1]), None)
    if b is None:
        if a[0]:
            return a
        return (False, inner_hash(a[1], EMPTY), None)
    return (False, inner_hash(a[1], b[1]), None)


def prove(read, root, kh):
    """(leaf (kh, vh) or None, siblings [bytes], value bytes or None) for
    key hash kh in the tree whose root reference is root (the value is
    kh's canonical value bytes when the leaf is kh's); read as for
    TreeUpdate."""
    leaf, siblings, raw = _prove(read, root, kh)
    value = raw[65:] if leaf is not None and leaf[0] == kh else None
    return leaf, siblings, value


def _prove(read, root, kh):
    siblings = []
    if root is None:
        return None, siblings, None
    ref, path = root, b""
    depth = 0
    while True:
        raw = read(node_key(ref[0], path))
        if raw is None:
            raise LookupError(f"state tree node {ref[0]}/{path.hex()} is missing")
        if ref[1]:
            return (raw[1:33], raw[33:65]), siblings, raw
        children = decode_inner(raw)
        nb = nibble(kh, depth)
        lo, size = 0, 16
        while size > 1:
            half = size // 2
            right = (nb - lo) >= half
            mine_lo, other_lo = (lo + half, lo) if right else (lo, lo + half)
            other = _span(children, other_lo, half)
            mine = _span(children, mine_lo, half)
            siblings.append(EMPTY if other is None else other[1])
            if mine is None:
                return None, siblings, None
            if mine[0]:
                i = mine[2]
                leaf_raw = read(node_key(children[i][0], path + bytes((i,))))
                if leaf_raw is None:
                    raise LookupError("state tree leaf is missing")
                return (leaf_raw[1:33], leaf_raw[33:65]), siblings, leaf_raw
            lo, size = mine_lo, half
        ref = children[nb]
        path += bytes((nb,))
        depth += 1


# -- whole trees in memory (genesis, tests, tools) -----------------------------

def root_of(pairs):
    """The root (32 bytes) of a tree holding pairs {key_hash: value_hash}
    (or {key_hash: payload}, see TreeUpdate.run_steps)."""
    nodes = {}
    up = TreeUpdate(nodes.get, 0)
    up.run(None, sorted(pairs.items()))
    return up.root_hash()


def root_of_entries(entries):
    """The root of entries [(ns, key, value)]."""
    return root_of({key_hash(ns, k): value_hash(v) for ns, k, v in entries})
