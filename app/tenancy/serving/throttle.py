"""A per-client allowance of failed authentications: past it, 429 before any lookup.

Every failed authentication (401) costs the client a token of its bucket; a bucket holds
``limit`` tokens and refills at ``limit`` per ``period``. A client whose bucket is empty gets
``TooManyAuthFailures`` (429 with ``Retry-After``) for every request, before the tenant is
looked up: a client guessing keys, or walking random tenant ids, costs the control plane
``limit`` lookups per period, not one per request. A success costs nothing and refunds
nothing. The client is the address the request hooks see: the TCP peer, or behind
``APP_TRUSTED_PROXIES`` proxies the address they forwarded, so a shared proxy address
shares one allowance (configure the proxies).

Memory is bounded: at most ``max_clients`` buckets, least recently failing dropped first
(which refills them; an attacker with that many addresses is out of this guard's reach).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from app.tenancy.errors import TooManyAuthFailures

__all__ = ["MAX_CLIENTS", "AuthThrottle"]

MAX_CLIENTS = 10_000


class AuthThrottle:
    """Token buckets of failed authentications per client. Thread safe.

    ``self._lock`` guards the buckets: held for a dict operation and a little arithmetic.
    """

    def __init__(
        self,
        limit: int,
        *,
        period: float = 60.0,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._rate = limit / period  # tokens per second
        self._max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        # client -> (tokens left, when they were counted); only clients that failed lately.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, client: str) -> None:
        """Raise TooManyAuthFailures if ``client`` has no failure left to spend."""
        with self._lock:
            tokens = self._tokens_locked(client, self._clock())
        if tokens < 1:
            raise TooManyAuthFailures(
                "too many failed authentications from this client; retry later",
                retry_after=max(1, math.ceil((1 - tokens) / self._rate)),
            )

    def failed(self, client: str) -> None:
        """``client`` failed to authenticate: one token less."""
        now = self._clock()
        with self._lock:
            tokens = self._tokens_locked(client, now)
            self._buckets[client] = (max(0.0, tokens - 1), now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)

    def clients(self) -> int:
        """Clients with a bucket not yet known to be full."""
        with self._lock:
            return len(self._buckets)

    def _tokens_locked(self, client: str, now: float) -> float:
        bucket = self._buckets.get(client)
        if bucket is None:
            return float(self.limit)
        tokens, counted = bucket
        tokens = min(float(self.limit), tokens + (now - counted) * self._rate)
        if tokens >= self.limit:
            del self._buckets[client]  # full again: forget it
        return tokens
