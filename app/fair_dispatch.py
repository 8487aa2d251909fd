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

__all__ = ["FairQueue", "FairThreadWorker", "fair_worker", "requester"]
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


class NodeCounts(Protocol):
    """app/node_share.py's ``NodeShare``: requests per requester across the node's workers."""

    share: int

    def claim(self, pid: int) -> bool: ...

    def running(self, key: Hashable) -> int: ...

    def heavy(self, key: Hashable) -> bool: ...

    def first_in_line(self, key: Hashable, since: float) -> bool: ...

    def wait_since(self, key: Hashable, since: float) -> None: ...

    def started(self, key: Hashable) -> None: ...

    def ended(self, key: Hashable, seconds: float) -> None: ...

    def others_than(self, key: Hashable) -> bool: ...


class FairQueue(Generic[Item]):
    """Which queued request a free thread takes. Not thread safe: gthread's main loop owns it.

    Memory: the queued items, the start time of each running request, and
    ``presence``'s recent requesters.
    """

    def __init__(
        self, threads: int, share: int, presence: Presence, node: NodeCounts | None = None
    ) -> None:
        if not 1 <= share <= threads:
            raise ValueError(f"share must be between 1 and threads ({threads}), got {share}")
        self.threads = threads
        self.share = share
        self._presence = presence
        self._node = node
        # Per requester: (arrival order, request, arrival time on CLOCK_MONOTONIC).
        self._queues: dict[Hashable, deque[tuple[int, Item, float]]] = {}
        # Per requester with requests running: when each started, oldest first.
        self._running: dict[Hashable, deque[float]] = {}
        self._busy = 0
        self._order = 0  # arrival order, the tie-break among requesters running as many
        self._node_holds = False  # the last take() left a request to the node's share

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
        """Whether the last ``take`` left a request to the node's share although a thread was
        free: another worker's request may free it without this worker hearing of it. (A
        request held by this worker's share is let go when one of this worker's requests
        ends.) The worker takes until ``take`` gives None, so that is the state now."""
        return self._node_holds

    def take(self) -> tuple[Hashable, Item] | None:
        """The request a free thread runs next, or None (no free thread, or none may run)."""
        self._node_holds = False
        if self._busy >= self.threads:
            return None
        best: tuple[int, float, Hashable] | None = None
        for key, queue in self._queues.items():
            running = len(self._running.get(key, ()))
            if self._over_share(key, running) and self._others_present(key):
                self._node_holds |= running < self.share  # then the node's share holds it
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
        self._running.setdefault(key, deque()).append(time.monotonic())
        self._busy += 1
        if self._node is not None:
            self._node.started(key)
        return key, item

    def done(self, key: Hashable) -> None:
        """A request ``take`` gave out ended, whatever its outcome."""
        # Which of the key's requests ended is not told: the oldest, near enough (they are
        # served in arrival order).
        starts = self._running.get(key)
        started = starts.popleft() if starts else time.monotonic()
        if not starts:
            self._running.pop(key, None)
        self._busy -= 1
        self._presence.saw(key)
        if self._node is not None:
            self._node.ended(key, time.monotonic() - started)

    def _over_share(self, key: Hashable, running: int) -> bool:
        if running >= self.share:
            return True
        node = self._node
        if node is None:
            return False
        if node.running(key) < node.share:  # a slot is free: for the longest waiting
            return node.heavy(key) and not node.first_in_line(key, self._queues[key][0][2])
        return node.heavy(key)

    def _publish(self, key: Hashable) -> None:
        """Tell the node since when ``key``'s oldest request here waits."""
        if self._node is not None:
            queue = self._queues.get(key)
            self._node.wait_since(key, queue[0][2] if queue else 0.0)

    def _others_present(self, key: Hashable) -> bool:
        if len(self._running) - (key in self._running) > 0:
            return True
        if len(self._queues) - (key in self._queues) > 0:
            return True
        if self._presence.others_than(key):
            return True
        return self._node is not None and self._node.others_than(key)


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
    node: NodeCounts | None = None
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
        if self._fair.held():  # another worker may free a slot of the node's share meanwhile
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
    share: int, presence: type, node: NodeCounts | None = None
) -> type[FairThreadWorker]:
    """The worker class for gunicorn.conf.py: each requester's ``share`` of the threads, the
    ``Presence`` class of app/presence.py (loaded by path, as this module is), and the node's
    share (None: no cap across workers)."""
    attributes = {"share": share, "presence": presence, "node": node}
    return type("FairThreadWorker", (FairThreadWorker,), attributes)
