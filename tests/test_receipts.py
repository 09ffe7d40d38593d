"""Compute receipts in process: every validity rule, every effect, import,
replay, the RPC routes, and a property test over random sequences.

The node's attestor here is synchronous (FakeAttestor): it answers with
MockCoordinator's signed answers or with answers a test crafts and signs
itself, so Admission.submit of a claim completes within Deferred.fromCoroutine and
tests read it with successResultOf / failureResultOf.
"""

import copy
import json
import os
import shutil
import tempfile

from hypothesis import given, strategies as st
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aitnode import p2p, params as P
from aitnode.blocks import ENTRY_OVERHEAD, block_bytes, block_hash, tx_bytes, tx_root
from aitnode.genesis import Genesis
from aitnode.coordinator import MockCoordinator
from aitnode.errors import AitError
from aitnode.node import compose
from aitnode.params import BPS
from aitnode.receipts import (
    ANSWER_FIELDS, CLAIM, attestation_request, attestation_sign_bytes, check_attestation,
    sign_claim,
)
from aitnode.tx import sign_tx
from tests.common import (
    ALICE, AUTHORITY, BOB, CAROL, CHAIN_ID, COORDINATOR, ESCROW, GENESIS_BALANCE, MINER,
    genesis_doc, key, make_node, make_rpc, transfer, wire,
)

PRICE = 5000
UNITS = 13
FEE = 1000  # above the minimum fee of every claim below (about 590)
BIG_FEE = 5000  # above the minimum fee of a claim with the longest identifiers
OUTPUT = "sha256:" + "ab" * 32
COORD_BALANCE = 10**6
MINER2 = key(8)
OTHER = key(9)  # a key that is nobody's on this chain

ACCOUNTS = [(ALICE.address, GENESIS_BALANCE), (BOB.address, 10**6), (COORDINATOR.address, COORD_BALANCE)]


def doc(**params):
    return genesis_doc(accounts=ACCOUNTS, **params)


class FakeAttestor:
    """Answers at once: from a MockCoordinator, or from ``answer(request)``."""

    def __init__(self, mock, answer=None):
        self.mock = mock
        self.answer = answer
        self.calls = []

    async def attest(self, request):
        self.calls.append(request)
        if self.answer is not None:
            return self.answer(request)
        return self.mock.attest(request)


def forged(request, signer=COORDINATOR, chain_id=CHAIN_ID, coordinator=None, drop=(), extra=None, **flags):
    """An answer built like the coordinator's, signed by ``signer``."""
    answer = dict(request, exists=flags.get("exists", True), paid=flags.get("paid", True),
                  not_double_spent=flags.get("not_double_spent", True),
                  coordinator=coordinator or signer.address)
    for name in drop:
        del answer[name]
    answer.update(extra or {})
    answer["sig"] = signer.sign(attestation_sign_bytes(answer, chain_id)).hex()
    return answer


class ReceiptCase(SynchronousTestCase):
    genesis_params = {}

    def setUp(self):
        self.doc = doc(**self.genesis_params)
        self.node = make_node(self, doc=self.doc)
        self.mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        self.attestor = FakeAttestor(self.mock)
        self.node.admission.attestor = self.attestor

    # -- building --------------------------------------------------------
    def next_nonce(self, who, node=None):
        node = node or self.node
        n = node.chain.view().account(who.address)[1]
        run = node.mempool.by_sender.get(who.address)
        return n + 1 + (len(run) if run else 0)

    def block(self, node=None):
        node = node or self.node
        height = node.queries.get_head()["height"]
        b = node.pipeline.propose()
        self.assertEqual(b["header"]["height"], height + 1)
        return b

    def pay(self, client=ALICE, amount=PRICE, to=ESCROW, include=True):
        tx = transfer(client, self.next_nonce(client), to, amount)
        self.assertEqual(self.node.admission.submit(wire(tx)), tx.hash)
        if include:
            self.block()
        return tx

    def payload(self, payment, miner_key=MINER, chain_id=CHAIN_ID, **fields):
        f = dict(receipt_id="r1", job_id="job_1", client_addr=ALICE.address, miner_addr=MINER.address,
                 compute_units=UNITS, price=PRICE, output_hash=OUTPUT,
                 client_payment_tx=payment if isinstance(payment, str) else payment.hash)
        f.update(fields)
        return sign_claim(miner_key, chain_id, **f)

    def claim(self, payload, sender=MINER, fee=FEE, nonce=None):
        return sign_tx(sender, CHAIN_ID, CLAIM, nonce or self.next_nonce(sender), fee, payload)

    # -- submitting ------------------------------------------------------
    def submit(self, tx_or_obj, node=None):
        node = node or self.node
        obj = wire(tx_or_obj) if hasattr(tx_or_obj, "to_wire") else tx_or_obj
        return maybeDeferred(node.admission.submit, obj, claims_only=True)

    def accept(self, tx):
        self.assertEqual(self.successResultOf(self.submit(tx)), tx.hash)
        self.assertIn(tx.hash, self.node.mempool)
        return tx.hash

    def refuse(self, tx_or_obj, code, status=None, block=True):
        """The claim is refused with code; nothing changes and blocks keep coming."""
        before = self.snapshot()
        pending = sorted(self.node.mempool.by_hash)
        err = self.failureResultOf(self.submit(tx_or_obj), AitError).value
        self.assertEqual(err.code, code, err.message)
        self.assertTrue(400 <= err.status < 500, err)
        if status is not None:
            self.assertEqual(err.status, status)
        self.assertTrue(err.message)
        self.assertEqual(sorted(self.node.mempool.by_hash), pending)
        self.assertEqual(self.snapshot(), before)
        if block and not pending:
            self.block()
            after = self.snapshot()
            self.assertEqual(after, before)
        return err

    # -- reading ---------------------------------------------------------
    def balance(self, who, node=None):
        node = node or self.node
        return node.queries.get_balance(who if isinstance(who, str) else who.address)["balance"]

    def balances(self, node=None):
        node = node or self.node
        return {a: v[0] for a, v in node.store.entries("acct")}

    def snapshot(self, node=None):
        node = node or self.node
        s = node.store
        return {
            "acct": dict(s.entries("acct")),
            "rcpt": dict(s.entries("rcpt")),
            "pay": dict(s.entries("pay")),
            "supply": node.queries.get_supply(),
        }

    def assertSupplyConsistent(self, node=None):
        node = node or self.node
        supply = node.queries.get_supply()
        parts = {k: v for k, v in supply.items() if k != "total"}
        self.assertEqual(set(parts), {"genesis", "faucet", "receipts", "coordinator", "treasury"})
        self.assertEqual(supply["total"], sum(parts.values()))
        self.assertEqual(supply["total"], sum(self.balances(node).values()))
        rcpts = [r for _, r in node.store.entries("rcpt")]
        self.assertEqual(parts["receipts"], sum(r["mint"] for r in rcpts))
        self.assertEqual(parts["coordinator"], sum(r["coordinator_cut"] for r in rcpts))
        self.assertEqual(parts["treasury"], sum(r["treasury_cut"] for r in rcpts))
        return supply

    def settle(self, units=UNITS, params=None):
        params = params or self.node.queries.get_params()
        mint = units * params["mint_per_unit"]
        cut = mint * params["coordinator_ratio_bps"] // BPS
        tcut = mint * params["treasury_ratio_bps"] // BPS if params.get("treasury") else 0
        return mint, cut, tcut

    def good_claim(self, receipt_id="r1", sender=MINER, **fields):
        """A paid escrow deposit and a claim on it (not yet submitted)."""
        payment = self.pay(amount=fields.get("price", PRICE))
        return payment, self.claim(self.payload(payment, receipt_id=receipt_id, **fields), sender=sender)

    def claim_included(self, receipt_id="r1", sender=MINER, **fields):
        payment, tx = self.good_claim(receipt_id, sender, **fields)
        self.accept(tx)
        b = self.block()
        self.assertIn(tx.hash, b["txs"])
        self.assertEqual(self.node.queries.get_tx(tx.hash)["status"], "included")
        return payment, tx, b


