"""The start-up check that the service's connections fit in each PostgreSQL server.

The service opens at most, per worker: the connection budget (tenant connections, on
whichever server the tenants live, replicas included), the control-plane pool and one
LISTEN connection (on the control-plane server), a gateway pool per cluster on each of its
servers (primary and replicas), and with read replicas one watcher connection on each of
them and on their primary. Gunicorn's master runs ``check_capacity`` before forking any
worker (``on_starting``) and refuses to start, with one line, when

    workers x (budget [+ control pool + 1 listener] [+ gateway pools] [+ watcher])
                                                     > max_connections
                                                       - superuser_reserved_connections
                                                       - reserved_connections (PG 16+)

for some server. docs/operations.md ("Sizing") explains the formula.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from app.db import CONTROL_POOL_MAX
from app.dbhosts import Server, hosts, single_host, where
from app.tenancy.control.clusters import cluster_urls, owner_urls
from app.tenancy.serving.replicas import on_replica
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


def demand_per_worker(
    settings: Settings,
    *,
    control_plane: bool,
    tenant_route: bool = True,
    gateways: int = 0,
    watchers: int = 0,
) -> int:
    """Connections one worker may hold on a server.

    ``control_plane``: the server hosts it (the control pool and the LISTEN connection);
    ``tenant_route``: tenants' own connections may land there (all of the budget, at worst);
    ``gateways``: how many clusters' shared gateway pools log in there;
    ``watchers``: how many of the replica watcher's probes (one connection each) go there.
    """
    budget = settings.connection_budget if tenant_route and settings.serving != "shared" else 0
    shared = settings.gateway_pool_size * gateways if settings.serving != "dedicated" else 0
    extra = CONTROL_POOL_MAX + LISTENER_CONNECTIONS if control_plane else 0
    return budget + shared + extra + watchers


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


@dataclass
class _Server:
    """One server the service connects to, and what lands on it."""

    url: sa.URL
    control_plane: bool = False
    tenant_route: bool = False
    gateways: int = 0
    watchers: int = 0


def check_capacity(settings: Settings) -> None:
    """Raise CapacityError if some server cannot hold every worker's connections.

    The control-plane server is checked, and every ``APP_CLUSTERS`` server that is
    another one (a cluster DSN without a user borrows the control plane's). A server that
    cannot be reached is logged and skipped: the service starts, and ``/readyz`` tells.
    """
    for server in _servers(settings).values():
        per_worker = demand_per_worker(
            settings,
            control_plane=server.control_plane,
            tenant_route=server.tenant_route,
            gateways=server.gateways,
            watchers=server.watchers,
        )
        needed = settings.workers * per_worker
        url = server.url
        slots = _read_slots(url, settings.connect_timeout)
        if slots is None:
            continue
        if needed > slots.available:
            raise CapacityError(
                f"{settings.workers} workers x {per_worker} connections = {needed} exceed the "
                f"{slots.available} that {where(url)} allows "
                f"(max_connections {slots.max_connections} - reserved "
                f"{slots.superuser_reserved + slots.reserved}); lower APP_WORKERS, "
                "APP_CONNECTION_BUDGET or APP_GATEWAY_POOL_SIZE, or raise max_connections "
                "(docs/operations.md, Sizing)"
            )
        log.info("connections fit: %d of %d on %s", needed, slots.available, where(url))


def _servers(settings: Settings) -> dict[Server, _Server]:
    """Every server by (host, port), with what of the service lands on it.

    A DSN listing several hosts (a primary and its standbys) counts on each of them: the
    connections go to whichever is the primary, and after a failover that is another one.
    """
    control = sa.make_url(settings.database_url)
    servers = {key: _Server(url, control_plane=True) for key, url in _each_host(control)}
    for url in cluster_urls(control, settings.clusters).values():
        # A DSN without credentials routes tenants: probe it with the control plane's.
        route = url.set(username=control.username, password=control.password)
        route = url if url.username else route
        for key, one in _each_host(route):
            servers.setdefault(key, _Server(one)).tenant_route = True
    # A cluster's gateway logs in where its owner does.
    owners = owner_urls(control, settings.clusters)
    for owner in owners.values():
        for key, one in _each_host(owner):
            servers.setdefault(key, _Server(one)).gateways += 1
    # A replica gets what its primary gets (tenants, a gateway pool), and the watcher.
    for cluster, dsns in settings.read_replicas.items():
        owner = owners[cluster]
        if dsns:
            for key, one in _each_host(owner):  # the watcher's connection to the primary
                servers.setdefault(key, _Server(one)).watchers += 1
        for dsn in dsns:
            for key, one in _each_host(on_replica(owner, sa.make_url(dsn))):
                replica = servers.setdefault(key, _Server(one))
                replica.tenant_route = True
                replica.gateways += 1
                replica.watchers += 1
    return servers


def _each_host(url: sa.URL) -> list[tuple[Server, sa.URL]]:
    """(server, ``url`` pointed at it alone) for every host ``url`` lists.

    Connections count per server, whatever the database.
    """
    listed = hosts(url)
    if len(listed) == 1:
        return [(listed[0], url)]
    return [(server, single_host(url, server)) for server in listed]


def _read_slots(url: sa.URL, connect_timeout: int) -> ServerSlots | None:
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": connect_timeout}
    )
    try:
        with engine.connect() as connection:
            return server_slots(connection)
    except sa.exc.OperationalError as error:
        log.warning(
            "cannot check the connection capacity of %s (%s); starting anyway",
            where(url),
            type(error.orig).__name__,
        )
        return None
    finally:
        engine.dispose()
