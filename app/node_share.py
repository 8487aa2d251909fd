"""A fair share across the workers of one gunicorn master: requests per requester on the node.

Shared memory made by the master before the fork (gunicorn.conf.py); app/fair_dispatch.py's
queue asks it whether a requester is over the node's share. Imports nothing of ``app``:
gunicorn.conf.py loads it by path in the master, as it does app/fair_dispatch.py.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
import os
import time
from collections.abc import Hashable

__all__ = ["NodeShare", "digest_of", "process_alive"]


class NodeShare:
    """Requests running per requester on the whole node: every worker of one gunicorn master.

    A worker's share alone lets a tenant run ``share`` requests in each worker, so
    ``workers x share`` on the node, and that many expensive statements saturate a small
    node's cores: a quiet tenant's request then waits for a core (tests/load/hostile.py
    measures it). So, while others are present, a heavy requester (:meth:`heavy`) also runs
    at most ``share`` requests on the node. Not every requester: the head of a Zipf load is
    busy too, but its requests are as cheap as anyone's; a heavy one's take several times as
    long.

    Made in the master before the fork, in shared memory (``multiprocessing.RawArray``), one
    row per worker: a count of running requests per bucket of requesters (a digest of the
    requester modulo ``BUCKETS``: two requesters that share a bucket share its count, which
    can only make them wait for each other, never let one exceed it), since when the
    worker's oldest queued request of each bucket waits (a slot that frees goes to the
    longest waiting on the node, not to the worker whose request just ended), how long the
    bucket's requests took and how long the worker's took (moving geometric means), and the
    last two requesters the worker saw. A worker writes its own row only, so no lock is needed. It
    claims a row when it starts, and clears every row whose worker is gone, so a worker that
    died with requests running or waiting leaves nothing behind.
    """

    BUCKETS = 4096
    RECENT = 2
    HEAVY = 4.0
    """How many times a typical request's time makes a requester's requests heavy."""

    def __init__(self, share: int, rows: int) -> None:
        if share < 1 or rows < 1:
            raise ValueError(f"share and rows must be at least 1, got {share} and {rows}")
        self.share = share
        self._rows = rows
        self._counts = multiprocessing.RawArray("H", rows * self.BUCKETS)
        self._seen = multiprocessing.RawArray("Q", rows * self.RECENT)
        self._seen_at = multiprocessing.RawArray("d", rows * self.RECENT)
        self._waiting = multiprocessing.RawArray("d", rows * self.BUCKETS)
        self._cost = multiprocessing.RawArray("d", rows * self.BUCKETS)
        self._typical = multiprocessing.RawArray("d", rows)
        self._owners = multiprocessing.RawArray("i", rows)
        self._row: int | None = None

    def claim(self, pid: int) -> bool:
        """Take a row for the worker ``pid`` (in it, after the fork); False if none is free.

        Every row whose worker is gone is cleared on the way, so nothing it counted stays.
        """
        for row in range(self._rows):
            owner = self._owners[row]
            if owner and owner != pid and not process_alive(owner):
                self._clear(row)
        for row in range(self._rows):
            if self._owners[row] in (0, pid):
                self._clear(row)
                self._owners[row] = pid
                self._row = row
                return True
        return False

    def _clear(self, row: int) -> None:
        start = row * self.BUCKETS
        self._counts[start : start + self.BUCKETS] = [0] * self.BUCKETS
        for array in (self._waiting, self._cost):
            array[start : start + self.BUCKETS] = [0.0] * self.BUCKETS
        self._typical[row] = 0.0
        for slot in range(row * self.RECENT, (row + 1) * self.RECENT):
            self._seen[slot], self._seen_at[slot] = 0, 0.0
        self._owners[row] = 0

    def wait_since(self, key: Hashable, since: float) -> None:
        """This worker's oldest queued request of ``key`` arrived at ``since`` (0: none)."""
        digest = digest_of(key)
        if self._row is not None:
            self._waiting[self._row * self.BUCKETS + digest % self.BUCKETS] = since

    def first_in_line(self, key: Hashable, since: float) -> bool:
        """Whether no other worker has a request of ``key``'s bucket waiting since before
        ``since``: a slot the node's share frees goes to the longest waiting, whichever
        worker holds it, not always to the worker whose request just ended."""
        digest = digest_of(key)
        bucket = digest % self.BUCKETS
        for row in range(self._rows):
            other = self._waiting[row * self.BUCKETS + bucket]
            if row != self._row and 0.0 < other < since:
                return False
        return True

    def running(self, key: Hashable) -> int:
        """Requests of ``key``'s bucket running on the node."""
        digest = digest_of(key)
        bucket = digest % self.BUCKETS
        return sum(self._counts[row * self.BUCKETS + bucket] for row in range(self._rows))

    def started(self, key: Hashable) -> None:
        self._count(digest_of(key), +1)

    def ended(self, key: Hashable, seconds: float) -> None:
        """A request of ``key`` that ran ``seconds`` ended here."""
        digest = digest_of(key)
        self._count(digest, -1)
        row = self._row
        if row is None or seconds <= 0:
            return
        slot = row * self.BUCKETS + digest % self.BUCKETS
        self._cost[slot] = _geometric(self._cost[slot], seconds, 0.3)
        self._typical[row] = _geometric(self._typical[row], seconds, 0.05)

    def heavy(self, key: Hashable) -> bool:
        """Whether ``key``'s requests that ended took more than ``HEAVY`` times as long as
        a typical request on the node. Both are moving geometric means, so that a few slow
        requests (a busy moment) make neither look long. A tenant sending many cheap
        requests (the head of a Zipf load) is not heavy, and the node's share spares it.
        """
        digest = digest_of(key)
        bucket = digest % self.BUCKETS
        cost = max(self._cost[slot] for slot in range(bucket, len(self._cost), self.BUCKETS))
        # The quickest worker's: a worker that serves only the heavy requester (its clients'
        # connections stick to one worker) must not make it look typical.
        typical = min((value for value in self._typical if value > 0.0), default=0.0)
        return typical > 0.0 and bool(cost > self.HEAVY * typical)

    def others_than(self, key: Hashable, within: float = 1.0) -> bool:
        """Whether any worker saw a requester other than ``key`` start or end a request
        within the last ``within`` seconds (CLOCK_MONOTONIC: the same in every process)."""
        digest = digest_of(key)
        since = time.monotonic() - within
        return any(
            self._seen[slot] not in (0, digest) and self._seen_at[slot] >= since
            for slot in range(self._rows * self.RECENT)
        )

    def _count(self, digest: int, change: int) -> None:
        """Count a request of ``digest`` in or out in this worker's row; remember it as seen."""
        row = self._row
        if row is None:
            return
        slot = row * self.BUCKETS + digest % self.BUCKETS
        self._counts[slot] = max(0, self._counts[slot] + change)
        first = row * self.RECENT  # the last two distinct requesters, newest first
        if self._seen[first] != digest:
            self._seen[first + 1] = self._seen[first]
            self._seen_at[first + 1] = self._seen_at[first]
            self._seen[first] = digest
        self._seen_at[first] = time.monotonic()


def _geometric(mean: float, sample: float, weight: float) -> float:
    """A moving geometric mean: ``sample`` with ``weight``; the sample alone if none yet."""
    return (
        sample
        if mean <= 0.0
        else math.exp((1 - weight) * math.log(mean) + weight * math.log(sample))
    )


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=4096)
def digest_of(key: Hashable) -> int:
    """A requester as a nonzero 64-bit number, the same in every worker (each requester's
    computed once per worker while it is in recent use)."""
    raw = key if isinstance(key, bytes) else repr(key).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") or 1
