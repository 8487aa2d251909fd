"""A server that no longer takes writes is, for a writer, a lost server.

After a failover the old primary may stay up, read-only (demoted in place, or restarted as
a standby). Its pooled connections still answer a ping and serve reads of data that is
no longer current, and SQLAlchemy does not count SQLSTATE 25006 (``cannot execute INSERT
in a read-only transaction``) as a disconnect, so a pool would stay pinned to it, fail
every write and feed caches stale rows for good. Here it is one:

- ``handle_error``: a 25006 on a server that reports itself read-only marks the error a
  disconnect. A 25006 on a server that reports itself writable came from the
  transaction's own read-only mode (a write in a GET): not a failover, the pool is kept.
- ``after_cursor_execute``: a statement after which the server reported itself read-only
  (``in_hot_standby`` or ``default_transaction_read_only`` on: PostgreSQL 14+ sends the
  new value with the answer of the first statement after the change) fails as a
  disconnect too, reads included, so a cache never keeps what a demoted primary said.
- ``checkout``: a pooled connection whose server last reported itself read-only is
  discarded before use, without a round trip.

A disconnect makes SQLAlchemy invalidate the connection and every connection its pool made
before it; the request gets 503 with Retry-After (app/errors.py), and the next checkout
connects anew: through a multi-host DSN with ``target_session_attrs=read-write``
(app/dbhosts.py), to the server that takes writes now.

Only for engines that write (control plane, tenant engines, gateway pools, owners); an
engine meant for a standby must not get it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg2
import sqlalchemy as sa

__all__ = [
    "READ_ONLY_SQLSTATE",
    "ServerReadOnly",
    "discard_if_read_only",
    "follow_writable",
    "server_read_only",
]

READ_ONLY_SQLSTATE = "25006"
"""read_only_sql_transaction: a write refused by a read-only transaction or server."""

_REPORTED = ("in_hot_standby", "default_transaction_read_only")


class ServerReadOnly(psycopg2.OperationalError):
    """The server said it no longer takes writes (a failover); the connection is dropped."""


def follow_writable(engine: sa.Engine) -> None:
    """Make a read-only server a disconnect for ``engine`` (see the module docstring)."""
    sa.event.listen(engine, "handle_error", _read_only_is_disconnect)
    sa.event.listen(engine, "after_cursor_execute", _refuse_answer_of_read_only_server)
    sa.event.listen(engine, "checkout", discard_if_read_only)


def server_read_only(dbapi_connection: Any) -> bool | None:
    """What the server last reported of itself: read-only, writable, or None (not reported).

    Read from libpq's copy of the server's ParameterStatus messages: no round trip.
    """
    get = getattr(dbapi_connection, "get_parameter_status", None)
    if get is None or getattr(dbapi_connection, "closed", True):
        return None
    reported = [get(name) for name in _REPORTED]
    if all(value is None for value in reported):
        return None  # a server before PostgreSQL 14 reports neither
    return "on" in reported


def discard_if_read_only(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` hook: a connection to a server that said it is read-only is replaced."""
    if server_read_only(dbapi_connection):
        raise sa.exc.DisconnectionError("the server of this pooled connection is read-only")


def _refuse_answer_of_read_only_server(
    conn: sa.Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    """``after_cursor_execute``: the answer came from a server now read-only: a disconnect."""
    if server_read_only(cursor.connection):
        raise ServerReadOnly("the server no longer takes writes (a failover?)")


def _read_only_is_disconnect(context: sa.engine.ExceptionContext) -> None:
    """``handle_error``: 25006 on a read-only server (or one that does not say) disconnects."""
    error = context.original_exception
    if isinstance(error, ServerReadOnly):
        context.is_disconnect = True
        return
    if getattr(error, "pgcode", None) != READ_ONLY_SQLSTATE:
        return
    dbapi_connection = None
    if context.connection is not None and not context.connection.invalidated:
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # closed meanwhile: not reported
            dbapi_connection = context.connection.connection.dbapi_connection
    if server_read_only(dbapi_connection) is False:
        return  # the transaction was read-only, not the server: a write in a GET
    context.is_disconnect = True
