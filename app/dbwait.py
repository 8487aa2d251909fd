"""Client-side bounds on every wait for PostgreSQL, so no request waits forever.

libpq bounds the connection handshake (``connect_timeout``) and the server bounds each
statement (the role's ``statement_timeout``), but nothing bounds a wait on an established
connection whose peer went silent: a hung server or proxy, a black-holed network. A
pooled connection's query then blocks its thread for good, and gunicorn's
gthread worker keeps heartbeating from its main thread, so nothing ever kills it. TCP
keepalives and ``tcp_user_timeout`` do not help while anything on the path still
acknowledges packets: measured with a proxy that stops forwarding, a query with
``keepalives_idle=1`` and ``tcp_user_timeout=2000`` waited until the proxy was healed.

So psycopg2 runs in its "green" mode (:func:`install`): every blocking libpq wait goes
through :func:`wait`, which gives a connection handshake its ``connect_timeout`` and, on
connections made by :func:`connect_args`, each round trip (query, commit, rollback)
``io_timeout`` seconds. When a bound is hit psycopg2 closes the connection,
SQLAlchemy sees a disconnect and drops it from its pool, and the request gets a 503.
Other connections wait as long as libpq would. Green mode rules out COPY and large
objects, which this service does not use.

Not tenacity: this is not a retry loop but psycopg2's wait callback, run on every round trip
of every connection; it bounds one wait on one socket, which a retry library cannot.
"""

from __future__ import annotations

import math
import select
import time
from typing import Any

import psycopg2
import psycopg2.extensions as pgext
import sqlalchemy as sa

__all__ = [
    "BoundedConnection",
    "connect_args",
    "discard_if_closed_by_server",
    "install",
    "keepalive_args",
    "wait",
]

_ESTABLISHED = frozenset(
    {pgext.STATUS_READY, pgext.STATUS_BEGIN, pgext.STATUS_PREPARED},
)
_LIBPQ_MIN_CONNECT_TIMEOUT = 2  # libpq reads connect_timeout=1 as 2 seconds
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3


class BoundedConnection(pgext.connection):
    """A psycopg2 connection whose round trips :func:`wait` bounds by ``io_timeout`` s."""

    io_timeout: float | None = None


class DatabaseTimeout(psycopg2.OperationalError):
    """The server did not answer within the client-side bound; the connection is closed."""


def install() -> None:
    """Route every blocking psycopg2 wait of this process through :func:`wait` (idempotent)."""
    if pgext.get_wait_callback() is not wait:
        pgext.set_wait_callback(wait)


def connect_args(*, connect_timeout: int, io_timeout: float | None) -> dict[str, Any]:
    """psycopg2 connect arguments that bound the handshake and every later round trip.

    With TCP keepalives (:func:`keepalive_args`), so an idle connection to a server that
    vanished (a dead host, a partition) is noticed in seconds too.
    """

    def connection_factory(dsn: str, *args: Any, **kwargs: Any) -> BoundedConnection:
        connection = BoundedConnection(dsn, *args, **kwargs)
        connection.io_timeout = io_timeout
        return connection

    return {
        "connect_timeout": connect_timeout,
        "connection_factory": connection_factory,
        **keepalive_args(connect_timeout),
    }


def keepalive_args(connect_timeout: int) -> dict[str, Any]:
    """libpq TCP options: a silent peer is given up on in seconds, not the kernel's minutes.

    Keepalives probe an idle connection after ``KEEPALIVE_IDLE`` s, then every
    ``KEEPALIVE_INTERVAL`` s, and drop it after ``KEEPALIVE_COUNT`` unanswered probes:
    about 11 s for a pooled or LISTEN connection whose server died without a word (the
    kernel default is over two hours). ``tcp_user_timeout`` gives up on data (and, on
    Linux, a connection attempt) the peer does not acknowledge: below ``connect_timeout``,
    so a black-holed host of a multi-host DSN fails in the kernel and libpq tries the next
    host before :func:`wait` gives up on the whole attempt.
    """
    return {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE,
        "keepalives_interval": KEEPALIVE_INTERVAL,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": max(500, connect_timeout * 1000 * 3 // 4),
    }


def wait(connection: pgext.connection) -> None:
    """psycopg2's wait callback: poll until done, or raise DatabaseTimeout at the bound.

    Raising here makes psycopg2 close the connection, so it is never reused half-way
    through a protocol exchange.
    """
    timeout = _bound(connection)
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = _attempt(connection)
    while True:
        state = connection.poll()
        if state == pgext.POLL_OK:
            return
        if state == pgext.POLL_READ:
            events = select.POLLIN
        elif state == pgext.POLL_WRITE:
            events = select.POLLOUT
        else:
            raise psycopg2.OperationalError(f"unexpected psycopg2 poll state {state}")
        if timeout is not None and _attempt(connection) != attempt:
            # libpq moved on to the next host or address: each gets connect_timeout, as
            # libpq's own blocking connect gives them.
            attempt = _attempt(connection)
            deadline = time.monotonic() + timeout
        if deadline is None:
            wait_ms = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                phase = "connect" if connection.status not in _ESTABLISHED else "answer"
                raise DatabaseTimeout(f"timeout: no {phase} from the database in {timeout:g} s")
            wait_ms = math.ceil(remaining * 1000)
        # A new poller each time: the socket changes while libpq tries addresses in turn.
        poller = select.poll()
        poller.register(connection.fileno(), events)
        poller.poll(wait_ms)


def _attempt(connection: pgext.connection) -> tuple[int, str | None, str | None]:
    """Which socket and host a connection is on (the host changes while libpq tries a list)."""
    if connection.status in _ESTABLISHED:
        return (connection.fileno(), None, None)
    info = connection.info
    return (connection.fileno(), info.host, str(info.port))


def _bound(connection: pgext.connection) -> float | None:
    """Seconds this wait may take: connect_timeout while connecting, else io_timeout."""
    if connection.status in _ESTABLISHED:
        return getattr(connection, "io_timeout", None)
    raw = pgext.parse_dsn(connection.dsn).get("connect_timeout", "")
    try:
        seconds = int(raw)
    except ValueError:
        return None
    return None if seconds <= 0 else max(seconds, _LIBPQ_MIN_CONNECT_TIMEOUT)


def discard_if_closed_by_server(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` hook: a connection the server has closed is replaced, unused.

    The zero-round-trip equivalent of ``pool_pre_ping``. A pooled connection is idle, so
    the server has nothing to say on it: if its socket is readable (end of file, or the
    FATAL message a server sends when it shuts down or terminates the backend), the server
    is gone. SQLAlchemy then discards the connection and checks out another, up to three
    times, so a restarted server costs only the requests that were in flight. A server
    that went silent without closing anything is caught by ``APP_DATABASE_IO_TIMEOUT`` on
    the first query, as a ping would have been.
    """
    if dbapi_connection.closed:
        raise sa.exc.DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):  # readable, hung up or failed
        raise sa.exc.DisconnectionError("the server closed this pooled connection")
