"""block and state: BlockPipeline.propose() (build + apply + commit) in process, by
block size and by the size of the state."""

import os
import random
import shutil
import statistics
import time

from aitnode import crypto
from aitnode.blocks import block_hash
from aitnode.genesis import Genesis
from aitnode.jmt import root_of_entries
from aitnode.tx import sign_tx

from bench.common import (
    CHAIN_ID, FEE, admit, bench_genesis, bench_key, inprocess_node, ms, new_profile, now, target,
)


def timed_propose(node):
    """BlockPipeline.propose() with its build and commit parts timed.

    Returns ((total, build, commit) wall seconds, (total, commit) CPU seconds, block).
    CPU time leaves out waiting for the disk (fsync), and other jobs on the machine.
    """
    chain = node.chain
    parts = {}
    build, commit = chain.build_steps, chain.commit
    cpu = time.process_time

    def tb(*a, **kw):  # BlockPipeline.propose runs Chain.build_steps (a generator) to its end
        t = now()
        try:
            return (yield from build(*a, **kw))
        finally:
            parts["build"] = now() - t

    def tc(*a, **kw):
        t, c = now(), cpu()
        try:
            return commit(*a, **kw)
        finally:
            parts["commit"] = now() - t
            parts["commit_cpu"] = cpu() - c

    chain.build_steps, chain.commit = tb, tc
    try:
        t, c = now(), cpu()
        block = node.pipeline.propose()
        total, total_cpu = now() - t, cpu() - c
    finally:
        del chain.build_steps, chain.commit
    return (total, parts["build"], parts["commit"]), (total_cpu, parts["commit_cpu"]), block


def bench_block(ctx):
    runs = 3 if ctx.quick else 5
    sizes = (1000, 5000)
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, max(sizes) + 1)]
    doc = bench_genesis(authority, [k.address for k in senders])
    node, store = inprocess_node(doc, authority, ctx.store_dir())
    rng = random.Random(11)
    addrs = [k.address for k in senders]
    nonce = {k.address: 0 for k in senders}
    plan = []  # (size, [Transaction]) signed before timing
    for r in range(runs + (1 if ctx.profile else 0)):
        for size in sizes:
            txs = []
            for k in senders[:size]:
                nonce[k.address] += 1
                txs.append(sign_tx(k, CHAIN_ID, "TRANSFER", nonce[k.address], FEE,
                                   {"to": rng.choice(addrs), "amount": 1 + rng.randrange(1000)}))
            plan.append((size, txs))
    times = {s: [] for s in sizes}
    prof = new_profile() if ctx.profile else None
    try:
        for i, (size, txs) in enumerate(plan):
            admit(node, txs)
            extra = i >= runs * len(sizes)  # the profiled round is not timed
            if extra and size == max(sizes):
                prof.enable()
            wall, cpu, block = timed_propose(node)
            if extra:
                prof.disable()
            assert len(block["txs"]) == size, (len(block["txs"]), size)
            if not extra:
                times[size].append(wall + cpu)
    finally:
        store.close()
    if prof is not None:
        path = os.path.join(ctx.tmp, "block.prof")
        prof.dump_stats(path)
        ctx.add_profile(path, "BlockPipeline.propose() of 5,000-transfer blocks, in process")
    rows = []
    for size in sizes:
        t = times[size]
        total = statistics.median(x[0] for x in t)
        rows.append((
            f"block of {size:,} transfers: build + apply + commit",
            f"{ms(total)} median of {len(t)} ({size / total:,.0f} tx/s); CPU {ms(statistics.median(x[3] for x in t))}",
            "- (reported)",
            f"in process, 1 thread, {size:,} distinct senders; build {ms(statistics.median(x[1] for x in t))}, "
            f"commit {ms(statistics.median(x[2] for x in t))} (CPU {ms(statistics.median(x[4] for x in t))}; "
            f"the rest is waiting: fsync, or other jobs holding the CPU)",
        ))
    return rows


class FastAddresses:
    """Valid bech32 ``ait1...`` addresses of random 20-byte values, quickly.

    The BIP-173 polymod is linear over GF(2) in its inputs, so the checksum
    of 32 data groups is a XOR of per-position table entries.  Checked
    against aitnode.crypto.check_address before use.
    """

    def __init__(self, seed=1):
        hrp = crypto._hrp_expand(crypto.HRP)
        length = 32 + 6
        base = crypto._polymod(hrp + [0] * length)
        self.base = base
        self.table = [
            [crypto._polymod(hrp + [0] * i + [v] + [0] * (length - 1 - i)) ^ base for v in range(32)]
            for i in range(32)
        ]
        self.rng = random.Random(seed)
        self.prefix = crypto.HRP + "1"

    def make(self):
        bits = self.rng.getrandbits(160)
        cs = crypto._CHARSET
        table = self.table
        pm = self.base
        chars = []
        for i in range(32):
            d = (bits >> (155 - 5 * i)) & 31
            pm ^= table[i][d]
            chars.append(cs[d])
        pm ^= 1
        for j in range(6):
            chars.append(cs[(pm >> (5 * (5 - j))) & 31])
        return self.prefix + "".join(chars)

    def many(self, n):
        out = [self.make() for _ in range(n)]
        for a in out[:200]:
            crypto.check_address(a)
        return out


