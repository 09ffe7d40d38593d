"""Compute receipts end to end, with real processes on loopback.

The node (`twistd -n aitnode`, tests.procs.NodeProcess) and the mock
coordinator (`twistd -n aitcoordinator --listen tcp:0:interface=127.0.0.1
--key FILE --chain-id ID`) run as subprocesses on ephemeral ports; the test
waits for their "... listening on http://HOST:PORT" lines.  A client pays
escrow with a TRANSFER, a miner claims with POST /rpc/submitReceipt, and
the balances, the receipt and the supply are read back over HTTP.

HTTP goes through tests.procs' non-persistent treq pool; every process is
killed in cleanup; every wait is bounded.
"""

import os
import re
import signal
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from aitnode.genesis import Genesis
from aitnode.launch import twistd_argv
from aitnode.params import BPS
from aitnode.receipts import CLAIM, check_attestation, sign_claim
from aitnode.tx import sign_tx
from tests.common import (
    ALICE, AUTHORITY, BOB, CHAIN_ID, COORDINATOR, ESCROW, GENESIS_BALANCE, MINER, genesis_doc, key, transfer, wire,
)
from tests.procs import NodeProcess, _NodeProtocol, inline, stop_process, twistd_environ, wait_for

PRICE = 5000
UNITS = 7
FEE = 1000
TRANSFER_FEE = 1000  # tests.common.transfer's default
OUTPUT = "sha256:" + "5e" * 32


