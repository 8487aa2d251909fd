"""Fair dispatch of a gunicorn worker's requests to its threads, before the app runs.

gunicorn's gthread worker gives a thread to each readable connection in arrival order. A
tenant flooding slow requests then fills the queue, and a quiet tenant's request waits
behind the flood for a thread; and the app's fair share (``serving/fairshare.py``) can only
refuse a request over its tenant's share once a thread already runs it, so a flood is
answered 429 after 429, each a trip through Flask, while the quiet request still queues.

:class:`FairThreadWorker` keeps one queue per requester instead and gives each free thread
to the requester with the fewest requests running, oldest request first. While other
requesters are present (running, queued, or seen within the last second), one runs at
most ``share`` requests at once (``APP_TENANT_THREAD_SHARE``); alone, it may use every
thread. A request over its share waits in the queue holding no thread, and no connection
of any pool: HTTP/1.1 sends a connection's next request only after its answer, so a
requester's backlog is at most its connections (``worker_connections`` in all).

The requester is the ``X-Tenant-ID`` header and a digest of the ``Authorization`` header as
sent, read from the request head without consuming it (``MSG_PEEK``); it is not
authenticated here. A forged tenant id with another credential is another requester, so it
queues nobody but itself; the app's fair share still counts authenticated tenants. A new
connection whose head has not arrived waits for it on the poller, as gthread's own deferred
connections do, not in a thread.

Imports nothing of ``app``: gunicorn.conf.py loads this file by path in the master, and
app/presence.py (who was present lately, shared with the app's fair share) the same way.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import re
import selectors
import socket
import time
from collections import deque
from collections.abc import Hashable
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from gunicorn.workers.gthread import ThreadWorker

__all__ = [
    "FairQueue",
    "FairThreadWorker",
    "NodeShare",
    "digest_of",
    "fair_worker",
    "process_alive",
    "requester",
]
_HEAD_BYTES = 8192
_RECHECK = 0.005
"""Seconds between a worker's looks at the node's share while a request waits on it."""
_TENANT_BYTES = 64
_HEADER = re.compile(rb"\r\n(x-tenant-id|authorization)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)

Item = TypeVar("Item")


class Presence(Protocol):
    """app/presence.py's ``Presence``: who was seen lately."""

    def saw(self, key: Hashable) -> None: ...

    def others_than(self, key: Hashable) -> bool: ...


class NodeShare:
    """Requests running per requester on the whole node: every worker of one gunicorn master.

    A worker's share alone lets a tenant run ``share`` requests in each worker, so
    ``workers x share`` on the node, and that many expensive statements saturate a small
    node's cores: a quiet tenant's request then waits for a core (measured with
    tests/load/hostile.py on 2 cores: the quiet tenant's p99 rose 7 to 10 times with 4 or 8
    of the flood's searches running, 2.5 times with 2). So, while others are present, a heavy
    requester (:meth:`heavy`) also runs at most ``share`` requests on the node. Counting every
    requester alike also held the head of a Zipf load, whose requests are as cheap as anyone's
    (measured: 3 to 5% of the throughput); a heavy one's take several times as long.

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

    def wait_since(self, digest: int, since: float) -> None:
        """This worker's oldest queued request of ``digest`` arrived at ``since`` (0: none)."""
        if self._row is not None:
            self._waiting[self._row * self.BUCKETS + digest % self.BUCKETS] = since

    def first_in_line(self, digest: int, since: float) -> bool:
        """Whether no other worker has a request of ``digest``'s bucket waiting since before
        ``since``: a slot the node's share frees goes to the longest waiting, whichever
        worker holds it, not always to the worker whose request just ended."""
        bucket = digest % self.BUCKETS
        for row in range(self._rows):
            other = self._waiting[row * self.BUCKETS + bucket]
            if row != self._row and 0.0 < other < since:
                return False
        return True

    def running(self, digest: int) -> int:
        """Requests of ``digest``'s bucket running on the node."""
        bucket = digest % self.BUCKETS
        return sum(self._counts[row * self.BUCKETS + bucket] for row in range(self._rows))

    def started(self, digest: int) -> None:
        self._count(digest, +1)

    def ended(self, digest: int, seconds: float) -> None:
        """A request of ``digest`` that ran ``seconds`` ended here."""
        self._count(digest, -1)
        row = self._row
        if row is None or seconds <= 0:
            return
        slot = row * self.BUCKETS + digest % self.BUCKETS
        self._cost[slot] = _geometric(self._cost[slot], seconds, 0.3)
        self._typical[row] = _geometric(self._typical[row], seconds, 0.05)

    def heavy(self, digest: int) -> bool:
        """Whether ``digest``'s requests that ended took more than ``HEAVY`` times as long as
        a typical request on the node. Both are moving geometric means, so that a few slow
        requests (a busy moment) make neither look long. A tenant sending many cheap
        requests (the head of a Zipf load) is not heavy, and the node's share spares it.
        """
        bucket = digest % self.BUCKETS
        cost = max(self._cost[slot] for slot in range(bucket, len(self._cost), self.BUCKETS))
        # The quickest worker's: a worker that serves only the heavy requester (its clients'
        # connections stick to one worker) must not make it look typical.
        typical = min((value for value in self._typical if value > 0.0), default=0.0)
        return typical > 0.0 and bool(cost > self.HEAVY * typical)

    def others_than(self, digest: int, within: float = 1.0) -> bool:
        """Whether any worker saw a requester other than ``digest`` start or end a request
        within the last ``within`` seconds (CLOCK_MONOTONIC: the same in every process)."""
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


