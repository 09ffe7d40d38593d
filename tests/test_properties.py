"""Property tests (hypothesis): random transfers, mints and replays,
proposed in random block splits, never break the ledger's invariants.

Each example runs on a fresh node (and a follower that imports every
block) in its own temporary folder.
"""

import os
import shutil
import tempfile

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aitnode.genesis import Genesis, make_genesis
from aitnode.errors import AitError
from aitnode.mempool import Mempool
from aitnode.node import compose

from tests.common import ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, transfer

KEYS = [ALICE, BOB, CAROL, AUTHORITY]
START = {ALICE.address: 10**6, BOB.address: 3 * 10**5, CAROL.address: 5000}
GENESIS = Genesis(make_genesis(CHAIN_ID, [AUTHORITY], sorted(START.items()), {"faucet": True}, timestamp=1_700_000_000))
GENESIS_SUPPLY = sum(START.values())

idx = st.integers(0, len(KEYS) - 1)
# sender (mostly the funded ones), recipient, amount, fee over the minimum
# (may be below), nonce offset from the next one the node accepts
tx_op = st.tuples(
    st.just("tx"), st.sampled_from([0, 0, 1, 1, 2, 3]), idx,
    st.one_of(st.integers(1, 5000), st.integers(1, 150_000)), st.integers(-3, 40),
    st.sampled_from([0, 0, 0, 0, 0, 1, 2, -1]),
)
other_op = st.one_of(
    st.tuples(st.just("mint"), idx, st.integers(1, 10**6)),
    # the authority changes the fee rule: pending transactions may then fail
    st.tuples(st.just("param"), st.sampled_from([0, 10, 60, 300])),
    st.tuples(st.just("replay"), st.integers(0, 10**6)),
    st.tuples(st.just("batch_replay"), st.integers(0, 10**6)),
    st.tuples(st.just("bump"), st.integers(0, 10**6), st.integers(1, 1000)),
    st.just(("block",)),
)
op = st.integers(0, 9).flatmap(lambda n: tx_op if n < 6 else other_op)
ops = st.lists(op, min_size=8, max_size=40)


class Run:
    """One example: a proposer, a follower, and what was seen."""

    def __init__(self, testcase):
        self.t = testcase
        # tmpfs where there is one: LMDB's fsync per block costs nothing there.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="ait-prop-", dir=shm)
        self.stores = []
        self.node = self._node(self.dir + "/a", AUTHORITY)
        self.follower = self._node(self.dir + "/b", None)
        self.included = []  # wire txs of included transactions, in order
        self.nonces = {k.address: 0 for k in KEYS}

    def _node(self, path, key):
        node = compose(path, GENESIS, Clock(), key=key, mempool=Mempool(max_per_sender=8), map_size=1 << 26)
        self.stores.append(node.store)
        return node

    def close(self):
        for s in self.stores:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def next_nonce(self, address):
        run = self.node.mempool.by_sender.get(address) or {}
        return self.node.queries.get_balance(address)["nonce"] + 1 + len(run)

    def submit(self, wire):
        try:
            return self.node.admission.submit(wire)
        except AitError:
            return None

    def apply(self, o):
        kind = o[0]
        node = self.node
        if kind == "tx":
            _, s, r, amount, extra, delta = o
            sender, to = KEYS[s], KEYS[r]
            payload = {"to": to.address, "amount": amount}
            need = node.queries.estimate_fee({"type": "TRANSFER", "sender": sender.address, "nonce": 1, "fee": 0, "payload": payload})
            nonce = max(1, self.next_nonce(sender.address) + delta)
            self.submit(transfer(sender, nonce, to, amount, fee=max(0, need + extra)).to_wire())
        elif kind == "mint":
            try:
                node.admission.submit_own("MINT", {"to": KEYS[o[1]].address, "amount": o[2]})
            except AitError:
                pass
        elif kind == "param":
            try:
                node.admission.submit_own("PARAM_UPDATE", {"key": "base_fee", "value": o[1]})
            except AitError:
                pass
        elif kind == "replay":
            if self.included:
                wire = self.included[o[1] % len(self.included)]
                # An included transaction is answered with its hash, and not pooled again.
                self.t.assertEqual(self.submit(wire), self.node.admission.parse(wire).hash)
                self.t.assertNotIn(self.node.admission.parse(wire).hash, node.mempool)
        elif kind == "batch_replay":
            if self.included:
                wires = [self.included[(o[1] + j) % len(self.included)] for j in range(3)]
                out = self.t.successResultOf(node.admission.submit_batch(wires + wires[:1]))
                self.t.assertEqual(out, [{"txHash": node.admission.parse(w).hash} for w in wires + wires[:1]])
        elif kind == "bump":
            pending = node.mempool.all()
            if pending:
                old = pending[o[1] % len(pending)]
                if old.type == "TRANSFER":
                    key = next(k for k in KEYS if k.address == old.sender)
                    new = transfer(key, old.nonce, old.payload["to"], old.payload["amount"], fee=old.fee + o[2])
                    if self.submit(new.to_wire()) is not None:
                        self.t.assertNotIn(old.hash, node.mempool)
                        self.t.assertIn(new.hash, node.mempool)
        elif kind == "block":
            self.block()

    def block(self):
        block = self.node.pipeline.propose()
        txs = [self.node.chain.parse_stored_tx(self.node.store.tx_record(h)["tx"]) for h in block["txs"]]
        self.follower.pipeline.import_block(block, txs)
        self.included += [tx.to_wire() for tx in txs]
        for k in KEYS:
            nonce = self.node.queries.get_balance(k.address)["nonce"]
            self.t.assertGreaterEqual(nonce, self.nonces[k.address], "a nonce went down")
            self.nonces[k.address] = nonce
        self.t.assertEqual(self.follower.queries.get_head(), self.node.queries.get_head())
        self.t.assertEqual(self.follower.store.state_root(), self.node.store.state_root())

    def finish(self):
        # Empty the mempool: every pending transaction is either included
        # or dropped within a few blocks.
        for _ in range(12):
            self.block()
            if not len(self.node.mempool):
                break
        self.t.assertEqual(len(self.node.mempool), 0)