# -- every rule has its code ------------------------------------------------

class OfflineRuleTests(ReceiptCase):
    def test_zero_compute_units(self):
        payment = self.pay()
        self.refuse(self.claim(self.payload(payment, compute_units=0)), "zero_compute_units")

    def test_sender_neither_miner_nor_coordinator(self):
        payment = self.pay()
        self.refuse(self.claim(self.payload(payment), sender=BOB), "claim_sender_not_allowed")
        self.refuse(self.claim(self.payload(payment), sender=ALICE), "claim_sender_not_allowed")
        self.assertEqual(self.attestor.calls, [], "no coordinator call for a claim that breaks an offline rule")

    def test_miner_pubkey_mismatch(self):
        payment = self.pay()
        # Signed (consistently) by another key, claiming MINER's address.
        p = self.payload(payment, miner_key=OTHER)
        self.refuse(self.claim(p), "miner_pubkey_mismatch")
        p = dict(self.payload(payment), miner_pubkey=OTHER.public_key.hex())
        self.refuse(self.claim(p), "miner_pubkey_mismatch")

    def test_bad_miner_signature(self):
        payment = self.pay()
        good = self.payload(payment)
        flipped = dict(good, miner_sig=("0" if good["miner_sig"][0] != "0" else "1") + good["miner_sig"][1:])
        self.refuse(self.claim(flipped), "bad_miner_signature")
        self.refuse(self.claim(self.payload(payment, chain_id="ait-other")), "bad_miner_signature")
        # A signed field changed after signing.
        self.refuse(self.claim(dict(good, price=PRICE - 1)), "bad_miner_signature")
        self.refuse(self.claim(dict(good, job_id="job_2")), "bad_miner_signature")
        self.assertEqual(self.attestor.calls, [])
        self.accept(self.claim(good))

    def test_receipt_already_claimed_after_inclusion(self):
        self.claim_included("r1")
        payment2 = self.pay()
        err = self.refuse(self.claim(self.payload(payment2, receipt_id="r1", job_id="job_2")),
                          "receipt_already_claimed", status=409)
        self.assertIn("r1", err.message)
        # ... whoever sends it.
        self.refuse(self.claim(self.payload(payment2, receipt_id="r1", job_id="job_2"), sender=COORDINATOR),
                    "receipt_already_claimed")

    def test_receipt_already_claimed_while_pending(self):
        payment2 = self.pay()
        payment3 = self.pay()
        pending = self.claim(self.payload(payment3, receipt_id="r2", job_id="job_3"))
        self.accept(pending)
        self.refuse(self.claim(self.payload(payment2, receipt_id="r2", job_id="job_3")),
                    "receipt_already_claimed", status=409)
        self.refuse(self.claim(self.payload(payment2, receipt_id="r2", job_id="job_3"), sender=COORDINATOR),
                    "receipt_already_claimed", status=409)
        b = self.block()
        self.assertEqual(b["txs"], [pending.hash])
        self.assertEqual(self.node.queries.get_receipt("r2")["paid"]["payment_tx"], payment3.hash)
        self.assertEqual(self.node.store.entry("pay", payment2.hash)["claimed"], "")

    def test_payment_not_found(self):
        self.refuse(self.claim(self.payload("ab" * 32)), "payment_not_found")
        # An included transfer, but not to escrow.
        to_bob = self.pay(to=BOB)
        self.refuse(self.claim(self.payload(to_bob)), "payment_not_found")
        # A MINT to escrow is no client payment.
        mint = self.node.admission.submit_own("MINT", {"to": ESCROW.address, "amount": PRICE})
        self.block()
        self.assertEqual(self.balance(ESCROW), PRICE)
        self.refuse(self.claim(self.payload(mint)), "payment_not_found")
        # A payment to escrow still pending.
        pending = self.pay(include=False)
        self.refuse(self.claim(self.payload(pending)), "payment_not_found", block=False)
        self.block()
        self.accept(self.claim(self.payload(pending)))

    def test_payment_already_used(self):
        payment, tx, _ = self.claim_included("r1")
        err = self.refuse(self.claim(self.payload(payment, receipt_id="r2", job_id="job_2")),
                          "payment_already_used", status=409)
        self.assertIn("r1", err.message)

    def test_payment_already_used_while_pending(self):
        payment, tx = self.good_claim("r1")
        self.accept(tx)
        self.refuse(self.claim(self.payload(payment, receipt_id="r2", job_id="job_2")),
                    "payment_already_used", status=409)
        self.refuse(self.claim(self.payload(payment, receipt_id="r2", job_id="job_2"), sender=COORDINATOR),
                    "payment_already_used", status=409)

    def test_payment_wrong_client(self):
        payment = self.pay(client=ALICE)
        self.refuse(self.claim(self.payload(payment, client_addr=BOB.address)), "payment_wrong_client")

    def test_payment_too_small(self):
        payment = self.pay(amount=PRICE - 1)
        err = self.refuse(self.claim(self.payload(payment)), "payment_too_small")
        self.assertIn(str(PRICE - 1), err.message)
        # A payment larger than the price is fine (the surplus stays in escrow).
        big = self.pay(amount=PRICE + 1)
        self.accept(self.claim(self.payload(big, receipt_id="r2")))
        self.block()
        self.assertEqual(self.balance(ESCROW), PRICE - 1 + 1)

    def test_escrow_insufficient_on_admission(self):
        """Reachable when whoever holds the escrow key moves the deposit out."""
        payment = self.pay(amount=PRICE)
        drain = transfer(ESCROW, 1, BOB, PRICE - 1000, fee=1000)
        self.node.admission.submit(wire(drain))
        self.block()
        self.assertEqual(self.balance(ESCROW), 0)
        self.refuse(self.claim(self.payload(payment)), "escrow_insufficient")

    def test_escrow_insufficient_when_the_block_is_built(self):
        """Admitted while escrow held the price; left out, recorded failed, nothing half-applied."""
        payment = self.pay(amount=PRICE)
        drain = transfer(ESCROW, 1, BOB, PRICE - 1000, fee=1000)
        self.node.admission.submit(wire(drain))  # pending, ahead of the claim
        tx = self.claim(self.payload(payment))
        self.accept(tx)
        before = self.balances()
        b = self.block()
        self.assertEqual(b["txs"], [drain.hash])
        got = self.node.queries.get_tx(tx.hash)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["receipt"]["error"]["code"], "escrow_insufficient")
        self.assertNotIn(tx.hash, self.node.mempool)
        self.assertEqual(self.balance(MINER), 0)
        self.assertEqual(self.balance(COORDINATOR), before[COORDINATOR.address])
        self.assertIsNone(self.node.queries.get_receipt("r1"))
        self.assertEqual(self.node.store.entry("pay", payment.hash)["claimed"], "")
        self.assertEqual(self.node.mempool.attestations(), {})
        self.assertSupplyConsistent()

    def test_fee_above_payout_is_refused(self):
        """A miner with no balance whose fee is more than the claim pays:
        refused at admission, before the coordinator is asked."""
        mint, _, _ = self.settle()
        payment = self.pay()
        tx = self.claim(self.payload(payment), fee=PRICE + mint + 1)
        failure = self.failureResultOf(self.submit(tx), AitError)
        self.assertEqual(failure.value.code, "insufficient_balance")
        self.assertNotIn(tx.hash, self.node.mempool)
        self.assertEqual(self.block()["txs"], [])
        self.assertIsNone(self.node.queries.get_receipt("r1"))
        # The receipt and its payment are still there to claim properly.
        again = self.claim(self.payload(payment), fee=PRICE + mint)
        self.accept(again)
        self.block()
        self.assertEqual(self.balance(MINER), 0)
        self.assertEqual(self.node.queries.get_receipt("r1")["paid"]["tx"], again.hash)

    def test_receipts_disabled_without_coordinator(self):
        for params in ({"coordinator": None}, {"escrow": None}):
            node = make_node(self, doc=doc(**params))
            node.admission.attestor = self.attestor
            pay = transfer(ALICE, 1, ESCROW, PRICE)
            node.admission.submit(wire(pay))
            node.pipeline.propose()
            tx = sign_tx(MINER, CHAIN_ID, CLAIM, 1, FEE, self.payload(pay))
            err = self.failureResultOf(self.submit(tx, node=node), AitError).value
            self.assertEqual(err.code, "receipts_disabled")
            self.assertEqual(node.pipeline.propose()["header"]["height"], 2)
        # The attestation check says so too.
        with self.assertRaises(AitError) as cm:
            check_attestation({}, self.payload(pay), Genesis(doc(coordinator=None)).params, CHAIN_ID)
        self.assertEqual(cm.exception.code, "receipts_disabled")

    def test_coordinator_not_configured(self):
        self.node.admission.attestor = None
        payment = self.pay()
        self.refuse(self.claim(self.payload(payment)), "coordinator_not_configured", status=424)

    def test_the_one_submit_path_takes_a_claim_through_the_coordinator(self):
        # One admission entry for one transaction: a claim sent there is
        # attested like one sent to submitReceipt, never admitted without.
        payment = self.pay()
        tx = self.claim(self.payload(payment))
        d = self.node.admission.submit(wire(tx))
        self.assertEqual(self.successResultOf(d), tx.hash)
        self.assertIsNotNone(self.node.mempool.attestation(tx.hash))

    def test_submit_claim_refuses_other_types(self):
        self.refuse(transfer(ALICE, 1, BOB, 5), "not_a_claim")

    def test_bad_transaction_signature(self):
        payment = self.pay()
        w = wire(self.claim(self.payload(payment)))
        w["fee"] += 1
        self.refuse(w, "bad_signature")

    def test_fee_too_low(self):
        payment = self.pay()
        self.refuse(self.claim(self.payload(payment), fee=10), "fee_too_low")


