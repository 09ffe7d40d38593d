"""No signature is checked twice, even by two overlapping batches."""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from aitnode.verifier import verify_chunk
from tests.common import ALICE, BOB, make_node, transfer, wire


class SlowVerifier:
    """Answers only when told to, counting what it was asked to check."""

    def __init__(self):
        self.checked = 0
        self.pending = []

    def verify_many(self, items):
        self.checked += len(items)
        d = Deferred()
        self.pending.append((d, items))
        return d

    def answer_all(self):
        while self.pending:
            d, items = self.pending.pop(0)
            d.callback(verify_chunk(items))


class VerifyOnceTests(SynchronousTestCase):
    def test_overlapping_batches_share_verdicts(self):
        verifier = SlowVerifier()
        node = make_node(self, verifier=verifier)
        txs = [wire(transfer(ALICE, n, BOB, n)) for n in range(1, 6)]
        bad = dict(wire(transfer(ALICE, 6, BOB, 6)), fee=2000)  # signature no longer matches
        first = Deferred.fromCoroutine(node.admission.submit_batch(txs + [bad]))
        second = Deferred.fromCoroutine(node.admission.submit_batch(txs + [bad, txs[0]]))
        self.assertNoResult(first)
        self.assertNoResult(second)
        verifier.answer_all()
        one, two = self.successResultOf(first), self.successResultOf(second)
        self.assertEqual(verifier.checked, 6)  # each distinct transaction once
        self.assertEqual([r.get("txHash") is not None for r in one], [True] * 5 + [False])
        self.assertEqual(one[5]["error"]["code"], "bad_signature")
        self.assertEqual(two[5]["error"]["code"], "bad_signature")
        self.assertEqual({r["txHash"] for r in two if "txHash" in r}, {r["txHash"] for r in one[:5]})
        self.assertEqual(len(node.mempool), 5)
        self.assertEqual(node.admission.verify_once._checking, {})

    def test_a_failed_check_fails_the_waiters_too(self):
        verifier = SlowVerifier()
        node = make_node(self, verifier=verifier)
        txs = [wire(transfer(ALICE, 1, BOB, 1))]
        first = Deferred.fromCoroutine(node.admission.submit_batch(txs))
        second = Deferred.fromCoroutine(node.admission.submit_batch(txs))
        d, _ = verifier.pending.pop(0)
        d.errback(RuntimeError("worker died"))
        self.failureResultOf(first, RuntimeError)
        self.failureResultOf(second, RuntimeError)
        self.assertEqual(node.admission.verify_once._checking, {})
        self.assertEqual(len(node.mempool), 0)

    def test_send_tx_during_a_batch_waits_for_its_verdict(self):
        from tests.common import make_rpc

        verifier = SlowVerifier()
        node = make_node(self, verifier=verifier)
        _, http = make_rpc(node)
        tx = wire(transfer(ALICE, 1, BOB, 1))
        batch = Deferred.fromCoroutine(node.admission.submit_batch([tx]))
        single = http.post("http://n/rpc/sendTx", json=tx)
        self.assertNoResult(single)
        verifier.answer_all()
        http.flush()
        self.assertEqual(verifier.checked, 1)
        response = self.successResultOf(single)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.json()), self.successResultOf(batch)[0])
        self.assertEqual(len(node.mempool), 1)