class CoordinatorProcess:
    """`twistd -n aitcoordinator` in a subprocess, on an ephemeral loopback port."""

    READY = re.compile(rb"coordinator listening on http://(127\.0\.0\.1):(\d+)")

    def __init__(self, testcase, signer=COORDINATOR, chain_id=CHAIN_ID):
        self.basedir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.basedir)
        self.key_path = os.path.join(self.basedir, "coordinator.key.json")
        signer.save(self.key_path)
        self.chain_id = chain_id
        self.verbose = bool(os.environ.get("AITNODE_TEST_VERBOSE_NODES"))
        self.proto = None
        self.url = None
        testcase.addCleanup(self.kill)

    @property
    def output(self):
        if self.proto is None:
            return ""
        return (bytes(self.proto.out) + bytes(self.proto.err)).decode("utf-8", "replace")

    async def start(self, timeout=30):
        env = twistd_environ()
        args = twistd_argv(["aitcoordinator", "--listen", "tcp:0:interface=127.0.0.1",
                            "--key", self.key_path, "--chain-id", self.chain_id])
        self.proto = proto = _NodeProtocol(self)
        reactor.spawnProcess(proto, sys.executable, args, env=env, path=self.basedir)

        def ready():
            m = self.READY.search(bytes(proto.out) + bytes(proto.err))
            if m:
                self.url = f"http://{m.group(1).decode()}:{int(m.group(2))}"
            return proto.done or self.url

        await wait_for(ready, timeout=timeout, interval=0.05,
                       message=lambda: f"the coordinator to listen; output so far:\n{self.output}")
        if self.url is None:
            raise AssertionError(f"the coordinator exited (code {proto.exit_code}) before listening:\n{self.output}")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Send sig; a Deferred that fires once the process ended (SIGKILL after timeout)."""
        return stop_process(self.proto, sig, timeout)

    def kill(self):
        return self.stop(signal.SIGKILL)


class ReceiptProcessTests(unittest.TestCase):
    timeout = 120

    async def start(self, coordinator_url=None, allow="127.0.0.1", coordinator_timeout="2", doc=None):
        sections = {}
        if coordinator_url is not None:
            sections["coordinator"] = {"url": coordinator_url, "allow": allow, "timeout": coordinator_timeout}
        node = NodeProcess(self, doc=doc, sections=sections, interval=0.2)
        await node.start()
        return node

    async def ok(self, answer):
        status, body = await answer
        self.assertEqual(status, 200, body)
        return body

    async def balance(self, node, who):
        body = await self.ok(node.get(f"/rpc/getBalance/{who.address}"))
        return body["balance"]

    async def balances(self, node, who):
        return {k.address: await self.balance(node, k) for k in who}

    async def pay(self, node, nonce, amount=PRICE):
        tx = transfer(ALICE, nonce, ESCROW, amount)
        body = await self.ok(node.post("/rpc/sendTx", wire(tx)))
        self.assertEqual(body, {"txHash": tx.hash})
        await node.wait_included([tx.hash])
        return tx

    def claim(self, payment, nonce, receipt_id, job_id, sender=MINER, fee=FEE):
        payload = sign_claim(MINER, CHAIN_ID, receipt_id=receipt_id, job_id=job_id, client_addr=ALICE.address,
                             miner_addr=MINER.address, compute_units=UNITS, price=PRICE, output_hash=OUTPUT,
                             client_payment_tx=payment.hash)
        return sign_tx(sender, CHAIN_ID, CLAIM, nonce, fee, payload)

    async def refused(self, answer, status, code):
        got_status, body = await answer
        self.assertEqual((got_status, body["error"]["code"]), (status, code), body)
        self.assertTrue(body["error"]["message"])
        return body

    @inline
    async def test_client_pays_miner_claims(self):
        coordinator = await CoordinatorProcess(self).start()
        node = await self.start(coordinator.url)
        params = await self.ok(node.get("/rpc/getParams"))
        self.assertEqual(params["coordinator"]["address"], COORDINATOR.address)
        parties = [ALICE, BOB, ESCROW, MINER, COORDINATOR, AUTHORITY]
        supply0 = await self.ok(node.get("/rpc/getSupply"))
        start = await self.balances(node, parties)
        self.assertEqual((start[MINER.address], start[COORDINATOR.address], start[ESCROW.address]), (0, 0, 0))

        # The client pays escrow; the miner (no balance) claims.
        payment = await self.pay(node, 1)
        paid = await self.balances(node, parties)
        self.assertEqual(paid[ESCROW.address], PRICE)
        tx = self.claim(payment, 1, "receipt-1", "job_17")
        body = await self.ok(node.post("/rpc/submitReceipt", wire(tx)))
        self.assertEqual(body, {"txHash": tx.hash})
        got = (await node.wait_included([tx.hash]))[tx.hash]
        self.assertEqual(got["status"], "included")

        mint = UNITS * params["mint_per_unit"]
        cut = mint * params["coordinator_ratio_bps"] // BPS
        self.assertGreater(cut, 0)
        after = await self.balances(node, parties)
        self.assertEqual(after[MINER.address] - paid[MINER.address], PRICE + mint - FEE)
        self.assertEqual(paid[ESCROW.address] - after[ESCROW.address], PRICE)
        self.assertEqual(after[COORDINATOR.address] - paid[COORDINATOR.address], cut)
        self.assertEqual(after[AUTHORITY.address], start[AUTHORITY.address] + TRANSFER_FEE + FEE)
        self.assertEqual(after[ALICE.address], start[ALICE.address] - PRICE - TRANSFER_FEE)

        # The attestation travels with the claim and checks offline.
        att = got["attestation"]
        check_attestation(att, tx.payload, Genesis(genesis_doc()).params, CHAIN_ID)
        block = await self.ok(node.get(f"/rpc/getBlock/{got['block']['height']}?full=true"))
        self.assertEqual(block["attestations"], {tx.hash: att})
        receipt = await self.ok(node.get("/rpc/getReceipt/receipt-1"))
        self.assertEqual(receipt["attestation"], att)
        self.assertEqual(receipt["claim"]["payload"], tx.payload)
        self.assertEqual(receipt["block"], {"height": got["block"]["height"], "hash": got["block"]["hash"]})
        self.assertEqual((receipt["paid"]["mint"], receipt["paid"]["miner_paid"], receipt["paid"]["coordinator_cut"]),
                         (mint, PRICE + mint, cut))
        self.assertEqual(receipt["paid"]["payment_tx"], payment.hash)

        supply = await self.ok(node.get("/rpc/getSupply"))
        parts = {k: v for k, v in supply.items() if k != "total"}
        self.assertEqual(supply["total"], sum(parts.values()))
        self.assertEqual(parts["genesis"], GENESIS_BALANCE + 10**6)
        self.assertEqual(parts["receipts"] - supply0["receipts"], mint)
        self.assertEqual(parts["coordinator"] - supply0["coordinator"], cut)
        self.assertEqual(supply["total"], supply0["total"] + mint + cut)
        self.assertEqual(supply["total"], sum(after.values()))  # these are all the accounts there are

        # A replay pays nothing twice; a re-signed claim is refused.
        self.assertEqual(await self.ok(node.post("/rpc/submitReceipt", wire(tx))), {"txHash": tx.hash})
        await self.refused(node.post("/rpc/submitReceipt", wire(self.claim(payment, 2, "receipt-1", "job_17"))),
                           409, "receipt_already_claimed")
        head = await node.head()
        await node.wait_height(head["height"] + 2)
        self.assertEqual(await self.balances(node, parties), after)
        await self.refused(node.get("/rpc/getReceipt/receipt-2"), 404, "not_found")
        self.assertEqual(await self.ok(node.get("/rpc/getSupply")), supply)

    @inline
    async def test_coordinator_down(self):
        """Claims are refused with a clear code; nothing else stops."""
        coordinator = await CoordinatorProcess(self).start()
        node = await self.start(coordinator.url)
        first = await self.pay(node, 1)
        tx = self.claim(first, 1, "r1", "job_1")
        self.assertEqual(await self.ok(node.post("/rpc/submitReceipt", wire(tx))), {"txHash": tx.hash})
        await node.wait_included([tx.hash])

        await coordinator.stop()
        self.assertTrue(coordinator.proto.done)
        second = await self.pay(node, 2)
        parties = [ALICE, ESCROW, MINER, COORDINATOR]
        before = await self.balances(node, parties)
        head = await node.head()
        await self.refused(node.post("/rpc/submitReceipt", wire(self.claim(second, 2, "r2", "job_2"))),
                           424, "coordinator_unavailable")
        # And sent by the coordinator's address, through sendTx: the same
        # (with a fee its cuts of the first claim and this one cover).
        cut = UNITS * 1000 * 500 // 10_000
        await self.refused(node.post("/rpc/sendTx", wire(self.claim(second, 1, "r2", "job_2", sender=COORDINATOR,
                                                                    fee=2 * cut))),
                           424, "coordinator_unavailable")
        # Blocks keep coming; other transactions still go through.
        await node.wait_height(head["height"] + 3)
        move = transfer(BOB, 1, ALICE, 1)
        await self.ok(node.post("/rpc/sendTx", wire(move)))
        await node.wait_included([move.hash])
        after = await self.balances(node, parties)
        self.assertEqual(after[ESCROW.address], before[ESCROW.address])
        self.assertEqual(after[MINER.address], before[MINER.address])
        self.assertEqual(after[COORDINATOR.address], before[COORDINATOR.address])
        await self.refused(node.get("/rpc/getReceipt/r2"), 404, "not_found")
        status, _ = await node.get("/rpc/getReceipt/r1")
        self.assertEqual(status, 200)

    @inline
    async def test_coordinator_off_the_allow_list_or_signing_wrongly(self):
        def started(coro):
            return defer.Deferred.fromCoroutine(coro)

        wrong, impostor, real = await defer.gatherResults([
            started(CoordinatorProcess(self, chain_id="ait-elsewhere").start()),  # signs for another chain
            started(CoordinatorProcess(self, signer=key(42)).start()),  # not the chain's coordinator key
            started(CoordinatorProcess(self).start()),
        ], consumeErrors=True)
        nodes = await defer.gatherResults([
            started(self.start(wrong.url)),
            started(self.start(impostor.url)),
            started(self.start(real.url, allow="127.0.0.2")),  # the host is not on the allow list
            started(self.start()),  # no [coordinator] url at all
        ], consumeErrors=True)
        expected = [
            (400, "attestation_bad_signature"),
            (400, "attestation_wrong_coordinator"),
            (424, "coordinator_not_allowed"),
            (424, "coordinator_not_configured"),
        ]
        for node, (status, code) in zip(nodes, expected):
            payment = await self.pay(node, 1)
            await self.refused(node.post("/rpc/submitReceipt", wire(self.claim(payment, 1, "r1", "job_1"))),
                               status, code)
        for node in nodes:
            head = await node.head()
            await node.wait_height(head["height"] + 1)
            self.assertEqual(await self.balance(node, MINER), 0)
            self.assertEqual(await self.balance(node, ESCROW), PRICE)