class AttestationRuleTests(ReceiptCase):
    def refuse_answer(self, make_answer, code, **fields):
        payment = self.pay()
        self.attestor.answer = make_answer
        err = self.refuse(self.claim(self.payload(payment, **fields)), code)
        self.assertEqual(len(self.attestor.calls), 1)
        self.assertEqual(self.node.mempool.attestations(), {})
        return err

    def test_signed_by_another_key(self):
        self.refuse_answer(lambda r: forged(r, signer=OTHER, coordinator=COORDINATOR.address),
                           "attestation_bad_signature")

    def test_signed_for_another_chain(self):
        self.refuse_answer(lambda r: forged(r, chain_id="ait-other"), "attestation_bad_signature")

    def test_signature_of_other_content(self):
        # The coordinator's own signature, but of another answer.
        self.refuse_answer(lambda r: dict(forged(r), sig=forged(dict(r, output_hash="x"))["sig"]),
                           "attestation_bad_signature")

    def test_wrong_coordinator(self):
        self.refuse_answer(lambda r: forged(r, signer=OTHER), "attestation_wrong_coordinator")

    def test_mismatch(self):
        for name, value in [("price", PRICE + 1), ("compute_units", UNITS + 1), ("receipt_id", "r9"),
                            ("job_id", "job_2"), ("client", BOB.address), ("miner", OTHER.address),
                            ("output_hash", "sha256:00")]:
            self.attestor.calls.clear()
            self.refuse_answer(lambda r: forged(dict(r, **{name: value})), "attestation_mismatch")

    def test_mismatch_is_by_canonical_value(self):
        """In Python True == 1; on the chain a `true` price is not the price 1."""
        self.refuse_answer(lambda r: forged(dict(r, price=True)), "attestation_mismatch", price=1)
        self.attestor.calls.clear()
        self.refuse_answer(lambda r: forged(dict(r, compute_units=True)), "attestation_mismatch", compute_units=1)

    def test_job_not_found(self):
        # The mock coordinator: any job outside job_1..job_1000000.
        for job in ("nope", "job_0", "job_1000001"):
            payment = self.pay()
            self.refuse(self.claim(self.payload(payment, job_id=job, receipt_id=job)), "job_not_found")
        self.attestor.calls.clear()
        self.refuse_answer(lambda r: forged(r, exists=False), "job_not_found")

    def test_job_not_paid(self):
        self.refuse_answer(lambda r: forged(r, paid=False), "job_not_paid")

    def test_job_double_spent(self):
        self.refuse_answer(lambda r: forged(r, not_double_spent=False), "job_double_spent")

    def test_job_double_spent_by_the_mock(self):
        """The mock coordinator: job_5 attested for r1, then asked for r2."""
        self.claim_included("r1", job_id="job_5")
        payment = self.pay()
        self.refuse(self.claim(self.payload(payment, receipt_id="r2", job_id="job_5")), "job_double_spent")
        # Asking again for r1 (a replay) is not a double spend to the mock,
        # but the chain refuses the receipt itself.
        self.refuse(self.claim(self.payload(payment, receipt_id="r1", job_id="job_5")), "receipt_already_claimed")

    def test_malformed(self):
        cases = [
            lambda r: forged(r, drop=("paid",)),
            lambda r: forged(r, drop=("output_hash",)),
            lambda r: forged(r, extra={"note": "hi"}),
            lambda r: {k: v for k, v in forged(r).items() if k != "sig"},
            lambda r: dict(forged(r), sig="zz" * 64),
            lambda r: dict(forged(r), sig=forged(r)["sig"][:-2]),
            lambda r: dict(forged(r), sig=forged(r)["sig"].upper()),
            lambda r: dict(forged(r), price=1.5),  # outside the consensus value space
            lambda r: dict(forged(r), price=-1),
            lambda r: dict(forged(r), exists=None),
        ]
        for make in cases:
            self.attestor.calls.clear()
            self.refuse_answer(make, "attestation_malformed")

    def test_flags_must_be_true(self):
        self.refuse_answer(lambda r: forged(r, exists=1), "job_not_found")
        self.attestor.calls.clear()
        self.refuse_answer(lambda r: forged(r, paid="yes"), "job_not_paid")

    def test_coordinator_failure_refuses_only_that_claim(self):
        def down(r):
            raise AitError("coordinator_unavailable", "cannot reach the coordinator", status=424)
        self.refuse_answer(down, "coordinator_unavailable", receipt_id="r1")
        self.attestor.answer = None
        payment = self.pay()
        self.accept(self.claim(self.payload(payment, receipt_id="r2")))

    def test_check_attestation_accepts_the_mock(self):
        payment = self.pay()
        p = self.payload(payment)
        answer = self.mock.attest(attestation_request(p))
        self.assertEqual(set(answer), set(ANSWER_FIELDS))
        check_attestation(answer, p, self.node.queries.get_params(), CHAIN_ID)
        with self.assertRaises(AitError) as cm:
            check_attestation(None, p, self.node.queries.get_params(), CHAIN_ID)
        self.assertEqual(cm.exception.code, "attestation_missing")


def without_payment(request):
    """The request as it was before payments were named: the job only."""
    return {k: v for k, v in request.items() if k != "client_payment_tx"}


