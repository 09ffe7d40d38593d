"""Admission: every way a transaction enters the mempool.

Clients send one transaction (``submit``) or a batch (``submit_batch``);
peers relay one (``relay``); the node signs its own (``submit_own``); and
transactions come back after a reorganisation or a restart (``readmit``).
All of them end in ``_admit``, which checks ``rules.check_admission``
against the head and the mempool's own rules, so no path admits what
another would refuse.  A signature is checked once: a transaction that a
batch is checking right now waits for that verdict.
"""

import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from aitnode import receipts
from aitnode.errors import AitError
from aitnode.rules import check_admission
from aitnode.tx import known_types, parse_tx, sign_tx
from aitnode.verifier import VerifyOnce

KNOWN_TYPES = frozenset(known_types())
BATCH_SLICE = 256  # batch items handled between two chances for the reactor to run


class Admission:
    _log = Logger()

    def __init__(self, chain, mempool, verifier, metrics, local, attestor=None, key=None, pause=None):
        """key: the node's authority key (for submit_own), or None;
        pause: lets the reactor run between slices of a batch (None: never)."""
        self.chain = chain
        self.chain_id = chain.chain_id
        self.mempool = mempool
        self.verifier = verifier
        self.metrics = metrics
        self.local = local
        self.attestor = attestor
        self.key = key
        self.pause = pause
        self.verify_once = VerifyOnce(verifier)
        self.tx_listeners = []  # called with each newly admitted transaction
        self.stats = {"admitted": 0, "refused": 0}
        self._last_refusal_log = float("-inf")
        self._refusals_unlogged = 0

    def parse(self, obj):
        return parse_tx(obj, self.chain_id)

    def known(self, tx):
        return tx.hash in self.mempool or self.chain.store.has_tx(tx.hash)

    # -- the one admission step ------------------------------------------
    def _admit(self, tx, attestation=None):
        """Admit tx (signature already checked) against the head; AitError if refused."""
        view = self.chain.view()
        ctx = self.chain.context(view, params=self.chain.params(), authorities=self.chain.authority_set().keys)
        check_admission(ctx, tx)
        if tx.type == receipts.CLAIM:
            receipts.check_attestation(attestation, tx.payload, ctx.params, self.chain_id)
        balance, nonce = view.account(tx.sender)
        self.mempool.add(tx, balance, nonce, attestation)
        self.stats["admitted"] += 1
        self.metrics.tx_event(tx.type, "admitted")
        for listener in self.tx_listeners:
            listener(tx)

    def refused(self, obj, err):
        """Count a refusal; log it, at most one line a second."""
        self.stats["refused"] += 1
        ttype = obj.get("type") if type(obj) is dict else None
        if type(ttype) is not str or ttype not in KNOWN_TYPES:  # any JSON value, hashable or not
            ttype = "invalid"
        self.metrics.tx_event(ttype, "refused")
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._log.info(
                "refused {type} transaction: {code} ({suppressed} more refused since the last line)",
                type=ttype, code=err.code, suppressed=self._refusals_unlogged,
                component="mempool", event="tx_refused", error=err.message,
            )
            self._last_refusal_log = now
            self._refusals_unlogged = 0
        else:
            self._refusals_unlogged += 1

    # -- clients -------------------------------------------------------------
    def submit(self, obj, claims_only=False):
        """Admit one wire transaction; its hash, or a Deferred of it.

        A RECEIPT_CLAIM is attested by the coordinator first (a Deferred);
        claims_only refuses every other type (POST /rpc/submitReceipt).
        """
        try:
            tx = self.parse(obj)
            if tx.type == receipts.CLAIM:
                return Deferred.fromCoroutine(self._submit_claim(obj, tx))
            if claims_only:
                raise AitError("not_a_claim", "this route takes only RECEIPT_CLAIM transactions")
            if self.known(tx):
                return tx.hash
            if self.verify_once.checking(tx):
                # A batch is checking this very transaction: wait for its
                # verdict rather than check it again (answers a Deferred).
                return Deferred.fromCoroutine(self._submit_checked_elsewhere(obj, tx))
            if not tx.verify_signature():
                raise AitError("bad_signature", "sig is not a valid signature of this transaction by pubkey (signed for another chain_id?)")
            self._admit(tx)
        except AitError as e:
            self.refused(obj, e)
            raise
        return tx.hash

    async def _submit_checked_elsewhere(self, obj, tx):
        (ok,) = await self.verify_once([tx])
        try:
            if not ok:
                raise AitError("bad_signature", "sig is not a valid signature of this transaction by pubkey")
            if not self.known(tx):
                self._admit(tx)
        except AitError as e:
            self.refused(obj, e)
            raise
        return tx.hash

    async def _submit_claim(self, obj, tx, verified=False):
        """Admit a RECEIPT_CLAIM: check it offline, then get it attested.

        The coordinator is asked only once every rule it cannot answer
        holds; its attestation is checked like any block importer will.
        """
        try:
            if self.known(tx):
                return tx.hash
            if not verified and not tx.verify_signature():
                raise AitError("bad_signature", "sig is not a valid signature of this transaction by pubkey")
            view = self.chain.view()
            ctx = self.chain.context(view, params=self.chain.params(), authorities=self.chain.authority_set().keys)
            check_admission(ctx, tx)
            balance, nonce = view.account(tx.sender)
            if balance + receipts.payout_to(tx.payload, ctx.params, tx.sender) < tx.fee:
                raise AitError("insufficient_balance", f"fee {tx.fee} is more than the sender has and the claim pays it")
            self.mempool.check(tx, balance, nonce)
            del view, ctx
            if self.attestor is None:
                raise AitError("coordinator_not_configured", "this node has no [coordinator] url to attest claims", status=424)
            answer = await self.attestor.attest(receipts.attestation_request(tx.payload))
            if self.known(tx):
                return tx.hash
            self._admit(tx, answer)
        except AitError as e:
            self.refused(obj if obj is not None else {"type": receipts.CLAIM}, e)
            raise
        return tx.hash

    async def submit_batch(self, objs):
        """Admit a list; one result per item, in order.

        Each result is {"txHash"} or {"error": {"code", "message"}}.
        Signatures are checked as one batch by the verifier (off the
        reactor thread when it is a pool), then items are admitted in order.
        """
        results = [None] * len(objs)
        todo = []
        first = {}  # hash -> index of its first copy in this batch
        for i, obj in enumerate(objs):
            if self.pause is not None and i and i % BATCH_SLICE == 0:
                await self.pause()
            try:
                tx = self.parse(obj)
            except AitError as e:
                results[i] = e
                continue
            if self.known(tx):
                results[i] = tx.hash
            elif tx.hash in first:
                results[i] = first[tx.hash]  # a copy: answered like the first
            else:
                first[tx.hash] = i
                todo.append((i, tx))
        oks = await self.verify_once([tx for _, tx in todo])
        for n, ((i, tx), ok) in enumerate(zip(todo, oks), 1):
            if self.pause is not None and n % BATCH_SLICE == 0:
                await self.pause()
            try:
                if not ok:
                    raise AitError("bad_signature", "sig is not a valid signature of this transaction by pubkey")
                if self.known(tx):
                    results[i] = tx.hash
                    continue
                if tx.type == receipts.CLAIM:
                    results[i] = await self._submit_claim(None, tx, verified=True)
                    continue
                self._admit(tx)
                results[i] = tx.hash
            except AitError as e:
                results[i] = e
        for i, r in enumerate(results):
            if type(r) is int:
                results[i] = results[r]
        out = []
        for obj, r in zip(objs, results):
            if isinstance(r, AitError):
                self.refused(obj, r)
                out.append(r.as_json())
            else:
                out.append({"txHash": r})
        return out

    # -- peers and the node itself -------------------------------------------
    async def relay(self, tx, attestation=None):
        """Admit a transaction relayed by a peer (signature checked once)."""
        if self.known(tx):
            return tx.hash
        (ok,) = await self.verify_once([tx])
        if not ok:
            raise AitError("bad_signature", "relayed transaction has a bad signature")
        if self.known(tx):
            return tx.hash
        self._admit(tx, attestation)
        return tx.hash

    def submit_own(self, ttype, payload):
        """Sign and admit a transaction with the node's authority key."""
        if self.key is None:
            raise AitError("not_authority", "this node holds no authority key", status=403)
        nonce = self.chain.view().account(self.key.address)[1]
        run = self.mempool.by_sender.get(self.key.address)
        nonce += 1 + (len(run) if run else 0)
        tx = self.parse(sign_tx(self.key, self.chain_id, ttype, nonce, 0, payload).to_wire())
        self._admit(tx)
        return tx.hash

    def readmit(self, entries, refused=None):
        """Admit again [(tx, attestation)] whose signatures were checked before
        (after a reorganisation, or from the snapshot of a restart); those
        that no longer apply are left out, and appended to refused (a list)
        as (tx, AitError) when it is given.  Returns how many were admitted."""
        restored = 0
        for tx, att in entries:
            try:
                if not self.known(tx):
                    self._admit(tx, att)
                    restored += 1
            except AitError as e:
                if refused is not None:
                    # Without its traceback: its frames hold the StateView
                    # whose LMDB read transaction (a reader slot) they opened.
                    refused.append((tx, e.with_traceback(None)))
        return restored

    # -- the snapshot kept across restarts -------------------------------------
    def save_mempool(self):
        self.local.save_mempool([[tx.to_wire(), self.mempool.attestation(tx.hash)] for tx in self.mempool.all()])

    def restore_mempool(self):
        """Re-admit the saved mempool (signatures were checked before)."""
        entries = []
        for wire, attestation in self.local.load_mempool():
            try:
                entries.append((self.parse(wire), attestation))
            except AitError:
                pass
        restored = self.readmit(entries)
        self.local.clear_mempool()
        return restored