def digest_of(key: Hashable) -> int:
    """A requester as a nonzero 64-bit number, the same in every worker."""
    raw = key if isinstance(key, bytes) else repr(key).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") or 1


class FairQueue(Generic[Item]):
    """Which queued request a free thread takes. Not thread safe: gthread's main loop owns it.

    Memory: the queued items, a count per requester with requests running, and
    ``presence``'s recent requesters.
    """

    def __init__(
        self, threads: int, share: int, presence: Presence, node: NodeShare | None = None
    ) -> None:
        if not 1 <= share <= threads:
            raise ValueError(f"share must be between 1 and threads ({threads}), got {share}")
        self.threads = threads
        self.share = share
        self._presence = presence
        self._node = node
        # Per requester: (arrival order, request, arrival time on CLOCK_MONOTONIC).
        self._queues: dict[Hashable, deque[tuple[int, Item, float]]] = {}
        self._running: dict[Hashable, int] = {}
        self._starts: dict[Hashable, deque[float]] = {}  # of running requests, oldest first
        self._busy = 0
        self._order = 0  # arrival order, the tie-break among requesters running as many

    def __len__(self) -> int:
        """Requests queued."""
        return sum(len(queue) for queue in self._queues.values())

    def add(self, key: Hashable, item: Item) -> None:
        """Queue a request of requester ``key``."""
        self._order += 1
        queue = self._queues.setdefault(key, deque())
        queue.append((self._order, item, time.monotonic()))
        if len(queue) == 1:
            self._publish(key)

    def held(self) -> bool:
        """Whether requests wait although a thread is free: held by a share, maybe the node's,
        which another worker's request may free without this worker hearing of it."""
        return bool(self._queues) and self._busy < self.threads

    def take(self) -> tuple[Hashable, Item] | None:
        """The request a free thread runs next, or None (no free thread, or none may run)."""
        if self._busy >= self.threads:
            return None
        best: tuple[int, float, Hashable] | None = None
        for key, queue in self._queues.items():
            running = self._running.get(key, 0)
            if self._over_share(key, running) and self._others_present(key):
                continue
            candidate = (running, queue[0][0], key)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best is None:
            return None
        key = best[2]
        queue = self._queues[key]
        _, item, _ = queue.popleft()
        if not queue:
            del self._queues[key]
        self._publish(key)
        self._running[key] = self._running.get(key, 0) + 1
        self._busy += 1
        self._starts.setdefault(key, deque()).append(time.monotonic())
        if self._node is not None:
            self._node.started(digest_of(key))
        return key, item

    def done(self, key: Hashable) -> None:
        """A request ``take`` gave out ended, whatever its outcome."""
        running = self._running.get(key, 0) - 1
        if running > 0:
            self._running[key] = running
        else:
            self._running.pop(key, None)
        self._busy -= 1
        self._presence.saw(key)
        # Which of the key's requests ended is not told: the oldest, near enough (they are
        # served in arrival order).
        starts = self._starts.get(key)
        started = starts.popleft() if starts else time.monotonic()
        if not starts:
            self._starts.pop(key, None)
        if self._node is not None:
            self._node.ended(digest_of(key), time.monotonic() - started)

    def _over_share(self, key: Hashable, running: int) -> bool:
        if running >= self.share:
            return True
        node = self._node
        if node is None:
            return False
        digest = digest_of(key)
        if node.running(digest) < node.share:  # a slot is free: for the longest waiting
            return node.heavy(digest) and not node.first_in_line(digest, self._queues[key][0][2])
        return node.heavy(digest)

    def _publish(self, key: Hashable) -> None:
        """Tell the node since when ``key``'s oldest request here waits."""
        if self._node is not None:
            queue = self._queues.get(key)
            self._node.wait_since(digest_of(key), queue[0][2] if queue else 0.0)

    def _others_present(self, key: Hashable) -> bool:
        if len(self._running) - (key in self._running) > 0:
            return True
        if len(self._queues) - (key in self._queues) > 0:
            return True
        if self._presence.others_than(key):
            return True
        return self._node is not None and self._node.others_than(digest_of(key))