class PaymentBindingTests(ReceiptCase):
    """A claim settles its job only with the payment the coordinator
    attests is that job's: the request names the claim's payment, and the
    signed answer must name the same one."""

    def two_payments(self):
        """Two escrow payments of the same client (ALICE), both included."""
        return self.pay(), self.pay(amount=PRICE + 7)

    def test_the_request_names_the_claims_payment(self):
        payment = self.pay()
        tx = self.claim(self.payload(payment))
        self.accept(tx)
        (request,) = self.attestor.calls
        self.assertEqual(request, attestation_request(tx.payload))
        self.assertEqual(request["client_payment_tx"], payment.hash)
        answer = self.node.mempool.attestation(tx.hash)
        self.assertEqual(answer["client_payment_tx"], payment.hash)
        check_attestation(answer, tx.payload, self.node.queries.get_params(), CHAIN_ID)

    def test_an_answer_naming_another_payment_of_the_client_is_refused(self):
        """The job was paid by ``job_payment``; the miner claims it with the
        client's other payment; the coordinator's answer names the job's."""
        job_payment, other = self.two_payments()
        self.attestor.answer = lambda r: forged(dict(r, client_payment_tx=job_payment.hash))
        err = self.refuse(self.claim(self.payload(other)), "attestation_wrong_payment")
        self.assertIn(other.hash, err.message)
        self.assertEqual(self.node.mempool.attestations(), {})
        self.assertEqual(self.node.store.entry("pay", other.hash)["claimed"], "")
        # The same job with its own payment: attested and settled.
        self.attestor.answer = None
        tx = self.claim(self.payload(job_payment))
        self.accept(tx)
        self.block()
        self.assertEqual(self.node.store.entry("pay", job_payment.hash)["claimed"], "r1")
        self.assertEqual(self.node.store.entry("pay", other.hash)["claimed"], "")

    def test_an_answer_that_names_no_payment_is_refused(self):
        """An answer that attests the job but not its payment (as every
        answer did before) no longer settles a claim."""
        _, other = self.two_payments()
        self.attestor.answer = lambda r: forged(without_payment(r))
        self.refuse(self.claim(self.payload(other)), "attestation_wrong_payment")
        # Nor does one naming the payment in another spelling.
        self.attestor.answer = lambda r: forged(dict(r, client_payment_tx=other.hash.upper()))
        self.refuse(self.claim(self.payload(other, receipt_id="r2")), "attestation_wrong_payment")

    def test_the_mock_coordinator_echoes_the_payment(self):
        payment = self.pay()
        request = attestation_request(self.payload(payment))
        self.assertEqual(self.mock.attest(request)["client_payment_tx"], payment.hash)
        for bad in ("", "AB" * 32, "ab" * 31, 5, None):
            with self.assertRaises(AitError):
                self.mock.attest(dict(request, client_payment_tx=bad))
        with self.assertRaises(AitError):
            self.mock.attest(without_payment(request))


# -- effects -----------------------------------------------------------------