def watch_trees(store):
    """A list that gets (nodes written, hashes, bytes written) of the state
    tree for each block the store commits from now on."""
    seen = []
    real = store.commit_block

    def commit_block(block, tx_records, changes, tree, **kw):
        seen.append((len(tree.nodes), tree.hashes, sum(len(k) + len(v) for k, v in tree.nodes.items())))
        return real(block, tx_records, changes, tree, **kw)
    store.commit_block = commit_block
    return seen


def padded_genesis(doc, addresses, balance=1000):
    """Genesis(doc) with funded accounts added to its entries, and its
    header's state root and hash worked out again, as if the genesis file
    had listed them.  (Building a 1M-account genesis.json through
    Genesis() costs minutes of bech32 checks in Python; this is the same
    state.)"""
    g = Genesis(doc)
    g.entries = g.entries + [("acct", a, [balance, 0]) for a in addresses]
    g.header = dict(g.header, state_root=root_of_entries(g.entries).hex())
    g.hash = block_hash(g.header)
    return g


def bench_state(ctx):
    runs = 3 if ctx.quick else 5
    big = 100_000 if ctx.quick else 1_000_000
    sizes = (10_000, big)
    n_senders, per_block = 1000, 1000
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    fast = FastAddresses(seed=5)
    doc = bench_genesis(authority, [k.address for k in senders])
    results = {}
    prof_path = None
    for total_accounts in sizes:
        t_setup = now()
        pad = fast.many(total_accounts - n_senders - 1)
        node, store = inprocess_node(doc, authority, ctx.store_dir(), genesis=padded_genesis(doc, pad))
        trees = watch_trees(store)
        try:
            entries = store.count_entries()
            setup = now() - t_setup
            rng = random.Random(13)
            plan = []
            profiled = ctx.profile and total_accounts == big
            for r in range(runs + 1 + profiled):  # the first block warms up, the extra one is profiled
                plan.append([
                    sign_tx(k, CHAIN_ID, "TRANSFER", r + 1, FEE, {"to": rng.choice(pad), "amount": 1 + rng.randrange(1000)})
                    for k in senders[:per_block]
                ])
            t = []
            prof = new_profile() if profiled else None
            for i, txs in enumerate(plan):
                admit(node, txs)
                if prof is not None and i == runs + 1:
                    prof.enable()
                wall, cpu, block = timed_propose(node)
                if prof is not None and i == runs + 1:
                    prof.disable()
                assert len(block["txs"]) == per_block
                if 0 < i <= runs:
                    t.append(wall + cpu + trees[-1])
            if prof is not None:
                prof_path = os.path.join(ctx.tmp, "state.prof")
                prof.dump_stats(prof_path)
            results[total_accounts] = (t, entries, setup)
        finally:
            store.close()
            shutil.rmtree(store.path, ignore_errors=True)
    if prof_path:
        ctx.add_profile(prof_path, f"BlockPipeline.propose() of 1,000 transfers with {big:,} accounts")
    rows = []
    med = {}
    for n in sizes:
        t, entries, setup = results[n]
        med[n] = [statistics.median(x[i] for x in t) for i in range(8)]
        rows.append((
            f"block of 1,000 transfers with {n:,} accounts: propose",
            f"{ms(med[n][0])} median of {len(t)}; build part {ms(med[n][1])}, commit part {ms(med[n][2])} "
            f"(CPU {ms(med[n][4])})",
            "-",
            f"{entries:,} state entries, listed in the genesis state ({setup:.0f} s setup, not timed); "
            f"recipients random existing accounts",
        ))
        rows.append((
            f"state tree per block, {n:,} accounts",
            f"{med[n][5]:,.0f} nodes written, {med[n][6]:,.0f} hashes, {med[n][7] / 1024:,.0f} KiB written",
            "-",
            "medians; the tree's update is part of the build (the state root goes in the header)",
        ))
    small, large = sizes
    ratio = [med[large][i] / med[small][i] for i in range(5)]
    rows.append((
        f"block commit time ratio, {large:,} / {small:,} accounts",
        f"{ratio[0]:.2f}x propose (build+apply+commit); commit part {ratio[2]:.2f}x wall, {ratio[4]:.2f}x CPU; "
        f"propose CPU {ratio[3]:.2f}x",
        target("<= 1.5x", ratio[0] <= 1.5) + ("" if large == 1_000_000 else " (target is at 1M; --quick uses 100k)"),
        "the state tree costs per touched entry times its depth (log16 of the entries); LMDB also "
        "dirties and fsyncs more distinct B-tree pages per block, with deeper lookups",
    ))
    return rows