class LedgerProperties(SynchronousTestCase):
    def run_ops(self, ops):
        run = Run(self)
        try:
            for o in ops:
                run.apply(o)
            run.finish()
            self.check(run)
        finally:
            run.close()

    def check(self, run):
        node, store = run.node, run.node.store
        height = node.queries.get_head()["height"]
        hashes, count, minted = [], {}, 0
        expected = {k.address: 0 for k in KEYS}
        expected.update(START)
        for h in range(1, height + 1):
            block = store.block_at(h)
            fees = 0
            for i, tx_hash in enumerate(block["txs"]):
                rec = store.tx_record(tx_hash)
                self.assertEqual((rec["height"], rec["block"], rec["index"]), (h, block["hash"], i))
                tx = rec["tx"]
                hashes.append(tx_hash)
                count[tx["sender"]] = count.get(tx["sender"], 0) + 1
                if tx["type"] == "TRANSFER":
                    amount = tx["payload"]["amount"]
                    expected[tx["sender"]] -= amount + tx["fee"]
                    expected[tx["payload"]["to"]] += amount
                elif tx["type"] == "MINT":
                    self.assertEqual(tx["sender"], AUTHORITY.address)
                    minted += tx["payload"]["amount"]
                    expected[tx["sender"]] -= tx["fee"]
                    expected[tx["payload"]["to"]] += tx["payload"]["amount"]
                else:
                    self.assertEqual((tx["type"], tx["sender"]), ("PARAM_UPDATE", AUTHORITY.address))
                    expected[tx["sender"]] -= tx["fee"]
                fees += tx["fee"]
                self.assertEqual(tx["nonce"], count[tx["sender"]], "nonces are applied in order, once each")
            expected[block["header"]["proposer"]] += fees
        # Every included transaction was applied exactly once.
        self.assertEqual(len(hashes), len(set(hashes)))
        self.assertEqual(len(hashes), len(run.included))
        for k in KEYS:
            bal = node.queries.get_balance(k.address)
            # (a) the nonce is the number of the account's included transactions
            self.assertEqual(bal["nonce"], count.get(k.address, 0))
            self.assertEqual(bal["nonce"], run.nonces[k.address])
            # the balance is what the included transactions say, no more, no less
            self.assertEqual(bal["balance"], expected[k.address])
            self.assertGreaterEqual(bal["balance"], 0)
        # (b) no double spend: all balances add up to genesis plus mints.
        accounts = dict(store.entries("acct"))
        self.assertEqual(set(accounts) - set(expected), set())
        self.assertEqual(sum(b for b, _ in accounts.values()), GENESIS_SUPPLY + minted)
        # The supply counters say the same.
        supply = node.queries.get_supply()
        self.assertEqual(supply["genesis"], GENESIS_SUPPLY)
        self.assertEqual(supply["faucet"], minted)
        self.assertEqual(supply["total"], GENESIS_SUPPLY + minted)
        # (c) replaying every included transaction includes none again.
        for wire in run.included:
            run.submit(wire)
        self.assertEqual(len(node.mempool), 0)
        self.assertEqual(node.pipeline.propose()["txs"], [])
        # The follower holds the very same state.
        self.assertEqual(dict(run.follower.store.entries("acct")), accounts)

    @given(ops)
    def test_ledger_invariants(self, ops):
        self.run_ops(ops)
