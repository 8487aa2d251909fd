"""The servers a database URL names: one host, or libpq's multi-host list.

A DSN may list a primary and its standbys in libpq's multi-host form, as SQLAlchemy
spells it: ``postgresql://user:pw@/db?host=h1:5432&host=h2:5432&target_session_attrs=
read-write``. libpq then tries the hosts in turn and keeps the first that takes writes,
so whatever connects through such a URL follows the primary across a failover. Such a
URL has no ``url.host``/``url.port``: code that needs to know where it points (capacity
checks, the pooler check, log lines, caches per server) asks this module instead.

Imports nothing of the app, so ``app.tenancy`` may use it as it uses ``app.dbwait``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

__all__ = ["Server", "hosts", "libpq_params", "single_host", "where"]

Server = tuple[str | None, int | None]
"""One server: (host, port); None for libpq's default (local socket, 5432)."""

# Query keys that say where to connect, or which of several hosts to keep.
_WHERE_KEYS = frozenset({"host", "hostaddr", "port", "target_session_attrs"})


def hosts(url: str | sa.URL) -> tuple[Server, ...]:
    """Every server ``url`` names, in libpq's order (one for a plain URL)."""
    url = sa.make_url(url)
    listed = _values(url.query.get("host"))
    if url.host or not listed:
        return ((url.host, url.port),)
    ports = _values(url.query.get("port"))
    servers = []
    for position, item in enumerate(listed):
        host, port = _split(item)
        if port is None and ports:
            # libpq: one port for every host, or one per host.
            given = ports[position] if len(ports) == len(listed) else ports[0]
            port = int(given) if given.isdigit() else None
        servers.append((host, port))
    return tuple(servers)


def where(url: str | sa.URL) -> str:
    """``h1:5432,h2:5432``: where ``url`` points, for a log line (never a password)."""
    return ",".join(f"{host or 'localhost'}:{port or 5432}" for host, port in hosts(url))


def single_host(url: str | sa.URL, server: Server) -> sa.URL:
    """``url`` pointed at ``server`` alone (to ask one server of a list something)."""
    url = sa.make_url(url)
    query = {key: value for key, value in url.query.items() if key.lower() not in _WHERE_KEYS}
    host, port = server
    return url.set(host=host, port=port, query=query)


def libpq_params(url: str | sa.URL) -> dict[str, Any]:
    """``psycopg2.connect`` keyword arguments for ``url``, multi-host lists included.

    libpq reads a ``postgresql://`` URI itself, but not SQLAlchemy's ``?host=h:p&host=...``
    spelling of a host list; SQLAlchemy's psycopg2 dialect turns it into libpq's
    ``host=h1,h2 port=p1,p2``, which is what every engine of the service connects with.
    """
    url = sa.make_url(url).set(drivername="postgresql+psycopg2")
    _args, params = PGDialect_psycopg2().create_connect_args(url)  # type: ignore[no-untyped-call]  # SQLAlchemy's dialects are untyped
    return dict(params)


def _values(raw: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(part for part in raw.split(",") if part)
    return tuple(raw)


def _split(item: str) -> Server:
    """``h:p`` (``[v6]:p``) -> (h, p); a bare host or a socket directory -> (it, None)."""
    if item.startswith("/"):
        return (item, None)
    host, sep, port = item.rpartition(":")
    if sep and port.isdigit() and (host.endswith("]") or ":" not in host):
        return (host.strip("[]"), int(port))
    return (item.strip("[]"), None)
