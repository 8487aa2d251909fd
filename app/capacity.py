"""The start-up check that the service's connections fit in each PostgreSQL server.

The service opens at most, per worker: the connection budget (tenant connections, on
whichever server the tenants live), the control-plane pool and one LISTEN connection (on
the control-plane server). Gunicorn's master runs ``check_capacity`` before forking any
worker (``on_starting``) and refuses to start, with one line, when

    workers x (budget [+ control pool + 1 listener]) > max_connections
                                                       - superuser_reserved_connections
                                                       - reserved_connections (PG 16+)

for some server. docs/operations.md ("Sizing") explains the formula.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from app.db import CONTROL_POOL_MAX
from app.tenancy.control.clusters import cluster_urls
from config import Settings

__all__ = ["CapacityError", "ServerSlots", "check_capacity", "demand_per_worker", "server_slots"]

log = logging.getLogger(__name__)

LISTENER_CONNECTIONS = 1
"""The LISTEN connection of each worker, on the control-plane server."""


class CapacityError(Exception):
    """The configured connections cannot fit in a server; one line for the operator."""


@dataclass(frozen=True)
class ServerSlots:
    """What a server lets ordinary (non-superuser) roles open."""

    max_connections: int
    superuser_reserved: int
    reserved: int

    @property
    def available(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved


def demand_per_worker(settings: Settings, *, control_plane: bool) -> int:
    """Connections one worker may hold on a server (``control_plane``: it hosts it)."""
    extra = CONTROL_POOL_MAX + LISTENER_CONNECTIONS if control_plane else 0
    return settings.connection_budget + extra


def server_slots(connection: sa.Connection) -> ServerSlots:
    """Read the server's connection settings; any role may."""
    rows = connection.execute(
        sa.text(
            "SELECT name, setting::int FROM pg_settings WHERE name IN "
            "('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
        )
    )
    values = {name: setting for name, setting in rows}
    return ServerSlots(
        max_connections=values["max_connections"],
        superuser_reserved=values.get("superuser_reserved_connections", 0),
        reserved=values.get("reserved_connections", 0),  # PostgreSQL 16 and later
    )


def check_capacity(settings: Settings) -> None:
    """Raise CapacityError if some server cannot hold every worker's connections.

    The control-plane server is checked, and every ``APP_CLUSTERS`` server that is
    another one (a cluster DSN without a user borrows the control plane's). A server that
    cannot be reached is logged and skipped: the service starts, and ``/readyz`` tells.
    """
    control = sa.make_url(settings.database_url)
    servers: dict[tuple[str | None, int | None], tuple[sa.URL, bool]] = {
        _server_key(control): (control, True)
    }
    for url in cluster_urls(control, settings.clusters).values():
        if url.username is None:
            url = url.set(username=control.username, password=control.password)
        servers.setdefault(_server_key(url), (url, False))
    for url, hosts_control_plane in servers.values():
        needed = settings.workers * demand_per_worker(settings, control_plane=hosts_control_plane)
        slots = _read_slots(url, settings.connect_timeout)
        if slots is None:
            continue
        if needed > slots.available:
            per_worker = demand_per_worker(settings, control_plane=hosts_control_plane)
            raise CapacityError(
                f"{settings.workers} workers x {per_worker} connections = {needed} exceed the "
                f"{slots.available} that {url.host}:{url.port or 5432} allows "
                f"(max_connections {slots.max_connections} - reserved "
                f"{slots.superuser_reserved + slots.reserved}); lower APP_WORKERS or "
                "APP_CONNECTION_BUDGET, or raise max_connections (docs/operations.md, Sizing)"
            )
        log.info("connections fit: %d of %d on %s:%s", needed, slots.available, url.host, url.port)


def _server_key(url: sa.URL) -> tuple[str | None, int | None]:
    # Connections count per server, whatever the database.
    return (url.host, url.port)


def _read_slots(url: sa.URL, connect_timeout: int) -> ServerSlots | None:
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": connect_timeout}
    )
    try:
        with engine.connect() as connection:
            return server_slots(connection)
    except sa.exc.OperationalError as error:
        log.warning(
            "cannot check the connection capacity of %s:%s (%s); starting anyway",
            url.host,
            url.port,
            type(error.orig).__name__,
        )
        return None
    finally:
        engine.dispose()
