"""The start-up check that a shared connection keeps its PostgreSQL backend.

A gateway connection's tenant context is signed for its backend (pid and start time), so
the shared way needs each client connection to stay on one backend for its life. A
transaction-mode pooler (PgBouncer in transaction mode, RDS Proxy, Supavisor) hands a
client connection to whichever backend is free at each transaction: every shared request
would then fail (loudly: the verifier raises). So gunicorn's master probes each server the
gateways log in to before any worker starts, and refuses to start with one line.

The probe, three times, the two connections swapping parts: A reads its backend's pid and
ends its transaction; B opens a transaction and holds it; A reads its pid again. Directly
on PostgreSQL (or through a session-mode pooler) two connections never share a backend and
A keeps its own. A transaction-mode pooler either gives A's idle backend to B or, while B
holds another, moves A.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa

from app.dbhosts import libpq_params, where
from app.dbwait import keepalive_args
from app.tenancy.control.clusters import owner_urls
from config import Settings

__all__ = ["AffinityError", "check_affinity", "keeps_backend"]

log = logging.getLogger(__name__)

_ROUNDS = 3


class AffinityError(Exception):
    """A server the gateways use does not keep a connection on one backend; one line."""


def check_affinity(settings: Settings) -> None:
    """Raise AffinityError unless every cluster's gateway URL keeps its backend.

    Nothing to check when every tenant is served dedicated. A server that cannot be
    reached is logged and skipped, as the capacity check does.
    """
    if settings.serving == "dedicated":
        return
    seen: set[str] = set()
    for name, url in sorted(owner_urls(settings.database_url, settings.clusters).items()):
        dsn = url.render_as_string(hide_password=False)
        if dsn in seen:
            continue
        seen.add(dsn)
        try:
            kept = keeps_backend(url, connect_timeout=settings.connect_timeout)
        except psycopg2.OperationalError as error:
            log.warning(
                "cannot check that cluster %s keeps its backends (%s); starting anyway",
                name,
                type(error).__name__,
            )
            continue
        if not kept:
            raise AffinityError(
                f"APP_SERVING={settings.serving}: cluster {name!r} ({where(url)})"
                " moves a connection between PostgreSQL backends, as a transaction-mode pooler "
                "does, and shared connections are signed for their backend: point that "
                "cluster's DSN at PostgreSQL itself (or a session-mode pooler), or set "
                "APP_SERVING=dedicated (docs/operations.md, Which way to serve tenants)"
            )


def keeps_backend(url: sa.URL, *, connect_timeout: int) -> bool:
    """Whether client connections to ``url`` each keep one backend (see the module docstring)."""
    with _connected(url, connect_timeout) as first, _connected(url, connect_timeout) as second:
        for reader, holder in [(first, second), (second, first)] * _ROUNDS:
            before = _pid(reader)
            held = _pid(holder, "BEGIN; SELECT pg_backend_pid()")
            after = _pid(reader)
            with holder.cursor() as cursor:
                cursor.execute("COMMIT")
            if held == before or after != before:
                return False
    return True


def _pid(connection: psycopg2.extensions.connection, query: str = "SELECT pg_backend_pid()") -> int:
    with connection.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    if row is None:  # pragma: no cover - the query always returns a row
        raise psycopg2.OperationalError("no backend pid")
    return int(row[0])


@contextlib.contextmanager
def _connected(url: sa.URL, connect_timeout: int) -> Iterator[psycopg2.extensions.connection]:
    # libpq_params: SQLAlchemy's multi-host spelling is not libpq's (app/dbhosts.py).
    connection = psycopg2.connect(
        **libpq_params(url),
        connect_timeout=connect_timeout,
        application_name="tp:affinity-check",
        **keepalive_args(connect_timeout),
    )
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()