class EffectTests(ReceiptCase):
    def test_miner_sender_with_no_balance(self):
        payment = self.pay()
        self.assertEqual(self.balance(MINER), 0)
        before, supply0 = self.balances(), self.node.queries.get_supply()
        tx = self.claim(self.payload(payment), fee=FEE)
        self.accept(tx)
        b = self.block()
        self.assertEqual(b["txs"], [tx.hash])
        mint, cut, tcut = self.settle()
        self.assertEqual((mint, cut, tcut), (UNITS * 1000, UNITS * 1000 * 500 // BPS, 0))
        after = self.balances()
        self.assertEqual(after[MINER.address], PRICE + mint - FEE)
        self.assertEqual(after.get(ESCROW.address, 0), before[ESCROW.address] - PRICE)
        self.assertEqual(after[COORDINATOR.address], before[COORDINATOR.address] + cut)
        self.assertEqual(after[AUTHORITY.address], before.get(AUTHORITY.address, 0) + FEE)
        self.assertEqual(after[ALICE.address], before[ALICE.address])
        self.assertEqual(self.node.queries.get_balance(MINER.address)["nonce"], 1)
        supply = self.assertSupplyConsistent()
        self.assertEqual(supply["receipts"], supply0["receipts"] + mint)
        self.assertEqual(supply["coordinator"], supply0["coordinator"] + cut)
        self.assertEqual(supply["treasury"], 0)
        self.assertEqual(supply["total"], supply0["total"] + mint + cut)
        rec = self.node.queries.get_receipt("r1")["paid"]
        self.assertEqual(rec, {
            "tx": tx.hash, "height": b["header"]["height"], "job_id": "job_1", "client": ALICE.address,
            "miner": MINER.address, "compute_units": UNITS, "price": PRICE, "payment_tx": payment.hash,
            "mint": mint, "miner_paid": PRICE + mint, "coordinator_cut": cut, "treasury_cut": 0, "fee": FEE,
        })
        self.assertEqual(self.node.store.entry("pay", payment.hash),
                         {"client": ALICE.address, "amount": PRICE, "claimed": "r1"})
        result = self.node.queries.get_tx(tx.hash)["receipt"]
        self.assertEqual(result["minted"], mint)
        self.assertEqual(result["fee"], FEE)
        self.assertEqual({c["address"]: c["delta"] for c in result["changes"]},
                         {ESCROW.address: -PRICE, MINER.address: PRICE + mint - FEE, COORDINATOR.address: cut})

    def test_coordinator_sender_pays_the_fee_from_its_balance(self):
        payment = self.pay()
        before = self.balances()
        tx = self.claim(self.payload(payment), sender=COORDINATOR, fee=FEE)
        self.accept(tx)
        self.block()
        mint, cut, _ = self.settle()
        after = self.balances()
        self.assertEqual(after[MINER.address], PRICE + mint)
        self.assertEqual(after[COORDINATOR.address], before[COORDINATOR.address] + cut - FEE)
        self.assertEqual(after.get(ESCROW.address, 0), before[ESCROW.address] - PRICE)
        self.assertEqual(after[AUTHORITY.address], before[AUTHORITY.address] + FEE)
        self.assertEqual(self.node.queries.get_balance(COORDINATOR.address)["nonce"], 1)
        self.assertEqual(self.node.queries.get_balance(MINER.address)["nonce"], 0)
        self.assertSupplyConsistent()

    def test_miner_with_a_balance(self):
        self.node.admission.submit(wire(transfer(ALICE, self.next_nonce(ALICE), MINER, 777)))
        self.block()
        payment = self.pay()
        self.accept(self.claim(self.payload(payment)))
        self.block()
        mint, _, _ = self.settle()
        self.assertEqual(self.balance(MINER), 777 + PRICE + mint - FEE)

    def test_surplus_payment_stays_in_escrow(self):
        payment = self.pay(amount=PRICE * 3)
        self.accept(self.claim(self.payload(payment)))
        self.block()
        self.assertEqual(self.balance(ESCROW), PRICE * 2)
        self.assertSupplyConsistent()


class TreasuryEffectTests(ReceiptCase):
    genesis_params = {"treasury": CAROL.address, "treasury_ratio_bps": 125, "coordinator_ratio_bps": 333}

    def test_cuts_are_floored(self):
        payment = self.pay()
        before, supply0 = self.balances(), self.node.queries.get_supply()
        self.accept(self.claim(self.payload(payment)))
        self.block()
        mint = UNITS * 1000
        cut, tcut = mint * 333 // BPS, mint * 125 // BPS
        self.assertEqual(self.settle(), (mint, cut, tcut))
        self.assertEqual((cut, tcut), (432, 162))  # 432.9 and 162.5, floored
        after = self.balances()
        self.assertEqual(after[CAROL.address], before.get(CAROL.address, 0) + tcut)
        self.assertEqual(after[COORDINATOR.address], before[COORDINATOR.address] + cut)
        self.assertEqual(after[MINER.address], PRICE + mint - FEE)
        supply = self.assertSupplyConsistent()
        self.assertEqual(supply["treasury"], supply0["treasury"] + tcut)
        self.assertEqual(supply["coordinator"], supply0["coordinator"] + cut)
        self.assertEqual(supply["receipts"], supply0["receipts"] + mint)
        self.assertEqual(self.node.queries.get_receipt("r1")["paid"]["treasury_cut"], tcut)


class TreasuryRatioWithoutTreasuryTests(ReceiptCase):
    genesis_params = {"treasury_ratio_bps": 1000}

    def test_no_treasury_no_cut(self):
        payment = self.pay()
        self.accept(self.claim(self.payload(payment)))
        self.block()
        self.assertEqual(self.node.queries.get_receipt("r1")["paid"]["treasury_cut"], 0)
        self.assertEqual(self.assertSupplyConsistent()["treasury"], 0)


# -- blocks from elsewhere ---------------------------------------------------

class ImportTests(ReceiptCase):
    def setUp(self):
        super().setUp()
        self.payment, self.tx, self.claim_block = self.claim_included("r1")
        self.node.admission.submit(wire(transfer(ALICE, self.next_nonce(ALICE), BOB, 9)))
        self.block()
        self.node2 = make_node(self, doc=self.doc, key=None)

    def parsed(self, block):
        return [self.node2.admission.parse(self.node.store.tx_record(h)["tx"]) for h in block["txs"]]

    def import_up_to(self, height):
        for h in range(self.node2.queries.get_head()["height"] + 1, height + 1):
            blk = self.node.store.block_at(h)
            self.node2.pipeline.import_block(blk, self.parsed(blk))

    def assertBadBlock(self, block, txs=None):
        head = self.node2.queries.get_head()
        with self.assertRaises(AitError) as cm:
            self.node2.pipeline.import_block(block, txs if txs is not None else self.parsed(block))
        self.assertEqual(cm.exception.code, "bad_block")
        self.assertEqual(self.node2.queries.get_head(), head)
        return cm.exception

    def test_second_node_reaches_the_same_state(self):
        self.import_up_to(self.node.queries.get_head()["height"])
        self.assertEqual(self.node2.queries.get_head(), self.node.queries.get_head())
        self.assertEqual(self.snapshot(self.node2), self.snapshot(self.node))
        self.assertEqual(self.node2.store.state_root(), self.node.store.state_root())
        self.assertEqual(self.node2.queries.get_receipt("r1"), self.node.queries.get_receipt("r1"))
        self.assertEqual(self.node2.queries.get_tx(self.tx.hash), self.node.queries.get_tx(self.tx.hash))

    def test_tx_root_covers_the_attestation(self):
        att = self.claim_block["attestations"][self.tx.hash]
        check_attestation(att, self.tx.payload, self.node.queries.get_params(), CHAIN_ID)
        self.assertEqual(self.claim_block["header"]["tx_root"], tx_root([self.tx.hash], {self.tx.hash: att}))
        self.assertNotEqual(self.claim_block["header"]["tx_root"], tx_root([self.tx.hash]))
        self.assertNotEqual(tx_root([self.tx.hash], {self.tx.hash: dict(att, price=PRICE + 1)}),
                            self.claim_block["header"]["tx_root"])

    def test_tampered_attestation_is_a_bad_block(self):
        h = self.claim_block["header"]["height"]
        self.import_up_to(h - 1)
        original = self.node.store.block_at(h)
        for name, value in [("price", PRICE + 1), ("paid", False), ("sig", "00" * 64), ("exists", True)]:
            bad = copy.deepcopy(original)
            bad["attestations"][self.tx.hash][name] = value
            if bad == original:
                continue
            err = self.assertBadBlock(bad)
            self.assertIn("tx_root", err.message)
        dropped = copy.deepcopy(original)
        del dropped["attestations"][self.tx.hash]
        self.assertBadBlock(dropped)
        dropped["attestations"] = None
        self.assertBadBlock(dropped)
        # An attestation for a transaction not in the block.
        alien = copy.deepcopy(original)
        alien["attestations"]["ab" * 32] = original["attestations"][self.tx.hash]
        self.assertBadBlock(alien)
        # The genuine block still imports, and the chain goes on.
        self.import_up_to(self.node.queries.get_head()["height"])
        self.assertEqual(self.node2.queries.get_head(), self.node.queries.get_head())

    def resigned(self, block, atts):
        """What a dishonest authority would sign: tx_root recomputed to fit atts."""
        bad = copy.deepcopy(block)
        bad["attestations"] = atts
        bad["header"]["tx_root"] = tx_root(bad["txs"], atts)
        bad["hash"] = block_hash(bad["header"])
        bad["sig"] = AUTHORITY.sign(bytes.fromhex(bad["hash"])).hex()
        return bad

    def test_a_signed_block_with_a_bad_attestation_is_refused_on_import(self):
        h = self.claim_block["header"]["height"]
        self.import_up_to(h - 1)
        original = self.node.store.block_at(h)
        att = original["attestations"][self.tx.hash]
        request = attestation_request(self.tx.payload)
        for atts in [
            {},  # no attestation at all
            {self.tx.hash: dict(att, price=PRICE + 1)},  # signature no longer fits
            {self.tx.hash: forged(request, paid=False)},
            {self.tx.hash: forged(request, signer=OTHER)},
            {self.tx.hash: forged(dict(request, price=PRICE - 1))},
        ]:
            err = self.assertBadBlock(self.resigned(original, atts))
            self.assertIn("is invalid", err.message)
        self.import_up_to(self.node.queries.get_head()["height"])
        self.assertEqual(self.node2.queries.get_head(), self.node.queries.get_head())

    def test_a_block_settling_a_job_with_another_payment_is_refused(self):
        """A block whose claim's attestation names another payment of the
        same client, or no payment, is invalid, however it is signed."""
        self.import_up_to(self.node.queries.get_head()["height"])
        other = self.pay()  # the client's second payment, in the next block
        self.import_up_to(self.node.queries.get_head()["height"])
        claim = self.claim(self.payload(other, receipt_id="r2", job_id="job_2"))
        request = attestation_request(claim.payload)
        for att in (forged(dict(request, client_payment_tx=self.payment.hash)), forged(without_payment(request))):
            err = self.assertBadBlock(self.claim_on_head(claim, att), [claim])
            self.assertIn("payment", err.message)
        self.assertEqual(self.node2.store.entry("pay", other.hash)["claimed"], "")

    def claim_on_head(self, claim, att):
        """A block on node's head holding claim with att, signed by the
        authority on its turn (genesis block_interval_ms), with no votes:
        only its claim can make it wrong."""
        parent = self.node.chain.head_header()
        header = dict(parent, parent=self.node.queries.get_head()["hash"], height=parent["height"] + 1,
                      timestamp=parent["timestamp"] + 10, votes_root="0" * 64,
                      proposer=AUTHORITY.address, tx_root=tx_root([claim.hash], {claim.hash: att}))
        block = {"header": header, "txs": [claim.hash], "attestations": {claim.hash: att}}
        block["hash"] = block_hash(header)
        block["sig"] = AUTHORITY.sign(bytes.fromhex(block["hash"])).hex()
        return block

    def test_an_attestation_beside_a_non_claim_is_a_bad_block(self):
        h = self.claim_block["header"]["height"]
        self.import_up_to(h)
        original = self.node.store.block_at(h + 1)  # a TRANSFER only
        self.assertEqual(original["attestations"], {})
        (transfer_hash,) = original["txs"]
        att = self.claim_block["attestations"][self.tx.hash]
        for junk in ({"note": "x" * 1000}, att):
            err = self.assertBadBlock(self.resigned(original, {transfer_hash: junk}))
            self.assertIn("attestations", err.message)
        self.import_up_to(h + 1)
        self.assertNotIn("attestation", self.node2.queries.get_tx(transfer_hash))

    def test_import_rechecks_the_chain_rules(self):
        """A block that claims the same receipt twice is refused."""
        self.import_up_to(self.node.queries.get_head()["height"])
        payment2 = self.pay()
        self.import_up_to(self.node.queries.get_head()["height"])
        dup = self.claim(self.payload(payment2, receipt_id="r1", job_id="job_2"), nonce=2)
        att = forged(attestation_request(dup.payload))
        err = self.assertBadBlock(self.claim_on_head(dup, att), [dup])
        self.assertIn("was claimed before", err.message)


# -- replays and duplicates --------------------------------------------------

class ReplayTests(ReceiptCase):
    def test_same_claim_twice(self):
        payment, tx = self.good_claim()
        self.assertEqual(self.successResultOf(self.submit(tx)), tx.hash)
        self.assertEqual(self.successResultOf(self.submit(tx)), tx.hash)
        self.assertEqual(len(self.node.mempool), 1)
        self.block()
        self.assertEqual(self.successResultOf(self.submit(tx)), tx.hash)  # included: known
        self.block()
        mint, _, _ = self.settle()
        self.assertEqual(self.balance(MINER), PRICE + mint - FEE)
        self.assertEqual(len(self.attestor.calls), 1)

    def test_resigned_with_another_nonce_or_fee(self):
        payment, tx, _ = self.claim_included()
        mint, _, _ = self.settle()
        paid = self.balance(MINER)
        for sender, fee in [(MINER, FEE), (MINER, FEE + 1), (COORDINATOR, FEE), (COORDINATOR, FEE * 2)]:
            again = self.claim(tx.payload, sender=sender, fee=fee)
            self.assertNotEqual(again.hash, tx.hash)
            self.refuse(again, "receipt_already_claimed")
        self.assertEqual(self.balance(MINER), paid)
        self.assertEqual(self.balance(ESCROW), 0)

    def test_resigned_while_pending(self):
        payment, tx = self.good_claim()
        self.accept(tx)
        # Another nonce: the receipt is already pending.
        self.refuse(self.claim(tx.payload, nonce=2), "receipt_already_claimed", status=409)
        # Same nonce, same or lower fee: not a replacement.
        self.refuse(self.claim(tx.payload, nonce=1, fee=FEE - 1), "replacement_fee_too_low", status=409)
        # Same nonce, higher fee: replaces the pending claim; it pays once.
        better = self.claim(tx.payload, nonce=1, fee=FEE + 100)
        self.assertEqual(self.successResultOf(self.submit(better)), better.hash)
        self.assertNotIn(tx.hash, self.node.mempool)
        b = self.block()
        self.assertEqual(b["txs"], [better.hash])
        self.assertEqual(set(b["attestations"]), {better.hash})
        mint, _, _ = self.settle()
        self.assertEqual(self.balance(MINER), PRICE + mint - FEE - 100)
        self.assertEqual(self.node.mempool.attestations(), {})
        self.refuse(tx, "receipt_already_claimed")

    def test_re_encoded_claim_has_the_same_hash(self):
        payment, tx = self.good_claim()
        rpc, stub = make_rpc(self.node)
        w = wire(tx)
        reordered = {k: w[k] for k in reversed(list(w))}
        reordered["payload"] = {k: w["payload"][k] for k in sorted(w["payload"], reverse=True)}
        bodies = [
            json.dumps(w).encode(),
            json.dumps(reordered, indent=3).encode(),
            json.dumps(dict(w, chain_id=CHAIN_ID), separators=(",", ":"), sort_keys=True).encode(),
            b"\n  " + json.dumps(reordered, ensure_ascii=True).encode() + b"\r\n",
        ]
        for raw in bodies:
            d = stub.post("http://node/rpc/submitReceipt", data=raw, headers={b"content-type": [b"application/json"]})
            stub.flush()
            resp = self.successResultOf(d)
            body = self.successResultOf(stub.json_content(resp))
            self.assertEqual((resp.code, body), (200, {"txHash": tx.hash}))
        self.assertEqual(len(self.node.mempool), 1)
        self.block()
        for raw in bodies:
            d = stub.post("http://node/rpc/submitReceipt", data=raw)
            stub.flush()
            self.assertEqual(self.successResultOf(stub.json_content(self.successResultOf(d))), {"txHash": tx.hash})
        self.block()
        mint, _, _ = self.settle()
        self.assertEqual(self.balance(MINER), PRICE + mint - FEE)
        self.assertEqual(len(self.node.store.entries("rcpt")), 1)


# -- identifiers are bounded in UTF-8 bytes -------------------------------------

class IdentifierTests(ReceiptCase):
    def test_a_long_multibyte_receipt_id_never_halts_the_chain(self):
        """128 code points of 4 UTF-8 bytes each: once admitted, its state key
        rcpt/<id> passed LMDB's 511-byte key limit and every proposal raised."""
        payment = self.pay()
        rid = "\U0001F600" * 128
        self.assertEqual(len(rid.encode()), 512)
        err = self.refuse(self.claim(self.payload(payment, receipt_id=rid), fee=BIG_FEE), "bad_text")
        self.assertIn("receipt_id", err.message)
        self.assertIn("128 bytes", err.message)
        self.assertEqual(self.attestor.calls, [])
        for field in ("job_id", "output_hash"):
            self.refuse(self.claim(self.payload(payment, **{field: "\U0001F600" * 128}), fee=BIG_FEE), "bad_text")
        # The chain goes on, and a claim on the same payment still settles.
        self.claim_included("r-ok")

    def test_identifiers_at_their_byte_bounds_are_included(self):
        rid, job, out = "\U0001F600" * 32, "\u00e9" * 64, "\u20ac" * 85 + "a"
        self.assertEqual([len(v.encode()) for v in (rid, job, out)], [128, 128, 256])
        self.attestor.answer = forged  # the mock coordinator knows only jobs named job_<n>
        payment = self.pay()
        ids = {"receipt_id": rid, "job_id": job, "output_hash": out}
        for field, value in ids.items():
            self.refuse(self.claim(self.payload(payment, **dict(ids, **{field: value + "a"})), fee=BIG_FEE), "bad_text")
        tx = self.claim(self.payload(payment, **ids), fee=BIG_FEE)
        self.accept(tx)
        self.assertIn(tx.hash, self.block()["txs"])
        self.assertEqual(self.node.queries.get_receipt(rid)["paid"]["job_id"], job)
        self.assertEqual([k for k, _ in self.node.store.entries("rcpt")], [rid])


class LargestClaimsTests(ReceiptCase):
    """Claims of the largest size fill blocks by bytes: every block stays
    under max_block_bytes and goes to peers in one frame.  (At the default
    max_block_txs of 10000, about 7,100 of them passed the 16 MiB frame.)"""

    genesis_params = {"max_block_bytes": P.MIN_BLOCK_BYTES}
    N = 60

    def largest_claim(self, payment, i):
        ids = {"receipt_id": "\U0001F600" * 31 + f"{i:04d}", "job_id": "j" * 124 + f"{i:04d}",
               "output_hash": "\u20ac" * 85 + "a"}
        self.assertEqual([len(v.encode()) for v in ids.values()], [128, 128, 256])
        return self.claim(self.payload(payment, compute_units=2**40, **ids), fee=BIG_FEE)

    def test_blocks_of_the_largest_claims_stay_under_the_byte_limit(self):
        self.attestor.answer = forged
        payments = [self.pay(include=False) for _ in range(self.N)]
        self.block()
        claims = []
        for i, p in enumerate(payments):
            claims.append(self.largest_claim(p, i))
            self.accept(claims[-1])
        node2 = make_node(self, doc=self.doc, key=None)
        self.import_all(node2)
        per_claim = tx_bytes(claims[0], self.node.mempool.attestation(claims[0].hash))
        self.assertGreater(per_claim, 2000)
        sizes = []
        while len(self.node.mempool):
            b = self.block()
            entry = self.node.chain.block_entry(b["header"]["height"])
            txs = [self.node.admission.parse(w) for w in entry["txs"]]
            size = block_bytes(txs, b["attestations"])
            self.assertLessEqual(size, P.MIN_BLOCK_BYTES)
            self.assertLessEqual(len(p2p.encode("block", entry)), size + ENTRY_OVERHEAD)
            sizes.append(size)
            self.import_all(node2)
        self.assertGreaterEqual(len(sizes), 3)
        self.assertTrue(all(s > P.MIN_BLOCK_BYTES - per_claim for s in sizes[:-1]), sizes)  # full blocks
        self.assertEqual(len(self.node.store.entries("rcpt")), self.N)
        self.assertEqual(node2.queries.get_head(), self.node.queries.get_head())
        self.assertEqual(self.snapshot(node2), self.snapshot(self.node))
        self.assertSupplyConsistent()
        # At the real limits: the default max_block_txs of such claims passes
        # a frame, the default max_block_bytes keeps a block well inside it.
        self.assertGreater(7_100 * per_claim, p2p.MAX_MESSAGE)
        self.assertLessEqual(P.DEFAULT_MAX_BLOCK_BYTES + ENTRY_OVERHEAD, p2p.MAX_MESSAGE)
        self.assertLessEqual(P.MAX_BLOCK_BYTES + ENTRY_OVERHEAD, p2p.MAX_MESSAGE)

    def import_all(self, node2):
        for h in range(node2.queries.get_head()["height"] + 1, self.node.queries.get_head()["height"] + 1):
            entry = self.node.chain.block_entry(h)
            node2.pipeline.import_block(entry["block"], [node2.admission.parse(w) for w in entry["txs"]])


# -- queries and RPC ---------------------------------------------------------

class RPCTests(ReceiptCase):
    def setUp(self):
        super().setUp()
        self.rpc, self.stub = make_rpc(self.node)

    def call(self, method, path, body=None, stub=None):
        stub = stub or self.stub
        data = None if body is None else json.dumps(body).encode()
        d = stub.request(method, "http://node" + path, data=data,
                         headers={b"content-type": [b"application/json"]})
        stub.flush()
        resp = self.successResultOf(d)
        return resp.code, self.successResultOf(stub.json_content(resp))

    def test_submit_receipt_and_queries_show_the_attestation(self):
        payment, tx = self.good_claim()
        self.assertEqual(self.call("POST", "/rpc/submitReceipt", wire(tx)), (200, {"txHash": tx.hash}))
        status, pending = self.call("GET", f"/rpc/getTx/{tx.hash}")
        self.assertEqual((status, pending["status"]), (200, "pending"))
        att = pending["attestation"]
        check_attestation(att, tx.payload, self.node.queries.get_params(), CHAIN_ID)
        self.assertEqual(self.call("GET", "/rpc/getReceipt/r1")[0], 404)
        b = self.block()
        status, got = self.call("GET", f"/rpc/getTx/{tx.hash}")
        self.assertEqual((status, got["status"], got["attestation"]), (200, "included", att))
        self.assertEqual(got["block"]["height"], b["header"]["height"])
        status, full = self.call("GET", f"/rpc/getBlock/{b['header']['height']}?full=true")
        self.assertEqual(status, 200)
        self.assertEqual(full["attestations"], {tx.hash: att})
        self.assertEqual([t["type"] for t in full["txs"]], [CLAIM])
        status, short = self.call("GET", f"/rpc/getBlock/{b['hash']}")
        self.assertEqual(short["txs"], [tx.hash])
        status, rcpt = self.call("GET", "/rpc/getReceipt/r1")
        self.assertEqual(status, 200)
        self.assertEqual(rcpt["receipt_id"], "r1")
        self.assertEqual(rcpt["status"], "included")
        self.assertEqual(rcpt["attestation"], att)
        self.assertEqual(rcpt["claim"]["payload"], tx.payload)
        self.assertEqual(rcpt["block"], {"height": b["header"]["height"], "hash": b["hash"]})
        mint, cut, _ = self.settle()
        self.assertEqual(rcpt["paid"]["miner_paid"], PRICE + mint)
        self.assertEqual(rcpt["paid"]["coordinator_cut"], cut)
        status, supply = self.call("GET", "/rpc/getSupply")
        self.assertEqual((status, supply), (200, self.node.queries.get_supply()))
        self.assertEqual(supply["receipts"], mint)
        self.assertEqual(supply["total"], sum(self.balances().values()))

    def test_submit_receipt_refuses_a_transfer(self):
        status, body = self.call("POST", "/rpc/submitReceipt", wire(transfer(ALICE, 1, BOB, 5)))
        self.assertEqual((status, body["error"]["code"]), (400, "not_a_claim"))
        self.assertEqual(len(self.node.mempool), 0)

    def test_send_tx_accepts_a_claim(self):
        payment, tx = self.good_claim()
        self.assertEqual(self.call("POST", "/rpc/sendTx", wire(tx)), (200, {"txHash": tx.hash}))
        self.assertIn(tx.hash, self.node.mempool)

    def test_send_txs_accepts_a_claim(self):
        payment, tx = self.good_claim()
        bad = self.claim(self.payload(payment, receipt_id="r2"), sender=BOB)
        status, body = self.call("POST", "/rpc/sendTxs", [wire(tx), wire(bad)])
        self.assertEqual(status, 200)
        self.assertEqual(body["results"][0], {"txHash": tx.hash})
        self.assertEqual(body["results"][1]["error"]["code"], "claim_sender_not_allowed")

    def test_refusals_over_rpc(self):
        payment, tx = self.good_claim()
        self.node.admission.attestor = None
        status, body = self.call("POST", "/rpc/submitReceipt", wire(tx))
        self.assertEqual((status, body["error"]["code"]), (424, "coordinator_not_configured"))
        self.node.admission.attestor = self.attestor
        self.attestor.answer = lambda r: forged(r, signer=OTHER)
        status, body = self.call("POST", "/rpc/sendTx", wire(tx))
        self.assertEqual((status, body["error"]["code"]), (400, "attestation_wrong_coordinator"))
        self.attestor.answer = None
        self.assertEqual(self.call("POST", "/rpc/submitReceipt", wire(tx)), (200, {"txHash": tx.hash}))
        self.block()
        again = self.claim(tx.payload)
        status, body = self.call("POST", "/rpc/submitReceipt", wire(again))
        self.assertEqual((status, body["error"]["code"]), (409, "receipt_already_claimed"))

    def test_get_receipt_unknown(self):
        status, body = self.call("GET", "/rpc/getReceipt/nope")
        self.assertEqual((status, body["error"]["code"]), (404, "not_found"))

    def test_attest_route_is_off_without_a_mock(self):
        request = attestation_request(self.payload("ab" * 32))
        for path in ("/rpc/attest", "/rpc/attest/receipt"):
            status, body = self.call("POST", path, request)
            self.assertEqual((status, body["error"]["code"]), (404, "not_found"))

    def test_attest_route_with_a_mock(self):
        rpc, stub = make_rpc(self.node, mock_coordinator=MockCoordinator(COORDINATOR, CHAIN_ID))
        p = self.payload("ab" * 32)
        request = attestation_request(p)
        for path in ("/rpc/attest", "/rpc/attest/receipt"):
            status, answer = self.call("POST", path, request, stub=stub)
            self.assertEqual(status, 200)
            check_attestation(answer, p, self.node.queries.get_params(), CHAIN_ID)
        status, answer = self.call("POST", "/rpc/attest", dict(request, job_id="nope"), stub=stub)
        self.assertEqual((status, answer["exists"], answer["paid"]), (200, False, False))
        status, body = self.call("POST", "/rpc/attest", {"receipt_id": "r1"}, stub=stub)
        self.assertEqual((status, body["error"]["code"]), (400, "missing_field"))


# -- property: nothing pays twice, supply adds up -------------------------------

CLIENTS = [ALICE, BOB]
MINERS = [MINER, MINER2]
# Most claims are well formed and point at a real payment, so that many are
# paid; receipt ids and payments collide often (few of each), and a claim
# may break one rule on purpose.
FAULTS = [
    None, None, None, None, None, None,
    "mock",  # the MockCoordinator answers (it says double spent when a job comes back)
    "other_client", "price_above_payment", "unknown_payment", "fee_above_payout",
    "bad_sig", "mismatch", "not_paid", "down",
]

pay_op = st.tuples(st.just("pay"), st.integers(0, 1), st.integers(1, 3000),
                   st.sampled_from([True, True, True, False]),  # to escrow, or elsewhere
                   st.sampled_from([True, True, True, False]))  # a block right after it
claim_op = st.tuples(
    st.just("claim"),
    st.integers(0, 3),  # receipt id
    st.integers(0, 7),  # payment: index (mod the payments made so far)
    st.integers(0, 1),  # miner
    st.sampled_from([False, False, True]),  # sent by the coordinator
    st.integers(1, 4),  # price = payment amount * k // 4
    st.integers(1, 3),  # compute units
    st.sampled_from(FAULTS),
    st.integers(1, 8),  # job
    st.booleans(),  # a block right after it
)
block_op = st.tuples(st.just("block"))
ops = st.lists(st.one_of(claim_op, pay_op, claim_op, block_op), min_size=3, max_size=40)


class PropertyTests(SynchronousTestCase):
    @given(ops)
    def test_no_receipt_or_payment_pays_twice_and_supply_adds_up(self, program):
        # Each example is a fresh chain; on tmpfs when there is one, since
        # LMDB syncs every block to disk.
        shm = "/dev/shm"
        path = tempfile.mkdtemp(prefix="aitnode-prop-", dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None)
        g = Genesis(doc(treasury=CAROL.address, treasury_ratio_bps=125, coordinator_ratio_bps=333))
        node = compose(path, g, Clock(), key=AUTHORITY, map_size=1 << 26)
        try:
            self.run_program(node, program)
        finally:
            node.store.close()
            shutil.rmtree(path, ignore_errors=True)

    def run_program(self, node, program):
        mock = MockCoordinator(COORDINATOR, CHAIN_ID)
        mode = ["mock"]

        def answer(request):
            kind = mode[0]
            if kind == "mock":
                return mock.attest(request)
            if kind == "bad_sig":
                return forged(request, signer=OTHER, coordinator=COORDINATOR.address)
            if kind == "mismatch":
                return forged(dict(request, price=request["price"] + 1))
            if kind == "not_paid":
                return forged(request, paid=False)
            if kind == "down":
                raise AitError("coordinator_unavailable", "down", status=424)
            return forged(request)  # faults the coordinator does not see

        node.admission.attestor = FakeAttestor(mock, answer)

        def nonce(who):
            n = node.chain.view().account(who.address)[1]
            run = node.mempool.by_sender.get(who.address)
            return n + 1 + (len(run) if run else 0)

        # Some included payments to start from, so that claims can succeed early.
        payments = []
        for client, amount in [(ALICE, 3000), (BOB, 2000), (ALICE, 1000), (BOB, 500)]:
            payments.append(transfer(client, nonce(client), ESCROW, amount))
            node.admission.submit(wire(payments[-1]))
        node.pipeline.propose()

        for op in program:
            if op[0] == "pay":
                _, client, amount, to_escrow, then_block = op
                tx = transfer(CLIENTS[client], nonce(CLIENTS[client]), ESCROW if to_escrow else CAROL, amount)
                node.admission.submit(wire(tx))
                payments.append(tx)
                if then_block:
                    node.pipeline.propose()
            elif op[0] == "claim":
                _, rid, pidx, miner, by_coord, k, units, fault, job, then_block = op
                pay = payments[pidx % len(payments)]
                payment, client, price = pay.hash, pay.sender, pay.payload["amount"] * k // 4
                fee = FEE
                if fault == "other_client":
                    client = BOB.address if client == ALICE.address else ALICE.address
                elif fault == "price_above_payment":
                    price = pay.payload["amount"] + 1
                elif fault == "unknown_payment":
                    payment = "cd" * 32
                elif fault == "fee_above_payout":
                    fee = 10**6
                payload = sign_claim(MINERS[miner], CHAIN_ID, receipt_id=f"r{rid}", job_id=f"job_{job}",
                                     client_addr=client, miner_addr=MINERS[miner].address,
                                     compute_units=units, price=price, output_hash=OUTPUT,
                                     client_payment_tx=payment)
                sender = COORDINATOR if by_coord else MINERS[miner]
                tx = sign_tx(sender, CHAIN_ID, CLAIM, nonce(sender), fee, payload)
                mode[0] = fault or "good"
                d = maybeDeferred(node.admission.submit, wire(tx), claims_only=True)
                results = []
                d.addBoth(results.append)
                self.assertEqual(len(results), 1)
                if not isinstance(results[0], str):
                    err = results[0].value
                    self.assertIsInstance(err, AitError)
                    self.assertTrue(400 <= err.status < 500, err)
                if then_block:
                    node.pipeline.propose()
            else:
                node.pipeline.propose()
            self.check_invariants(node)
        node.pipeline.propose()
        self.check_invariants(node)

    def check_invariants(self, node):
        store = node.store
        claims = []
        for h in range(1, node.queries.get_head()["height"] + 1):
            blk = store.block_at(h)
            for tx_hash in blk["txs"]:
                rec = store.tx_record(tx_hash)
                if rec["tx"]["type"] == CLAIM:
                    claims.append(rec)
                    self.assertIn(tx_hash, blk["attestations"])
        receipt_ids = [c["tx"]["payload"]["receipt_id"] for c in claims]
        payment_txs = [c["tx"]["payload"]["client_payment_tx"] for c in claims]
        self.assertEqual(len(receipt_ids), len(set(receipt_ids)), "a receipt paid twice")
        self.assertEqual(len(payment_txs), len(set(payment_txs)), "a payment used twice")
        rcpts = dict(store.entries("rcpt"))
        self.assertEqual(sorted(rcpts), sorted(receipt_ids))
        pays = dict(store.entries("pay"))
        for rid, r in rcpts.items():
            self.assertEqual(pays[r["payment_tx"]]["claimed"], rid)
            self.assertGreaterEqual(pays[r["payment_tx"]]["amount"], r["price"])
        self.assertEqual(sorted(p for p, v in pays.items() if v["claimed"]), sorted(payment_txs))
        balances = {a: v[0] for a, v in store.entries("acct")}
        # Escrow only ever receives payments and pays prices.
        self.assertEqual(balances.get(ESCROW.address, 0),
                         sum(v["amount"] for v in pays.values()) - sum(r["price"] for r in rcpts.values()))
        supply = node.queries.get_supply()
        parts = {k: v for k, v in supply.items() if k != "total"}
        self.assertEqual(supply["total"], sum(parts.values()))
        self.assertEqual(supply["total"], sum(balances.values()))
        self.assertEqual(parts["receipts"], sum(r["mint"] for r in rcpts.values()))
        self.assertEqual(parts["coordinator"], sum(r["coordinator_cut"] for r in rcpts.values()))
        self.assertEqual(parts["treasury"], sum(r["treasury_cut"] for r in rcpts.values()))
        self.assertEqual(parts["genesis"], GENESIS_BALANCE + 10**6 + COORD_BALANCE)
        self.assertEqual(parts["faucet"], 0)
