"""The listening side of tenant change events: a dedicated control-plane connection.

Every worker of every node holds one ``LISTEN`` connection per control plane and hands
each event to a callback (``Tenancy.on_event``: forget the tenant's engine and cached
record). The worker's reaper thread drives it: it waits in ``select()`` on ``fileno()``
(so an event is handled as soon as it arrives, not on the next tick) and calls
``pump()``. A lost connection is noticed there and replaced, with an exponential,
jittered back-off; since events sent meanwhile are lost, ``on_reconnect`` runs after
every successful (re)connect so the caller can drop what it cached.

A failover can leave the connection on a server that is up but no longer the primary (a
primary demoted in place): NOTIFY is then sent elsewhere, and the connection would stay
open and deaf. So every ``check_every`` seconds (and right after connecting) ``pump()``
asks the server whether it still takes writes, one bounded round trip; a server in
recovery or read-only by default is left, and a multi-host DSN (app/dbhosts.py) then
reaches the new primary. The same round trip notices a server gone silent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa

from app import dbwait
from app.dbhosts import libpq_params
from app.tenancy.serving.events import CHANNEL, TenantEvent
from app.tenancy.serving.forks import reset_in_child
from app.tenancy.serving.observer import Observer

__all__ = ["TenantEventListener", "connector"]

logger = logging.getLogger(__name__)

# One round trip: is this still a primary (a standby refuses LISTEN; a server made
# read-only is not where NOTIFY is sent)?
_READ_ONLY_CHECK = (
    "SELECT pg_is_in_recovery() OR current_setting('default_transaction_read_only')::boolean"
)

Connect = Callable[[], psycopg2.extensions.connection]
"""Opens a new DB-API connection to the control plane; may raise psycopg2.Error."""


def connector(
    url: str | sa.URL, *, connect_timeout: int, io_timeout: float | None = None
) -> Connect:
    """A ``Connect`` for ``url``, naming itself ``tp:listener:<pid>``.

    A multi-host ``url`` reaches the host that takes writes (``target_session_attrs``):
    a standby refuses LISTEN. Each round trip is bounded by ``io_timeout`` and TCP
    keepalives notice a peer gone without closing (a partition, a dead host) in seconds:
    the socket then turns readable with an error, and pump() reconnects (app.dbwait).
    """
    params = libpq_params(url)

    def connect() -> psycopg2.extensions.connection:
        connection: psycopg2.extensions.connection = psycopg2.connect(
            **params,
            application_name=f"tp:listener:{os.getpid()}",
            **dbwait.connect_args(connect_timeout=connect_timeout, io_timeout=io_timeout),
        )
        return connection

    return connect


def _read_only(conn: psycopg2.extensions.connection) -> bool:
    """Whether the server of ``conn`` is a standby or read-only by default (one round trip)."""
    with conn.cursor() as cursor:
        cursor.execute(_READ_ONLY_CHECK)
        row = cursor.fetchone()
    return bool(row is not None and row[0])


class TenantEventListener:
    """One LISTEN connection and its reconnection schedule. Thread safe.

    ``self._lock`` guards the connection and the schedule; held while connecting and
    reading notifications (I/O on this connection only), never while calling back.
    ``pump()`` never raises: a broken connection is closed and retried later, a bad
    payload or a failing callback is logged and skipped.
    """

    def __init__(
        self,
        connect: Connect,
        on_event: Callable[[TenantEvent], object],
        *,
        on_reconnect: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_delay: float = 0.2,
        max_delay: float = 10.0,
        check_every: float = 1.0,
        observer: Observer | None = None,
    ) -> None:
        self._connect = connect
        self._observer = observer or Observer()
        self._observer.listener_connected(False)  # until its first connect
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._clock = clock
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.check_every = check_every
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._conn: psycopg2.extensions.connection | None = None
        self._delay = min_delay
        self._next_attempt = 0.0
        self._closed = False
        self.connects = 0
        self.failures = 0
        reset_in_child(self)

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._conn is not None

    def fileno(self) -> int | None:
        """The socket to wait on, or None while disconnected."""
        with self._lock:
            return None if self._conn is None else self._conn.fileno()

    def retry_in(self) -> float | None:
        """Seconds until ``pump()`` is due: the next connection attempt, or the next check
        that the server still takes writes; None once closed."""
        with self._lock:
            if self._closed:
                return None
            due = self._next_attempt if self._conn is None else self._next_check
            return max(0.0, due - self._clock())

    def pump(self) -> int:
        """Connect if due, then deliver every notification received; the number delivered."""
        with self._lock:
            if self._closed:
                return 0
            reconnected = False
            if self._conn is None:
                if self._clock() < self._next_attempt:
                    return 0
                reconnected = self._connect_locked()
                if not reconnected:
                    return 0
            elif self._clock() >= self._next_check and not self._still_primary_locked():
                return 0
            payloads = self._drain_locked()
        if reconnected and self._on_reconnect is not None:
            self._call(self._on_reconnect)
        delivered = 0
        for payload in payloads:
            try:
                event = TenantEvent.from_payload(payload)
            except ValueError:
                logger.warning("ignored a malformed tenant event on %s", CHANNEL)
                continue
            delivered += 1
            self._call(self._on_event, event)
        return delivered

    def close(self) -> None:
        """Close the connection for good."""
        with self._lock:
            self._closed = True
            self._drop_locked(retry_at=self._clock())

    def _connect_locked(self) -> bool:
        conn = None
        try:
            conn = self._connect()
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")  # a constant identifier, no input
            read_only = _read_only(conn)
        except (psycopg2.Error, OSError) as error:
            self._retry_later_locked(conn, type(error).__name__)
            return False
        if read_only:  # a single-host DSN naming a standby, or a demoted primary
            self._retry_later_locked(conn, "the server does not take writes")
            return False
        self._conn = conn
        self._next_check = self._clock() + self.check_every
        self._delay = self.min_delay
        self.connects += 1
        self._observer.listener_connected(True)
        if self.connects > 1:
            logger.info("tenant event listener reconnected")
        return True

    def _retry_later_locked(self, conn: psycopg2.extensions.connection | None, why: str) -> None:
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
        self.failures += 1
        delay = self._delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
        self._next_attempt = self._clock() + delay
        self._delay = min(self.max_delay, self._delay * 2)
        logger.warning("tenant event listener cannot connect (%s); retrying in %.1fs", why, delay)

    def _still_primary_locked(self) -> bool:
        """Ask the server whether it still takes writes; leave it if not (or if it is gone)."""
        conn = self._conn
        if conn is None:  # pragma: no cover - callers check
            return False
        try:
            read_only = _read_only(conn)
        except psycopg2.Error as error:
            logger.warning("tenant event listener lost its connection (%s)", type(error).__name__)
            self._drop_locked(retry_at=self._clock())
            return False
        if read_only:
            logger.warning(
                "tenant event listener's server no longer takes writes (a failover?); "
                "reconnecting to the primary"
            )
            self._drop_locked(retry_at=self._clock())
            return False
        self._next_check = self._clock() + self.check_every
        return True

    def _drain_locked(self) -> list[str]:
        conn = self._conn
        if conn is None:  # pragma: no cover - callers connect first
            return []
        try:
            conn.poll()
        except psycopg2.Error as error:
            logger.warning("tenant event listener lost its connection (%s)", type(error).__name__)
            self._drop_locked(retry_at=self._clock())
            return []
        payloads = [notify.payload for notify in conn.notifies if notify.channel == CHANNEL]
        conn.notifies.clear()
        return payloads

    def _drop_locked(self, *, retry_at: float) -> None:
        conn, self._conn = self._conn, None
        self._next_attempt = retry_at
        if conn is not None:
            self._observer.listener_connected(False)
            try:
                conn.close()
            except psycopg2.Error:
                logger.debug("closing a broken listener connection failed", exc_info=True)

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("tenant event callback %r failed", callback)

    def _reset_after_fork(self) -> None:
        """In a forked child: the connection is the parent's; forget it, never close it."""
        self._lock = threading.Lock()
        self._conn = None
        self._delay = self.min_delay
        self._next_attempt = 0.0
