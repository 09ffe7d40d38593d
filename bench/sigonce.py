"""sigonce: no signature checked twice, counted in process."""

from twisted.internet import defer

from aitnode import crypto
from aitnode import verifier as verifier_mod
from aitnode.errors import AitError
from aitnode.tx import sign_tx

from bench.common import CHAIN_ID, FEE, bench_genesis, bench_key, inprocess_node, target


class HeldVerifier:
    """Like a PoolVerifier: answers later, so two batches can be in flight at once."""

    def __init__(self):
        self.pending = []

    def verify_many(self, items):
        d = defer.Deferred()
        self.pending.append((d, items))
        return d

    def release(self):
        pending, self.pending = self.pending, []
        for d, items in pending:
            d.callback(verifier_mod.verify_chunk(items))


def _submit_all(node, objs):
    """sendTx of each, one by one; refusals (duplicates) are expected."""
    for o in objs:
        try:
            node.admission.submit(o)
        except AitError:
            pass


def _submit_many(node, objs):
    """One sendTxs call (it may wait on a held verifier); only its verify calls count."""
    defer.Deferred.fromCoroutine(node.admission.submit_batch(objs)).addBoth(lambda _: None)


def bench_sigonce(ctx):
    n_senders, per_sender = 50, 4
    authority = bench_key(0)
    senders = [bench_key(i) for i in range(1, n_senders + 1)]
    doc = bench_genesis(authority, [k.address for k in senders])
    calls = [0]
    real = crypto.verify

    def counting(pk, sig, msg):
        calls[0] += 1
        return real(pk, sig, msg)

    def wires(first, count):
        out = []
        for j in range(first, first + count):
            for k in senders:
                w = sign_tx(k, CHAIN_ID, "TRANSFER", j, FEE, {"to": senders[0].address, "amount": 1}).to_wire()
                del w["chain_id"]
                out.append(w)
        return out

    steps = []
    crypto.verify, verifier_mod.verify = counting, counting
    try:
        # A: one by one, resubmitted while pending, again in a batch, included, then resubmitted again
        node, store = inprocess_node(doc, authority, ctx.store_dir())
        a = wires(1, per_sender)
        b = wires(1 + per_sender, per_sender)
        c0 = calls[0]
        _submit_all(node, a)
        _submit_all(node, a)  # duplicates while pending
        _submit_many(node, a)  # duplicates in a batch
        node.pipeline.propose()
        _submit_all(node, a)  # duplicates after inclusion
        _submit_many(node, a)
        steps.append(("sendTx x2, sendTxs, include, resend", len(a), calls[0] - c0))
        # B: a batch, the same batch again, a duplicate within one batch, included, resent
        c0 = calls[0]
        _submit_many(node, b)
        _submit_many(node, b)
        node.pipeline.propose()
        _submit_many(node, b + b)
        _submit_all(node, b)
        steps.append(("sendTxs x2, include, resend (one by one and as a batch)", len(b), calls[0] - c0))
        store.close()

        # C: one list holding each new transaction twice
        node, store = inprocess_node(doc, authority, ctx.store_dir())
        c = wires(1, per_sender)
        c0 = calls[0]
        _submit_many(node, c + c)
        steps.append(("one sendTxs list with every tx twice", len(c), calls[0] - c0))
        store.close()

        # D: two overlapping sendTxs in flight at once (pool verifier answering later)
        held = HeldVerifier()
        node, store = inprocess_node(doc, authority, ctx.store_dir(), verifier=held)
        dd = wires(1, per_sender)
        c0 = calls[0]
        _submit_many(node, dd)
        _submit_many(node, dd)
        _submit_all(node, dd[:len(dd) // 2])  # and one-by-one sendTx of half of them meanwhile
        held.release()
        steps.append(("2 overlapping sendTxs in flight + sendTx meanwhile", len(dd), calls[0] - c0))
        store.close()
    finally:
        crypto.verify, verifier_mod.verify = real, real
    distinct = sum(s[1] for s in steps)
    checked = sum(s[2] for s in steps)
    detail = "; ".join(f"{name}: {n} distinct, {v} checks" for name, n, v in steps)
    ok = all(v == n for _, n, v in steps)
    return [(
        "signature checks per distinct transaction",
        f"{checked} checks for {distinct} distinct txs ({checked / distinct:.2f} per tx)",
        target("1.00 per tx", ok),
        "in process, crypto.verify counted; " + detail,
    )]
