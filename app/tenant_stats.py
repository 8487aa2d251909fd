"""One tenant as the service holds it now, gathered across its workers (the per-tenant view).

``GET /v1/admin/tenants/<id>/stats`` and ``flask tenants stats`` show the same report:
what every worker holds and did for the tenant (``Tenancy.worker_view``: its engine and
connections, requests in flight, recent answers, last login, the way it is served), asked
of the other workers through their peer sockets (``app.tenancy.serving.peers``), beside
what the tenant's database server shows (``pg_stat_activity``, by worker pid). No metric
label per tenant is involved: the report is computed when asked.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from app.tenancy import Tenancy
from app.tenancy.control import queries
from app.tenancy.control.queries import TenantInfo
from app.tenancy.errors import UnknownCluster
from app.tenancy.serving.peers import ask_peers

__all__ = ["tenant_stats"]

PEER_TIMEOUT = 2.0
"""Seconds to wait for the other workers' answers (a reaper busy closing connections)."""
_CONNECTIONS = ("dedicated_open", "dedicated_in_use", "shared_in_use")
_RECENT = ("requests", "client_errors", "server_errors", "dedicated", "shared", "pool_wait_seconds")


def tenant_stats(
    tenancy: Tenancy,
    info: TenantInfo,
    *,
    workers_directory: Path | None,
    include_self: bool,
    timeout: float = PEER_TIMEOUT,
) -> dict[str, Any]:
    """The report on ``info``'s tenant.

    ``include_self``: this process serves requests (a gunicorn worker, or the app in
    process) and reports its own view; a command-line process does not.
    ``workers_directory``: where the workers' peer sockets are (None: ask nobody).
    Raises SQLAlchemy's error when the tenant's database server cannot be asked.
    """
    views = [tenancy.worker_view(info.id)] if include_self else []
    unanswered: list[int] = []
    if workers_directory is not None:
        answers, unanswered = ask_peers(workers_directory, info.id, timeout=timeout)
        views += answers
    views.sort(key=lambda view: int(view["pid"]))
    return {
        "tenant": {
            "id": str(info.id),
            "name": info.name,
            "status": info.status,
            "cluster": info.cluster,
        },
        "serving": tenancy.ways.mode.value,
        "as_of": _iso(time.time()),
        "workers": [_readable(view) for view in views],
        "unanswered_workers": unanswered,
        "totals": _totals(views),
        "database": _database(tenancy, info),
    }


def _database(tenancy: Tenancy, info: TenantInfo) -> dict[str, Any]:
    """The tenant's backends on its cluster's server, by worker pid."""
    try:
        engine = tenancy.clusters.engine(info.cluster)
    except UnknownCluster:
        note = f"cluster {info.cluster!r} is not configured on this node (APP_CLUSTERS)"
        return {"cluster": info.cluster, "connections": None, "by_worker": [], "note": note}
    backends = queries.tenant_backends(engine, info.id)
    return {
        "cluster": info.cluster,
        "connections": sum(backends.values()),
        "by_worker": [{"pid": pid, "connections": n} for pid, n in sorted(backends.items())],
        "note": None,
    }


def _totals(views: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the workers; the last request and login of any."""
    totals: dict[str, Any] = {
        "workers": len(views),
        "engines": sum(1 for view in views if view["engine"]),
        "in_flight": sum(int(view["in_flight"]) for view in views),
        "connections": {
            key: sum(view["connections"][key] for view in views) for key in _CONNECTIONS
        },
        "recent": {key: round(sum(view["recent"][key] for view in views), 6) for key in _RECENT},
    }
    for key in ("last_request_at", "last_login_at"):
        times = [view[key] for view in views if view[key] is not None]
        totals[key] = _iso(max(times)) if times else None
    return totals


def _readable(view: dict[str, Any]) -> dict[str, Any]:
    """A worker's view with its times as ISO 8601."""
    recent = {**view["recent"], "since": _iso(view["recent"]["since"])}
    return {
        **view,
        "last_request_at": None
        if view["last_request_at"] is None
        else _iso(view["last_request_at"]),
        "last_login_at": None if view["last_login_at"] is None else _iso(view["last_login_at"]),
        "recent": recent,
    }


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")
