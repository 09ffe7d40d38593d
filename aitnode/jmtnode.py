"""The stored forms of the state tree's nodes (jmt.py uses them).

A child reference is (version, is_leaf, hash), version as 8 big-endian
bytes (as in node keys).  Stored forms:
  leaf:  0x00 || key_hash || value_hash || the value's canonical bytes
         (so a proof at any kept version reads the value from its leaf)
  inner: 0x01 || present bitmap (2) || leaf bitmap (2)
         || 30 hashes: its binary tree below its own hash in heap order
            (2, 3 | 4..7 | 8..15 | its 16 slots), EMPTY for an empty part
         || the version of each present child, in slot order (8 each)
Keeping the binary tree's inner hashes lets a block that changes one
child of a node hash 4 times for it, not up to 15, and decoding a node
is slicing at fixed offsets.

In memory an inner node is (present, leaves, heap, versions): heap a bytearray of
its 31 hashes in heap order (1 the node's own, 16 + i slot i's) and
versions the stored version bytes of the present children.
"""

import functools
import hashlib

from aitnode.proof import EMPTY

_sha256 = hashlib.sha256

_HEAP_END = 5 + 30 * 32
_HEAP_OFFSETS = range(5, _HEAP_END, 32)


def _range_masks():
    out = [0] * 32
    for n in range(1, 32):
        level = n.bit_length() - 1
        width = 16 >> level
        start = (n - (1 << level)) * width
        out[n] = ((1 << width) - 1) << (16 - start - width)
    return tuple(out)


RANGE = _range_masks()  # heap index -> the slots below it, as a bitmap


@functools.lru_cache(maxsize=1 << 16)
def slots(mask):
    return tuple(i for i in range(16) if mask & (0x8000 >> i))


def decode_inner(raw):
    """(present, leaves, heap, versions): heap a bytearray of the node's
    31 hashes in heap order (1 = its own, 16 + i = slot i's; heap index n
    at offset 32 * (n - 1)), its own left zero (the parent holds it)."""
    return (raw[1] << 8) | raw[2], (raw[3] << 8) | raw[4], bytearray(EMPTY + raw[5:_HEAP_END]), raw[_HEAP_END:]


def slot_hash(heap, i):
    o = 32 * (15 + i)
    return bytes(heap[o:o + 32])


def child_version(present, versions, i):
    """The version bytes of present slot i, from a node's version list."""
    r = 8 * (present >> (16 - i)).bit_count()
    return versions[r:r + 8]


def encode_inner(present, leaves, heap, versions):
    return b"".join((b"\x01", present.to_bytes(2, "big"), leaves.to_bytes(2, "big"), heap[32:], versions))


def _fix(heap, present, leaves, n):
    """Recompute heap index n from its two halves; 1 if that took a hash."""
    p = present & RANGE[n]
    o = 32 * (n - 1)
    if not p:
        heap[o:o + 32] = EMPTY
    elif not p & (p - 1) and leaves & p:
        c = 64 * n - 32 if p & RANGE[2 * n] else 64 * n
        heap[o:o + 32] = heap[c:c + 32]
    else:
        c = 64 * n - 32
        heap[o:o + 32] = _sha256(b"\x01" + heap[c:c + 64]).digest()
        return 1
    return 0


def fix_heap(heap, present, leaves, dirty):
    """Recompute heap above the slots in dirty (an iterable of slot
    numbers); returns how many hashes that took.  A part with no child is
    EMPTY, a part whose only child is a leaf is that leaf's hash."""
    n_hashes = 0
    if len(dirty) == 1:  # the common case deep in the tree: one path up
        (i,) = dirty
        n = (16 + i) >> 1
        while n:
            n_hashes += _fix(heap, present, leaves, n)
            n >>= 1
        return n_hashes
    nodes = {(16 + i) >> 1 for i in dirty}
    while nodes:
        for n in nodes:
            n_hashes += _fix(heap, present, leaves, n)
        nodes = {n >> 1 for n in nodes if n > 1}
    return n_hashes
