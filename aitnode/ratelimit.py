"""Token buckets per client address, driven by an injected clock."""

from aitnode.errors import AitError


class RateLimiter:
    """``rate`` tokens a second per client, up to ``burst``; rate 0 is off.

    A batch takes one token per item.  Buckets untouched for a while are
    forgotten, so memory stays bounded by recent clients.
    """

    def __init__(self, clock, rate, burst, max_clients=100_000):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets = {}  # client -> [tokens, updated]

    @property
    def enabled(self):
        return self.rate > 0

    def take(self, client, n=1):
        """Take n tokens for client or raise AitError rate_limited (429)."""
        if not self.enabled:
            return
        now = self.clock.seconds()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._prune(now)
            bucket = self._buckets[client] = [float(self.burst), now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if n > tokens:
            bucket[0] = tokens
            wait = (n - tokens) / self.rate
            raise AitError(
                "rate_limited",
                f"too many transactions from {client}; retry in {wait:.2f} s"
                + (f" (a batch of {n} is more than the burst of {self.burst})" if n > self.burst else ""),
                status=429,
            )
        bucket[0] = tokens - n

    def _prune(self, now):
        full = self.burst / self.rate
        for client in [c for c, (_, t) in self._buckets.items() if now - t >= full]:
            del self._buckets[client]
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()
