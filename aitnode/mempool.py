"""Pending transactions, waiting for a block.

Per sender the pool holds a contiguous run of nonces starting right after
the account's nonce, up to ``max_per_sender``.  A transaction with the
same (sender, nonce) and a higher fee replaces the pending one.  What a
sender's pending transactions may spend is checked against its balance at
admission; everything is checked again when the block is built.
"""

from aitnode import consensus, receipts
from aitnode.errors import AitError


def _cost_transfer(tx):
    return tx.payload["amount"] + tx.fee


def _cost_fee(tx):
    return tx.fee


# What a pending transaction takes from its sender's balance, by type.
COSTS = {
    "TRANSFER": _cost_transfer,
    "MINT": _cost_fee,
    "PARAM_UPDATE": _cost_fee,
    "AUTHORITY_UPDATE": _cost_fee,
    receipts.CLAIM: receipts.pending_cost,
}

# Keys no two pending transactions may share, by type: fn(tx) -> [(key, code, message)].
UNIQUE = {receipts.CLAIM: receipts.unique_keys, "AUTHORITY_UPDATE": consensus.unique_keys}


class Mempool:
    def __init__(self, max_size=200_000, max_per_sender=1024):
        self.max_size = max_size
        self.max_per_sender = max_per_sender
        self.by_hash = {}
        self.by_sender = {}  # sender -> {nonce: tx}, nonces contiguous
        self._spend = {}  # sender -> total cost of its pending txs
        self._unique = {}  # key -> hash of the pending tx holding it
        self._attestations = {}  # hash of a pending claim -> its coordinator attestation

    def __len__(self):
        return len(self.by_hash)

    def __contains__(self, tx_hash):
        return tx_hash in self.by_hash

    def get(self, tx_hash):
        return self.by_hash.get(tx_hash)

    def attestation(self, tx_hash):
        """The attestation a pending claim was admitted with, or None."""
        return self._attestations.get(tx_hash)

    def attestations(self):
        """{txHash: attestation} of every pending claim (do not mutate)."""
        return self._attestations

    def check(self, tx, balance, account_nonce):
        """Raise AitError if tx cannot be admitted; return the tx it replaces."""
        run = self.by_sender.get(tx.sender)
        nxt = account_nonce + 1 + (len(run) if run else 0)
        if tx.nonce <= account_nonce:
            raise AitError("nonce_too_low", f"nonce {tx.nonce} is used; the next is {account_nonce + 1}")
        replaced = run.get(tx.nonce) if run else None
        if replaced is None:
            if tx.nonce > nxt:
                raise AitError(
                    "nonce_too_far_ahead",
                    f"nonce {tx.nonce} leaves a gap; the next this node accepts for {tx.sender} is {nxt}",
                )
            if tx.nonce - account_nonce > self.max_per_sender:
                raise AitError(
                    "nonce_too_far_ahead",
                    f"{tx.sender} already has {self.max_per_sender} pending transactions",
                )
            if len(self.by_hash) >= self.max_size:
                raise AitError("mempool_full", "the mempool is full; retry later or raise the fee", status=429)
        elif tx.fee <= replaced.fee:
            raise AitError(
                "replacement_fee_too_low",
                f"a transaction with nonce {tx.nonce} is pending with fee {replaced.fee}; a replacement must pay more",
                status=409,
            )
        unique = UNIQUE.get(tx.type)
        if unique is not None:
            for key, code, message in unique(tx):
                holder = self._unique.get(key)
                if holder is not None and (replaced is None or holder != replaced.hash):
                    raise AitError(code, message, status=409)
        spend = self._spend.get(tx.sender, 0) + COSTS[tx.type](tx)
        if replaced is not None:
            spend -= COSTS[replaced.type](replaced)
        if spend > balance:
            raise AitError(
                "insufficient_balance",
                f"balance {balance} does not cover this transaction and the {len(run or ())} pending before it",
            )
        return replaced

    def add(self, tx, balance, account_nonce, attestation=None):
        """Admit tx (or raise AitError); return the transaction it replaced.

        attestation: a claim's coordinator attestation, kept with it."""
        replaced = self.check(tx, balance, account_nonce)
        if replaced is not None:
            self._remove(replaced)
        self.by_hash[tx.hash] = tx
        if attestation is not None:
            self._attestations[tx.hash] = attestation
        self.by_sender.setdefault(tx.sender, {})[tx.nonce] = tx
        self._spend[tx.sender] = self._spend.get(tx.sender, 0) + COSTS[tx.type](tx)
        unique = UNIQUE.get(tx.type)
        if unique is not None:
            for key, _, _ in unique(tx):
                self._unique[key] = tx.hash
        return replaced

    def _remove(self, tx):
        del self.by_hash[tx.hash]
        self._attestations.pop(tx.hash, None)
        unique = UNIQUE.get(tx.type)
        if unique is not None:
            for key, _, _ in unique(tx):
                if self._unique.get(key) == tx.hash:
                    del self._unique[key]
        run = self.by_sender[tx.sender]
        del run[tx.nonce]
        if run:
            self._spend[tx.sender] -= COSTS[tx.type](tx)
        else:
            del self.by_sender[tx.sender]
            del self._spend[tx.sender]

    def candidates(self, limit=None):
        """Pending transactions in an order a block can apply them.

        Senders in order of arrival; each sender's run in nonce order.
        """
        out = []
        for run in self.by_sender.values():
            for nonce in sorted(run):
                out.append(run[nonce])
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def remove_committed(self, included, nonce_of):
        """Drop transactions a block included, and any now stale.

        included: (tx_hash, sender) pairs; nonce_of(sender) gives the
        sender's account nonce after the block.
        """
        senders = set()
        for tx_hash, sender in included:
            pending = self.by_hash.get(tx_hash)
            if pending is not None:
                self._remove(pending)
            senders.add(sender)
        for sender in senders:
            run = self.by_sender.get(sender)
            if not run:
                continue
            nonce = nonce_of(sender)
            for n in sorted(run):
                if n <= nonce:
                    self._remove(run[n])

    def drop(self, tx):
        """Drop tx and the sender's later nonces (they could never apply).

        Returns every transaction dropped, tx first.
        """
        run = self.by_sender.get(tx.sender)
        if not run or run.get(tx.nonce) is not tx:
            return []
        dropped = [run[n] for n in sorted(run) if n >= tx.nonce]
        for d in dropped:
            self._remove(d)
        return dropped

    def all(self):
        return self.candidates()

    def clear(self):
        self.by_hash.clear()
        self.by_sender.clear()
        self._spend.clear()
        self._unique.clear()
        self._attestations.clear()
