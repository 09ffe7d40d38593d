"""The node: admission of transactions, block proposing, and queries.

One Node per process ties the Chain (rules and storage), the Mempool and a
signature verifier together.  RPC and the proposer call it; it calls no
network code.  Every state change goes through a block it builds (as an
authority) or one it imports.
"""

import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from aitnode import receipts
from aitnode.chain import check_fee
from aitnode.errors import AitError
from aitnode.params import min_fee
from aitnode.metrics import Metrics
from aitnode.state import run_steps, run_steps_async
from aitnode.tx import known_types, parse_tx, sign_tx

KNOWN_TYPES = frozenset(known_types())

BATCH_SLICE = 256  # batch items handled between two chances for the reactor to run


class Node:
    _log = Logger()

    def __init__(self, chain, mempool, verifier, key=None, clock=None, observers=(), attestor=None, metrics=None):
        self.chain = chain
        self.store = chain.store
        self.mempool = mempool
        self.verifier = verifier
        self.key = key if key is not None and chain.is_authority(key.address) else None
        self.clock = clock
        self.pause = None  # set by tap: awaitable that lets the reactor run
        self.attestor = attestor
        self.attestations = {}  # pending claim txHash -> its attestation
        self._verifying = {}  # txHash being checked -> Deferreds waiting for its verdict
        self.chain_id = chain.chain_id
        self.block_listeners = list(observers)  # called with each committed block
        self.tx_listeners = []  # called with each newly admitted transaction
        self.stats = {"admitted": 0, "refused": 0, "blocks": 0}
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.mempool_size.set_function(lambda: len(self.mempool))
        self.metrics.block_height.set_function(lambda: self.chain.head()[0])
        self.metrics.sync_lag.set_function(lambda: max(0, self.peer_height - self.chain.head()[0]))
        self._last_refusal_log = float("-inf")
        self._refusals_unlogged = 0
        self.head_changed_at = clock.seconds() if clock is not None else time.time()
        self.peer_height = 0  # the best height peers announced (set by p2p)

    @property
    def is_proposer(self):
        return self.key is not None

    def now(self):
        return int(self.clock.seconds()) if self.clock is not None else int(time.time())

    # -- admission ------------------------------------------------------
    def parse(self, obj):
        return parse_tx(obj, self.chain_id)

    def known(self, tx):
        return tx.hash in self.mempool or self.store.has_tx(tx.hash)

    def _admit(self, tx):
        """Mempool rules against the head state; AitError if refused."""
        view = self.chain.view()
        balance, nonce = view.account(tx.sender)
        params = self.chain.params()
        need = min_fee(params, tx.type, tx.payload_size)
        if tx.fee < need:
            raise AitError("fee_too_low", f"fee {tx.fee} is below the minimum {need}")
        if tx.type in ("MINT", "PARAM_UPDATE"):
            if not self.chain.is_authority(tx.sender):
                raise AitError("not_authority", f"only an authority may send {tx.type}")
            if tx.type == "MINT" and not params.get("faucet"):
                raise AitError("faucet_disabled", "MINT is allowed only while genesis params.faucet is true")
        self.precheck(tx, view)
        self.mempool.add(tx, balance, nonce)
        self.stats["admitted"] += 1
        self.metrics.tx_event(tx.type, "admitted")
        for listener in self.tx_listeners:
            listener(tx)

    def precheck(self, tx, view):
        """Type-specific admission checks that need no network."""
        if tx.type == receipts.CLAIM:
            params = self.chain.params()
            check_fee(tx, params)
            receipts.check_claim_offline(view, tx, params, self.chain_id)
            receipts.check_attestation(self.attestations.get(tx.hash), tx.payload, params, self.chain_id)

    def submit(self, obj):
        """Admit one wire transaction (signature checked here); its hash.

        Claims need the coordinator: they go through submit_claim instead.
        """
        try:
            tx = self.parse(obj)
            if tx.type == receipts.CLAIM:
                raise AitError("claim_needs_attestation", "send RECEIPT_CLAIM through submit_claim (POST /rpc/submitReceipt)")
            if self.known(tx):
                return tx.hash
            if tx.hash in self._verifying:
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
        (ok,) = await self._verify_once([tx])
        try:
            if not ok:
                raise AitError("bad_signature", "sig is not a valid signature of this transaction by pubkey")
            if not self.known(tx):
                self._admit(tx)
        except AitError as e:
            self.refused(obj, e)
            raise
        return tx.hash

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

    async def submit_any(self, obj):
        """submit, or submit_claim for a RECEIPT_CLAIM."""
        if type(obj) is dict and obj.get("type") == receipts.CLAIM:
            return await self.submit_claim(obj)
        return self.submit(obj)

    async def submit_claim(self, obj, tx=None, verified=False):
        """Admit a RECEIPT_CLAIM: check it offline, then get it attested.

        The coordinator is asked only once every rule it cannot answer
        holds; its attestation is checked like any block importer will.
        """
        try:
            if tx is None:
                tx = self.parse(obj)
            if tx.type != receipts.CLAIM:
                raise AitError("not_a_claim", "this route takes only RECEIPT_CLAIM transactions")
            if self.known(tx):
                return tx.hash
            if not verified and not tx.verify_signature():
                raise AitError("bad_signature", "sig is not a valid signature of this transaction by pubkey")
            view = self.chain.view()
            params = view.params()
            check_fee(tx, params)
            receipts.check_claim_offline(view, tx, params, self.chain_id)
            balance, nonce = view.account(tx.sender)
            if balance + receipts.payout_to(tx.payload, params, tx.sender) < tx.fee:
                raise AitError("insufficient_balance", f"fee {tx.fee} is more than the sender has and the claim pays it")
            self.mempool.check(tx, balance, nonce)
            del view
            if self.attestor is None:
                raise AitError("coordinator_not_configured", "this node has no [coordinator] url to attest claims", status=424)
            answer = await self.attestor.attest(receipts.attestation_request(tx.payload))
            receipts.check_attestation(answer, tx.payload, params, self.chain_id)
            if self.known(tx):
                return tx.hash
            self.attestations[tx.hash] = answer
            try:
                self._admit(tx)
            except AitError:
                del self.attestations[tx.hash]
                raise
        except AitError as e:
            self.refused(obj if obj is not None else {"type": receipts.CLAIM}, e)
            raise
        return tx.hash

    async def submit_many(self, objs):
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
        oks = await self._verify_once([tx for _, tx in todo])
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
                    results[i] = await self.submit_claim(None, tx=tx, verified=True)
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

    async def _verify_once(self, txs):
        """Signature verdicts for txs; a transaction another batch is
        checking right now waits for that verdict instead of being checked
        again (two overlapping sendTxs carrying the same transactions)."""
        verdict, waiting, mine = {}, {}, []
        for tx in txs:
            if tx.hash in verdict or tx.hash in waiting:
                continue
            waiters = self._verifying.get(tx.hash)
            if waiters is not None:
                waiting[tx.hash] = d = Deferred()
                waiters.append(d)
            else:
                self._verifying[tx.hash] = []
                verdict[tx.hash] = None
                mine.append(tx)
        try:
            oks = await self.verifier.verify_many([(tx.pubkey, tx.sig, tx.sign_hash) for tx in mine]) if mine else []
        except BaseException:
            failure = Failure()
            for tx in mine:
                for d in self._verifying.pop(tx.hash):
                    d.errback(failure)
            raise
        for tx, ok in zip(mine, oks):
            verdict[tx.hash] = ok
            for d in self._verifying.pop(tx.hash):
                d.callback(ok)
        for h, d in waiting.items():
            verdict[h] = await d
        return [verdict[tx.hash] for tx in txs]

    def submit_signed_by_node(self, ttype, payload):
        """Sign and admit a transaction with the node's authority key."""
        if self.key is None:
            raise AitError("not_authority", "this node holds no authority key", status=403)
        nonce = self.chain.view().account(self.key.address)[1]
        run = self.mempool.by_sender.get(self.key.address)
        nonce += 1 + (len(run) if run else 0)
        tx = self.parse(sign_tx(self.key, self.chain_id, ttype, nonce, 0, payload).to_wire())
        self._admit(tx)
        return tx.hash

    def estimate_fee(self, obj):
        """The least fee obj needs; its fee, nonce, pubkey and sig are optional."""
        if type(obj) is dict:
            obj = dict({"fee": 0, "nonce": 1}, **obj)
        tx = parse_tx(obj, self.chain_id, require_sig=False)
        return min_fee(self.chain.params(), tx.type, tx.payload_size)

    # -- blocks ---------------------------------------------------------
    def propose(self):
        """Build, sign and commit one block from the mempool; return it."""
        return run_steps(self._propose_steps())

    async def propose_async(self, pause):
        """propose, letting the reactor run (await pause()) between slices of
        the work, so RPC keeps answering while a large block is built."""
        return await run_steps_async(self._propose_steps(), pause)

    def _propose_steps(self):
        if self.key is None:
            return None
        started = time.perf_counter()
        head = self.chain.head()
        candidates = self.mempool.candidates()
        block, records, view, failed = yield from self.chain.build_steps(
            candidates, self.key, self.now(), attestations=self.attestations
        )
        if self.chain.head() != head:
            # A block was imported meanwhile: this one no longer extends the head.
            view.release()
            return None
        self.chain.commit(block, records, view)
        self._after_commit(block, records, failed)
        self._log.info(
            "block proposed height={height} txs={txs} latency_ms={latency_ms}",
            component="proposer", event="block_proposed", height=block["header"]["height"],
            hash=block["hash"], txs=len(block["txs"]),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return block

    def _after_commit(self, block, records, failed):
        view = self.chain.view()
        self.mempool.remove_committed(
            [(h, rec["tx"]["sender"]) for h, rec in records], lambda s: view.account(s)[1]
        )
        dropped = {}
        for tx, err in failed.values():
            gone = self.mempool.drop(tx)
            for d in gone:
                e = err if d is tx else AitError("predecessor_failed", f"transaction {tx.hash} with an earlier nonce failed: {err.message}")
                dropped[d.hash] = {"tx": d.to_wire(), "error": {"code": e.code, "message": e.message}}
        self.store.record_failed(dropped)
        for h in [h for h in self.attestations if h not in self.mempool]:
            del self.attestations[h]
        self.stats["blocks"] += 1
        self.head_changed_at = self.clock.seconds() if self.clock is not None else time.time()
        self.metrics.on_block(block, records, self.head_changed_at)
        for rec in dropped.values():
            self.metrics.tx_event(rec["tx"]["type"], "failed")
        for listener in self.block_listeners:
            listener(block)

    async def admit_remote(self, tx, attestation=None):
        """Admit a transaction relayed by a peer (signature checked once)."""
        if self.known(tx):
            return tx.hash
        ok = await self.verifier.verify_many([(tx.pubkey, tx.sig, tx.sign_hash)])
        if not ok[0]:
            raise AitError("bad_signature", "relayed transaction has a bad signature")
        if self.known(tx):
            return tx.hash
        if tx.type == receipts.CLAIM:
            self.attestations[tx.hash] = attestation
        try:
            self._admit(tx)
        except AitError:
            if tx.type == receipts.CLAIM:
                del self.attestations[tx.hash]
            raise
        return tx.hash

    async def import_block_async(self, block, txs):
        """Check the signatures of a block's transactions this node has not
        seen (off the reactor thread when the verifier is a pool), then
        verify and commit the block."""
        todo = [tx for tx in txs if tx.hash not in self.mempool]
        oks = await self.verifier.verify_many([(tx.pubkey, tx.sig, tx.sign_hash) for tx in todo])
        for tx, ok in zip(todo, oks):
            if not ok:
                raise AitError("bad_block", f"transaction {tx.hash} has a bad signature")
        return self.import_block(block, txs)

    def block_entry(self, height):
        """A block with its whole transactions, as peers exchange it."""
        block = self.store.block_at(height)
        return {"block": block, "txs": [self.store.tx_record(h)["tx"] for h in block["txs"]]}

    def rollback(self, height):
        """Undo blocks above height; their transactions go back to the mempool."""
        dropped = self.store.rollback_to(height)
        pending = [(tx, self.attestations.get(tx.hash)) for tx in self.mempool.all()]
        self.mempool.clear()
        readmit = []
        for wire in dropped:
            try:
                readmit.append((self.parse(wire), None))
            except AitError:
                pass
        restored = 0
        for tx, att in readmit + pending:
            if tx.type == receipts.CLAIM and att is None:
                continue  # its attestation left with the block; the miner resubmits
            try:
                if att is not None:
                    self.attestations[tx.hash] = att
                self._admit(tx)
                restored += 1
            except AitError:
                self.attestations.pop(tx.hash, None)
        self.head_changed_at = self.clock.seconds() if self.clock is not None else time.time()
        self._log.warn("rolled back to height {height}; {n} transactions back in the mempool",
                       height=height, n=restored, component="chain", event="reorg")
        return restored

    def propose_due(self, interval):
        """Whether this authority should propose now.

        The in-turn authority for height h is authorities[h mod N]; it
        proposes once the head is ``interval`` old.  The others back it up
        in rotation order, the r-th after ``interval * (1 + 2r)``.
        """
        if self.key is None:
            return False
        if self.peer_height > self.chain.head()[0]:
            return False  # behind a peer: catch up before building on a stale head
        auths = self.chain.authority_list
        if len(auths) == 1:
            return True
        height = self.chain.head()[0] + 1
        rank = (auths.index(self.key.address) - height) % len(auths)
        now = self.clock.seconds() if self.clock is not None else time.time()
        elapsed = now - self.head_changed_at
        return elapsed + 1e-6 >= interval * (1 + 2 * rank)

    def import_block(self, block, txs):
        """Verify a block built elsewhere on top of the head, and commit it."""
        started = time.perf_counter()
        checked, records, view = self.chain.verify_block(block, txs)
        self.chain.commit(checked, records, view)
        self._after_commit(checked, records, {})
        self._log.info(
            "block imported height={height} txs={txs} latency_ms={latency_ms}",
            component="chain", event="block_imported", height=checked["header"]["height"],
            hash=checked["hash"], txs=len(checked["txs"]), proposer=checked["header"]["proposer"],
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return checked

    # -- mempool persistence -------------------------------------------
    def save_mempool(self):
        self.store.save_mempool([[tx.to_wire(), self.attestations.get(tx.hash)] for tx in self.mempool.all()])

    def restore_mempool(self):
        """Re-admit the saved mempool (signatures were checked before)."""
        restored = 0
        for wire, attestation in self.store.load_mempool():
            tx = None
            try:
                tx = self.parse(wire)
                if not self.known(tx):
                    if attestation is not None:
                        self.attestations[tx.hash] = attestation
                    self._admit(tx)
                    restored += 1
            except AitError:
                if tx is not None:
                    self.attestations.pop(tx.hash, None)
        self.store.clear_mempool()
        return restored

    # -- queries ---------------------------------------------------------
    def get_head(self):
        height, h = self.chain.head()
        return {"height": height, "hash": h}

    def get_block(self, ref, full=False):
        if type(ref) is int or (isinstance(ref, str) and ref.isdigit() and len(ref) < 21):
            block = self.store.block_at(int(ref))
        else:
            block = self.store.block_by_hash(ref)
        if block is None:
            return None
        out = dict(block["header"])
        out["hash"] = block["hash"]
        out["sig"] = block["sig"]
        if full:
            out["txs"] = [self.store.tx_record(h)["tx"] for h in block["txs"]]
            out["attestations"] = block.get("attestations", {})
        else:
            out["txs"] = list(block["txs"])
        return out

    def get_tx(self, tx_hash):
        rec = self.store.tx_record(tx_hash)
        if rec is not None:
            out = {
                "status": "included",
                "tx": rec["tx"],
                "block": {"height": rec["height"], "hash": rec["block"], "index": rec["index"]},
                "receipt": rec["result"],
            }
            if "attestation" in rec:
                out["attestation"] = rec["attestation"]
            return out
        tx = self.mempool.get(tx_hash)
        if tx is not None:
            out = {"status": "pending", "tx": tx.to_wire()}
            if tx_hash in self.attestations:
                out["attestation"] = self.attestations[tx_hash]
            return out
        rec = self.store.failed_record(tx_hash)
        if rec is not None:
            return {"status": "failed", "tx": rec["tx"], "receipt": {"error": rec["error"]}}
        return None

    def get_balance(self, address):
        balance, nonce = self.chain.view().account(address)
        return {"balance": balance, "nonce": nonce}

    def get_receipt(self, receipt_id):
        view = self.chain.view()
        rec = view.get("rcpt", receipt_id)
        if rec is None:
            return None
        txrec = self.store.tx_record(rec["tx"])
        return {
            "receipt_id": receipt_id,
            "status": "included",
            "claim": txrec["tx"],
            "attestation": txrec.get("attestation"),
            "block": {"height": txrec["height"], "hash": txrec["block"]},
            "paid": rec,
        }

    def get_history(self, address, limit=50):
        """Included transactions touching address, newest first, with what
        the address gained or lost in each."""
        out = []
        for h in self.store.history(address, limit=limit):
            rec = self.store.tx_record(h)
            delta = sum(c["delta"] for c in rec["result"].get("changes", []) if c["address"] == address)
            out.append({
                "txHash": h, "height": rec["height"], "index": rec["index"], "type": rec["tx"]["type"],
                "sender": rec["tx"]["sender"], "payload": rec["tx"]["payload"], "fee": rec["tx"]["fee"],
                "delta": delta,
            })
        pending = [
            {"txHash": tx.hash, "status": "pending", "type": tx.type, "sender": tx.sender, "payload": tx.payload, "fee": tx.fee}
            for tx in self.mempool.by_sender.get(address, {}).values()
        ]
        return {"address": address, "txs": out, "pending": pending}

    def get_supply(self):
        supply = self.chain.view().get("chain", "supply")
        return dict(supply, total=sum(supply.values()))

    def get_params(self):
        return dict(self.chain.params())
