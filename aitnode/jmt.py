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

import functools
import hashlib
import struct

from aitnode.encoding import canonical_unchecked
from aitnode.jmtnode import RANGE, child_version, decode_inner, encode_inner, fix_heap, slot_hash, slots
from aitnode.steps import run_steps
from aitnode.proof import EMPTY, ProofError, bit, decode_proof, encode_proof, inner_hash, leaf_hash, verify_proof

__all__ = ["EMPTY", "ProofError", "TreeUpdate", "bit", "decode_proof", "encode_proof", "inner_hash", "key_hash",
           "leaf_hash", "node_key", "prove", "root_of", "root_of_entries", "value_hash", "value_hash_raw",
           "verify_proof"]

SLICED_FROM = 256  # changed entries from which an update pauses between subtrees near the root

_sha256 = hashlib.sha256
_ver = struct.Struct(">Q")


@functools.lru_cache(maxsize=1 << 16)  # hot: every changed entry of every block (accounts mostly)
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
    written by version (8 big-endian bytes): the two concatenated."""
    return version + path


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


class _Node:
    """An inner node being changed: its slots as loaded, and what changed."""

    __slots__ = ("ref", "path", "present", "leaves", "heap", "versions", "loaded", "changed")

    def __init__(self, ref, path, raw):
        self.ref, self.path = ref, path
        self.present, self.leaves, self.heap, self.versions = decode_inner(raw)
        self.loaded = self.present  # the slots self.versions lists
        self.changed = {}  # slot -> new version bytes, or None when emptied

    def version(self, nb):
        v = self.changed.get(nb)
        return v if v is not None else child_version(self.loaded, self.versions, nb)

    def child(self, nb):
        m = 0x8000 >> nb
        if not self.present & m:
            return None
        return (self.version(nb), bool(self.leaves & m), slot_hash(self.heap, nb))


class TreeUpdate:
    """One version's changes to the tree.

    read(node_key) -> the stored bytes of a node of an earlier version
    (None only for a damaged or pruned store).  After ``run``: root (the
    new root reference or None), nodes ({node_key: bytes} to write),
    stale ([node_key] no longer in the tree from this version on) and
    hashes (how many SHA-256 computations it took).
    """

    def __init__(self, read, version):
        self.read = read
        self.version = version
        self._v = _ver.pack(version)
        self.nodes = {}
        self.stale = []
        self.hashes = 0
        self.root = None

    def run_steps(self, base, updates):
        """Apply updates (sorted [(key_hash, payload or None)], one per key;
        payload = value_hash || the value's canonical bytes) to the tree
        whose root reference is base; a generator that yields between
        subtrees near the root, returning the new root reference (also
        kept as self.root)."""
        try:
            if not updates:
                self.root = base
            elif len(updates) < SLICED_FROM:  # a few entries: one short run, no pauses
                self.root = self._update(base, b"", 0, updates)
            else:
                self.root = yield from self._update_steps(base, b"", 0, updates)
        finally:
            # The reader may hold a read transaction (a reader slot of the
            # LMDB environment): kept here, a branch of many blocks held
            # until its switch would run out of slots.
            self.read = None
        return self.root

    def run(self, base, updates):
        return run_steps(self.run_steps(base, updates))

    def root_hash(self):
        return EMPTY if self.root is None else self.root[2]

    def _load(self, version, path):
        raw = self.read(version + path)
        if raw is None:
            raise LookupError(f"state tree node {version.hex()}/{path.hex()} is missing (data_dir damaged or pruned)")
        return raw

    def _leaf(self, path, kh, payload):
        """payload: value_hash || the value's canonical bytes."""
        self.nodes[self._v + path] = b"\x00" + kh + payload
        self.hashes += 1
        return (self._v, True, _sha256(b"\x00" + kh + payload[:32]).digest())

    def _build(self, path, depth, items):
        """A new subtree at path for items [(kh, payload)] sorted (no deletes)."""
        if len(items) == 1:
            kh, payload = items[0]
            return self._leaf(path, kh, payload)
        present = leaves = 0
        heap = bytearray(31 * 32)
        for nb, group in _groups(items, depth):
            c = self._build(path + bytes((nb,)), depth + 1, group)
            present |= 0x8000 >> nb
            if c[1]:
                leaves |= 0x8000 >> nb
            heap[32 * (15 + nb):32 * (16 + nb)] = c[2]
        self.hashes += fix_heap(heap, present, leaves, slots(present))
        self.nodes[self._v + path] = encode_inner(present, leaves, heap, self._v * len(slots(present)))
        return (self._v, False, bytes(heap[:32]))

    def _update_leaf(self, ref, path, depth, updates):
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
        self.stale.append(ref[0] + path)
        return self._build(path, depth, sorted(merged.items())) if merged else None

    def _update(self, ref, path, depth, updates):
        """The new reference of the subtree at path (plain recursion)."""
        if ref is None:
            items = [u for u in updates if u[1] is not None]
            return self._build(path, depth, items) if items else None
        if ref[1]:
            return self._update_leaf(ref, path, depth, updates)
        node = _Node(ref, path, self._load(ref[0], path))
        for nb, group in _groups(updates, depth):
            self._set(node, nb, self._update(node.child(nb), path + bytes((nb,)), depth + 1, group))
        return self._finish(node)

    def _update_steps(self, ref, path, depth, updates):
        """_update as a generator that yields after each subtree while
        depth < 2 (at most 16 + 256 pauses per block)."""
        if ref is None or ref[1] or depth >= 2:
            return self._update(ref, path, depth, updates)
        node = _Node(ref, path, self._load(ref[0], path))
        for nb, group in _groups(updates, depth):
            new = yield from self._update_steps(node.child(nb), path + bytes((nb,)), depth + 1, group)
            self._set(node, nb, new)
            yield
        return self._finish(node)

    @staticmethod
    def _set(node, nb, new):
        m = 0x8000 >> nb
        old_present = node.present & m
        if new is None:
            if not old_present:
                return
            node.present &= ~m
            node.leaves &= ~m
            node.heap[32 * (15 + nb):32 * (16 + nb)] = EMPTY
            node.changed[nb] = None
            return
        if old_present and slot_hash(node.heap, nb) == new[2] and bool(node.leaves & m) == new[1] \
                and node.version(nb) == new[0]:
            return
        if not old_present:
            node.present |= m
        node.leaves = node.leaves | m if new[1] else node.leaves & ~m
        node.heap[32 * (15 + nb):32 * (16 + nb)] = new[2]
        node.changed[nb] = new[0]

    def _finish(self, node):
        if not node.changed:
            return node.ref
        path = node.path
        self.stale.append(node.ref[0] + path)
        present = node.present
        if not present:
            return None
        if not present & (present - 1) and node.leaves & present:
            # A lone leaf below: it moves up to this path.
            (i,) = slots(present)
            v = node.version(i)
            child_path = path + bytes((i,))
            raw = self.nodes.pop(v + child_path, None) if v == self._v else None
            if raw is None:
                raw = self._load(v, child_path)
                self.stale.append(v + child_path)
            self.nodes[self._v + path] = raw
            return (self._v, True, slot_hash(node.heap, i))
        self.hashes += fix_heap(node.heap, present, node.leaves, node.changed)
        if present == node.loaded:  # same children, some new: splice their versions in
            versions = bytearray(node.versions)
            for i, v in node.changed.items():
                r = 8 * (present >> (16 - i)).bit_count()
                versions[r:r + 8] = v
        else:
            versions = b"".join([node.version(i) for i in slots(present)])
        self.nodes[self._v + path] = encode_inner(present, node.leaves, node.heap, versions)
        return (self._v, False, bytes(node.heap[:32]))


class TreeJob:
    """One version's tree update, as work a driver may hand to another
    process (the node's tree worker): a step generator yields it and
    receives the finished TreeUpdate, or None to run it itself.  Only an
    update whose base is committed in LMDB is offered (the worker reads
    the nodes there)."""

    OFFLOAD_MIN = 256  # changed entries: below, a round trip to the worker costs more than the work

    def __init__(self, version, root, updates):
        self.version, self.root, self.updates = version, root, updates
        self.offload = len(updates) >= self.OFFLOAD_MIN

    def run(self, read):
        tree = TreeUpdate(read, self.version)
        tree.run(self.root, self.updates)
        return tree


# -- proofs ----------------------------------------------------------------

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
            raise LookupError(f"state tree node {ref[0].hex()}/{path.hex()} is missing")
        if ref[1]:
            return (raw[1:33], raw[33:65]), siblings, raw
        present, leaves, heap, versions = decode_inner(raw)
        nb = nibble(kh, depth)
        n = 1
        for level in range(4):
            b = (nb >> (3 - level)) & 1
            mine, other = 2 * n + b, 2 * n + 1 - b
            siblings.append(bytes(heap[32 * (other - 1):32 * other]))
            p = present & RANGE[mine]
            if not p:
                return None, siblings, None
            if not p & (p - 1) and leaves & p:
                (i,) = slots(p)
                leaf_raw = read(node_key(child_version(present, versions, i), path + bytes((i,))))
                if leaf_raw is None:
                    raise LookupError("state tree leaf is missing")
                return (leaf_raw[1:33], leaf_raw[33:65]), siblings, leaf_raw
            n = mine
        ref = (child_version(present, versions, nb), False, slot_hash(heap, nb))
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
