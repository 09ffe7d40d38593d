"""The block pipeline: every block this node commits passes through here.

A block is built (``propose``) or imported (``import_block``,
``reorganise``) by chain.Chain, the one commit path; then the pipeline
updates the mempool, records transactions dropped as invalid, counts
metrics and tells its listeners (peers relay the block).  It calls no
network code.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger

from aitnode.unstorable import TxBreaksBlock, commit_built_steps
from aitnode.errors import AitError
from aitnode.steps import run_steps, run_steps_async

# Builds one proposal may try, each after dropping a transaction that made
# the one before fail (TxBreaksBlock, or a block that would not store).
REBUILDS = 8


def short_of_votes(chain, block, view):
    """Whether block (built on the head, view its state after) changes the
    authority set without carrying the votes that justify its parent: a
    light client takes the new set on the old set's word, which is those
    votes (docs/protocol.md, Light clients)."""
    header = block["header"]
    return ("authorities" in block and header["authorities_hash"] != chain.head_header()["authorities_hash"]
            and chain.finality(view).justified.height != header["height"] - 1)


def _no_pause():
    return defer.succeed(None)


class VoteWait:
    """Holds back a block short of votes (short_of_votes), for one block
    interval at most: a chain never stops for votes that were lost."""

    def __init__(self, clock):
        self.clock = clock
        self._since = None  # (height, when this node first held its block back)

    def holds(self, chain, block, view):
        height = block["header"]["height"]
        if not short_of_votes(chain, block, view):
            return False
        if self._since is None or self._since[0] != height:
            self._since = (height, self.clock.seconds())
        return self.clock.seconds() - self._since[1] < view.param("block_interval_ms") / 1000


class BlockPipeline:
    _log = Logger()

    def __init__(self, chain, mempool, admission, verifier, local, metrics, clock, key=None, ballot=None):
        """ballot: where a proposer takes the votes and evidence its block
        carries (voting.Ballot), None for none."""
        self.chain = chain
        self.mempool = mempool
        self.admission = admission
        self.verifier = verifier
        self.local = local
        self.metrics = metrics
        self.clock = clock
        self.key = key if key is not None and chain.is_authority(key.address) else None
        self.ballot = ballot
        self.vote_wait = VoteWait(clock)
        # Set when another machine signs with this node's authority key: the
        # node then signs nothing (no block, no vote) until it is restarted.
        self.signing_stopped = False
        self.block_listeners = []  # called with each committed block
        self.blocks = 0
        self.head_changed_at = clock.seconds()
        # The greatest height of a block header this node checked (its
        # proposer's signature, its parent on our chain or on a checked
        # branch); p2p raises it, the sync lag metric reads it.  What peers
        # merely claim never counts.
        self.best_verified_height = 0

    def header_verified(self, height):
        """A block header at height was checked (see best_verified_height)."""
        if height > self.best_verified_height:
            self.best_verified_height = height

    @property
    def is_proposer(self):
        return self.key is not None

    def now(self):
        """The time in ms, as block timestamps count it."""
        return int(self.clock.seconds() * 1000)

    def may_propose(self, height):
        """Whether this node may sign a header at height: never at or below
        the height of a block it sent (a second header there is evidence
        that jails it), and not after a key conflict."""
        if self.key is None or self.signing_stopped:
            return False
        last = self.local.signed("proposal")
        return last is None or height > last


    # -- building ------------------------------------------------------------
    def propose(self):
        """Build, sign and commit one block from the mempool; return it."""
        return run_steps(self._propose_steps())

    async def propose_async(self, pause):
        """propose, letting the reactor run (await pause()) between slices of
        the work, so RPC keeps answering while a large block is built."""
        return await run_steps_async(self._propose_steps(), pause, jobs=self.tree_jobs)

    tree_jobs = None  # run(job) of the node's tree worker, if it has one (treeworker.TreeWorker)

    def _propose_steps(self):
        """Build and commit a block.  A transaction that makes building or
        storing it fail (not by breaking a rule: those are left out and
        recorded as usual) is dropped from the mempool, recorded as failed
        with the reason, and the block is built again without it."""
        if self.key is None:
            return None
        started = time.perf_counter()
        head = self.chain.head()
        if not self.may_propose(head[0] + 1):
            return None
        for _ in range(REBUILDS):
            if self.chain.head() != head:
                return None
            candidates = self.mempool.candidates()
            votes, evidence = self.ballot.block_fields(self.chain) if self.ballot is not None else ((), ())
            try:
                block, records, view, failed = yield from self.chain.build_steps(
                    candidates, self.key, self.now(), attestations=self.mempool.attestations(),
                    votes=votes, evidence=evidence,
                )
                if self.chain.head() != head or self.vote_wait.holds(self.chain, block, view):
                    # A block was imported meanwhile: this one no longer
                    # extends the head; or it should carry more votes.
                    view.release()
                    return None
                yield from commit_built_steps(self.chain, block, records, view, candidates, self.key)
            except TxBreaksBlock as e:
                self._drop_breaking(e.tx, e.error)
                continue
            except Exception:
                if self.chain.head() != head:
                    return None  # a block came in while a failed one was examined; the next round tries again
                raise
            # Recorded once committed, before listeners send it (a block
            # signed but never committed was never sent either), with this
            # authority's vote for it in the same LMDB transaction.
            if self.ballot is not None:
                self.ballot.proposed(block)
            else:
                self.local.put_signed("proposal", block["header"]["height"])
            self._after_commit(block, records, failed)
            self._log.info(
                "block proposed height={height} txs={txs} latency_ms={latency_ms}",
                component="proposer", event="block_proposed", height=block["header"]["height"],
                hash=block["hash"], txs=len(block["txs"]),
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            return block
        return None

    def _drop_breaking(self, tx, err):
        """tx made a block fail to build or store: out of the mempool, and
        recorded as failed (with the transactions after it of its sender)."""
        self._drop_failed({tx.hash: (tx, err)})
        self._log.error(
            "transaction {tx_hash} dropped: {code}: {message}", tx_hash=tx.hash, code=err.code,
            message=err.message, component="proposer", event="tx_breaks_block",
        )

    def _drop_failed(self, failed):
        """Drop {hash: (tx, AitError)} from the mempool with the sender's
        later transactions, and record them all as failed."""
        dropped = {}
        for tx, err in failed.values():
            gone = self.mempool.drop(tx)
            for d in gone:
                e = err if d is tx else AitError("predecessor_failed", f"transaction {tx.hash} with an earlier nonce failed: {err.message}")
                dropped[d.hash] = {"tx": d.to_wire(), "error": {"code": e.code, "message": e.message}}
        self.local.record_failed(dropped)
        for rec in dropped.values():
            self.metrics.tx_event(rec["tx"]["type"], "failed")
        return dropped

    def _after_commit(self, block, records, failed):
        view = self.chain.view()
        self.mempool.remove_committed(
            [(h, rec["tx"]["sender"]) for h, rec in records], lambda s: view.account(s)[1]
        )
        self._drop_failed(failed)
        self.blocks += 1
        self.head_changed_at = self.clock.seconds()
        self.metrics.on_block(block, records, self.head_changed_at)
        for listener in self.block_listeners:
            listener(block)

    # -- importing -------------------------------------------------------------
    async def check_signatures(self, txs):
        """Check the signatures of a block's transactions this node has not
        seen (off the reactor thread when the verifier is a pool)."""
        todo = [tx for tx in txs if tx.hash not in self.mempool]
        oks = await self.verifier.verify_many([(tx.pubkey, tx.sig, tx.sign_hash) for tx in todo])
        for tx, ok in zip(todo, oks):
            if not ok:
                raise AitError("bad_block", f"transaction {tx.hash} has a bad signature")

    async def import_block_async(self, block, txs, now=None):
        """Check the signatures of the block's transactions, then verify
        (its state tree in the tree worker, if there is one) and commit
        the block."""
        await self.check_signatures(txs)
        started = time.perf_counter()
        head = self.chain.head()
        verified = await run_steps_async(self.chain.verify_steps(block, txs, now=now), _no_pause, jobs=self.tree_jobs)
        if self.chain.head() != head:
            verified[2].release()
            raise AitError("head_moved", "the head changed while the block was checked", status=409)
        return self._commit_imported(verified, started)

    def import_block(self, block, txs, now=None):
        """Verify a block built elsewhere on top of the head, and commit it.
        now: bound its timestamp by this time (chain.verify_block)."""
        return self._commit_imported(self.chain.verify_block(block, txs, now=now), time.perf_counter())

    def _commit_imported(self, verified, started):
        checked, records, view = verified
        self.chain.commit(checked, records, view)
        self._after_commit(checked, records, {})
        self._log.info(
            "block imported height={height} txs={txs} latency_ms={latency_ms}",
            component="chain", event="block_imported", height=checked["header"]["height"],
            hash=checked["hash"], txs=len(checked["txs"]), proposer=checked["header"]["proposer"],
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return checked

    async def reorganise(self, fork_height, branch, pause=None, now=None):
        """Switch to a competing branch [(block, txs)] forking after
        fork_height, once all of it verified (chain.reorganise_steps);
        the transactions of the undone blocks go back to the mempool.
        Raises AitError, having changed nothing, if any block fails.
        pause: awaited between blocks (signature checks, then state
        transitions), so a long branch never holds the reactor."""
        self._log.info("checking a competing branch of {n} blocks after height {height}", n=len(branch),
                       height=fork_height, component="chain", event="reorg_check")
        for _, txs in branch:
            await self.check_signatures(txs)
            if pause is not None:
                await pause()
        attestations = self._attestations_above(fork_height)
        steps = self.chain.reorganise_steps(fork_height, branch, now)
        committed, dropped = run_steps(steps) if pause is None else await run_steps_async(steps, pause)
        self._readmit_after_switch(fork_height, dropped, attestations)
        for block in committed:
            self._after_commit(block, [(h, self.chain.store.tx_record(h)) for h in block["txs"]], {})
        return committed

    def rollback(self, height):
        """Undo blocks above height; their transactions go back to the mempool.

        An operator's explicit step (peers never cause it: they cause
        reorganise): it also lets this node sign headers above height again,
        which, for blocks already sent, another node may take as evidence."""
        attestations = self._attestations_above(height)
        dropped = self.chain.rollback(height)
        last = self.local.signed("proposal")
        if last is not None and last > height:
            self.local.put_signed("proposal", height)
        return self._readmit_after_switch(height, dropped, attestations)

    def _attestations_above(self, height):
        """{txHash: attestation} of the claims in the blocks above height."""
        out = {}
        for h in range(height + 1, self.chain.head()[0] + 1):
            out.update(self.chain.store.block_at(h).get("attestations") or {})
        return out

    def _readmit_after_switch(self, height, dropped, attestations):
        """The transactions of undone blocks (dropped, wire forms; claims
        with their blocks' attestations), then those pending, are admitted
        again on the new head.  Each one that no longer applies is recorded
        as failed (getTx): dropped_by_reorg, with the refusal."""
        pending = [(tx, self.mempool.attestation(tx.hash)) for tx in self.mempool.all()]
        self.mempool.clear()
        readmit = []
        for wire in dropped:
            try:
                tx = self.chain.parse_stored_tx(wire)
            except AitError as e:  # stored under older rules: it cannot even be named again
                self._log.warn("a transaction of an undone block no longer parses ({code}); dropped",
                               code=e.code, component="chain", event="reorg_unparsable")
                continue
            readmit.append((tx, attestations.get(tx.hash)))
        refused = []
        restored = self.admission.readmit(readmit + pending, refused)
        lost = {}
        for tx, err in refused:
            message = f"{err.code}: a reorganisation undid its block or left it pending, and it no longer applies: {err.message}"
            lost[tx.hash] = {"tx": tx.to_wire(), "error": {"code": "dropped_by_reorg", "message": message}}
            self.metrics.tx_event(tx.type, "failed")
        self.local.record_failed(lost)
        self.head_changed_at = self.clock.seconds()
        self._log.warn("rolled back to height {height}; {n} transactions back in the mempool, {lost} dropped",
                       height=height, n=restored, lost=len(lost), component="chain", event="reorg")
        return restored
