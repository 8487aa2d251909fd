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
_TENANT_BYTES = 64
_HEADER = re.compile(rb"\r\n(x-tenant-id|authorization)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)

Item = TypeVar("Item")


class Presence(Protocol):
    """app/presence.py's ``Presence``: who was seen lately."""

    def saw(self, key: Hashable) -> None: ...

    def others_than(self, key: Hashable) -> bool: ...


class FairQueue(Generic[Item]):
    """Which queued request a free thread takes. Not thread safe: gthread's main loop owns it.

    Memory: the queued items, a count per requester with requests running, and
    ``presence``'s recent requesters.
    """

    def __init__(self, threads: int, share: int, presence: Presence) -> None:
        if not 1 <= share <= threads:
            raise ValueError(f"share must be between 1 and threads ({threads}), got {share}")
        self.threads = threads
        self.share = share
        self._presence = presence
        self._queues: dict[Hashable, deque[tuple[float, Item]]] = {}
        self._running: dict[Hashable, int] = {}
        self._busy = 0
        self._order = 0  # arrival order, the tie-break among requesters running as many

    def __len__(self) -> int:
        """Requests queued."""
        return sum(len(queue) for queue in self._queues.values())

    def add(self, key: Hashable, item: Item) -> None:
        """Queue a request of requester ``key``."""
        self._order += 1
        self._queues.setdefault(key, deque()).append((self._order, item))

    def take(self) -> tuple[Hashable, Item] | None:
        """The request a free thread runs next, or None (no free thread, or none may run)."""
        if self._busy >= self.threads:
            return None
        best: tuple[int, float, Hashable] | None = None
        for key, queue in self._queues.items():
            running = self._running.get(key, 0)
            if running >= self.share and self._others_present(key):
                continue
            candidate = (running, queue[0][0], key)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best is None:
            return None
        key = best[2]
        queue = self._queues[key]
        _, item = queue.popleft()
        if not queue:
            del self._queues[key]
        self._running[key] = self._running.get(key, 0) + 1
        self._busy += 1
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

    def _others_present(self, key: Hashable) -> bool:
        if len(self._running) - (key in self._running) > 0:
            return True
        if len(self._queues) - (key in self._queues) > 0:
            return True
        return self._presence.others_than(key)


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

    def init_process(self) -> None:
        threads = self.cfg.threads
        share = min(self.share or max(1, threads // 2), threads)
        self._fair: FairQueue[Any] = FairQueue(threads, share, self.presence())
        super().init_process()

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


def fair_worker(share: int, presence: type) -> type[FairThreadWorker]:
    """The worker class for gunicorn.conf.py: each requester's ``share`` of the threads, and
    the ``Presence`` class of app/presence.py (loaded by path, as this module is)."""
    attributes = {"share": share, "presence": presence}
    return type("FairThreadWorker", (FairThreadWorker,), attributes)
