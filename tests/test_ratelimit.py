"""Token buckets per client, and the 429 the RPC answers with."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aitnode.errors import AitError
from aitnode.ratelimit import RateLimiter
from tests.common import ALICE, BOB, make_node, make_rpc, transfer, wire


class BucketTests(SynchronousTestCase):
    def test_burst_then_rate(self):
        clock = Clock()
        limiter = RateLimiter(clock, rate=10, burst=5)
        for _ in range(5):
            limiter.take("a")
        err = self.assertRaises(AitError, limiter.take, "a")
        self.assertEqual((err.code, err.status), ("rate_limited", 429))
        limiter.take("b")  # another client has its own bucket
        clock.advance(0.1)  # one token back
        limiter.take("a")
        self.assertRaises(AitError, limiter.take, "a")
        clock.advance(10)  # refills up to the burst, no further
        for _ in range(5):
            limiter.take("a")
        self.assertRaises(AitError, limiter.take, "a")

    def test_batch_takes_one_token_per_item(self):
        clock = Clock()
        limiter = RateLimiter(clock, rate=1, burst=10)
        limiter.take("a", 8)
        err = self.assertRaises(AitError, limiter.take, "a", 3)
        self.assertIn("retry in 1.00 s", err.message)
        err = self.assertRaises(AitError, RateLimiter(clock, 1, 10).take, "b", 11)
        self.assertIn("more than the burst", err.message)

    def test_off_when_rate_is_zero(self):
        limiter = RateLimiter(Clock(), rate=0, burst=1)
        for _ in range(100):
            limiter.take("a", 50)

    def test_idle_buckets_are_forgotten(self):
        clock = Clock()
        limiter = RateLimiter(clock, rate=1, burst=2, max_clients=3)
        for client in "abc":
            limiter.take(client)
        clock.advance(5)
        limiter.take("d")
        self.assertEqual(sorted(limiter._buckets), ["d"])


class RPCLimitTests(SynchronousTestCase):
    def test_send_tx_gets_429_and_nothing_is_admitted(self):
        node = make_node(self)
        limiter = RateLimiter(Clock(), rate=1, burst=2)
        _, http = make_rpc(node, limiter=limiter)
        codes = []
        for nonce in (1, 2, 3):
            r = self.successResultOf(http.post("http://n/rpc/sendTx", json=wire(transfer(ALICE, nonce, BOB, 1))))
            codes.append((r.code, self.successResultOf(r.json()).get("error", {}).get("code")))
        self.assertEqual(codes, [(200, None), (200, None), (429, "rate_limited")])
        self.assertEqual(len(node.mempool), 2)
        r = self.successResultOf(http.post("http://n/rpc/sendTxs", json=[wire(transfer(ALICE, 3, BOB, 1))]))
        self.assertEqual(r.code, 429)
        self.assertEqual(len(node.mempool), 2)
        node.pipeline.propose()
        self.assertEqual(node.queries.get_balance(ALICE.address)["nonce"], 2)