def requester(head: bytes) -> bytes:
    """The requester of a request head (maybe partial): its tenant id and a credential digest."""
    tenant, credential = b"", b""
    for name, value in _HEADER.findall(head.split(b"\r\n\r\n", 1)[0]):
        if name.lower() == b"x-tenant-id":
            tenant = value.strip()[:_TENANT_BYTES]
        else:
            credential = value.strip()
    return tenant + b"|" + hashlib.blake2b(credential, digest_size=8).digest()


def _peek(conn: Any) -> bytes:
    """What has arrived of the connection's next request, left in place for the parser."""
    parser = conn.parser
    if parser is not None:  # bytes a body drain read ahead come first
        buffered: bytes = parser.unreader.buf.getvalue()
        if buffered:
            return buffered
    try:
        data: bytes = conn.sock.recv(_HEAD_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:
        return b"\r\n"  # a broken connection: let a thread find out, as gthread would
    return data or b"\r\n"  # b"": the client closed; a thread reads the end


class FairThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with :class:`FairQueue` between the poller and the thread pool."""

    share = 0
    """Set by :func:`fair_worker`; 0 means half the threads."""
    presence: Any = None
    """Set by :func:`fair_worker`: app/presence.py's ``Presence`` class."""
    node: NodeShare | None = None
    """Set by :func:`fair_worker`: the node's share, made in the master; None: no node cap."""

    def init_process(self) -> None:
        threads = self.cfg.threads
        share = min(self.share or max(1, threads // 2), threads)
        node = self.node
        if node is not None and not node.claim(os.getpid()):
            self.log.warning("no free row in the node's fair share: this worker runs without")
            node = None
        self._fair: FairQueue[Any] = FairQueue(threads, share, self.presence(), node)
        super().init_process()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._fair.held():  # another worker may free the node's share meanwhile
            timeout = min(timeout, _RECHECK)
        super().wait_for_and_dispatch_events(timeout)
        self._dispatch()

    def enqueue_req(self, conn: Any) -> None:
        head = b"" if self.cfg.is_ssl else _peek(conn)
        if not head and not self.cfg.is_ssl and not conn.initialized and not conn.data_ready:
            self._wait_for_head(conn)
            return
        self._fair.add(requester(head), conn)
        self._dispatch()

    def finish_request(self, conn: Any, fs: Any) -> None:
        self._fair.done(conn.tp_requester)
        try:
            super().finish_request(conn, fs)
        finally:
            self._dispatch()

    def _dispatch(self) -> None:
        while (taken := self._fair.take()) is not None:
            key, conn = taken
            conn.tp_requester = key
            super().enqueue_req(conn)

    def _wait_for_head(self, conn: Any) -> None:
        """On the poller, as gthread parks a connection whose data is late (``_DEFER``)."""
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )


def fair_worker(
    share: int, presence: type, node: NodeShare | None = None
) -> type[FairThreadWorker]:
    """The worker class for gunicorn.conf.py: each requester's ``share`` of the threads, the
    ``Presence`` class of app/presence.py (loaded by path, as this module is), and the node's
    share (None: no cap across workers)."""
    attributes = {"share": share, "presence": presence, "node": node}
    return type("FairThreadWorker", (FairThreadWorker,), attributes)
