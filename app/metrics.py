"""Prometheus metrics, safe across gunicorn workers; no per-tenant label.

Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory before anything imports prometheus_client (which picks its storage from that
variable at import time): every worker then writes its samples to files there, and
``render()`` sums them with a ``MultiProcessCollector``, so any worker's ``/metrics``
shows the whole service. Without the variable (``flask run``, tests) the default
in-process registry is served.

Labels are bounded on purpose: routes are URL rule templates (``/v1/users/<uuid:id>``),
eviction reasons a short fixed list. A tenant id never becomes a label: 10,000 tenants
would be 10,000 series per metric.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app import top_tenants, worker_exits
from app.tenancy.serving.observer import Observer

__all__ = [
    "TenancyMetrics",
    "count_auth_throttled",
    "count_capacity_rejection",
    "observe_request",
    "render",
    "set_control_plane_up",
    "worker_exited",
    "worker_exiting",
    "worker_started",
]

UNMATCHED_ROUTE = "<unmatched>"
"""The route label of requests that matched no URL rule (404s for arbitrary paths)."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own name; any other token a client sends counts as OTHER."""

HTTP_REQUESTS = Counter(
    "tenantpool_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "tenantpool_http_request_duration_seconds",
    "Time from the first byte of the request to the response, by method and route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ENGINES_LIVE = Gauge(
    "tenantpool_tenant_engines",
    "Tenant engines held by the live workers.",
    multiprocess_mode="livesum",
)
ENGINES_CREATED = Counter("tenantpool_tenant_engines_created", "Tenant engines created.")
ENGINES_EVICTED = Counter(
    "tenantpool_tenant_engines_evicted",
    "Tenant engines disposed, by reason (idle, lru, auth, shutdown, or a change event).",
    ["reason"],
)
BUDGET_IN_USE = Gauge(
    "tenantpool_connection_budget_in_use",
    "Tenant connections open or being opened, summed over the live workers.",
    multiprocess_mode="livesum",
)
BUDGET_WAIT = Histogram(
    "tenantpool_connection_budget_wait_seconds",
    "Time a new tenant connection waited for a slot of its worker's connection budget.",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CAPACITY_REJECTIONS = Counter(
    "tenantpool_capacity_rejections",
    "Requests answered 503 'capacity': no tenant connection free within the pool timeout.",
)
AUTH_FAILURES = Counter(
    "tenantpool_tenant_auth_failures",
    "Tenant logins rejected by PostgreSQL (SQLSTATE 28P01).",
)
LOGINS = Counter(
    "tenantpool_tenant_logins",
    "New connections logged in as a tenant's own role (each one a backend started).",
)
LOGIN_BACKOFFS = Counter(
    "tenantpool_tenant_login_backoffs",
    "Times a tenant whose logins kept being rejected was made to wait before trying again.",
)
DECRYPT_FAILURES = Counter(
    "tenantpool_credential_decrypt_failures",
    "Stored database passwords (a tenant's or a gateway's) that could not be decrypted.",
)
POOL_WAIT = Histogram(
    "tenantpool_pool_wait_seconds",
    "Time a request waited for its database connection, by way of serving (dedicated or "
    "shared), including a login or a budget slot when one was needed; failures included.",
    ["way"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BUDGET_LIMIT = Gauge(
    "tenantpool_connection_budget_limit",
    "Tenant connections the live workers may hold (APP_CONNECTION_BUDGET each).",
    multiprocess_mode="livesum",
)
GATEWAY_IN_USE = Gauge(
    "tenantpool_gateway_connections_in_use",
    "Shared gateway connections checked out by requests, summed over the live workers.",
    multiprocess_mode="livesum",
)
GATEWAY_OPEN = Gauge(
    "tenantpool_gateway_connections_open",
    "Shared gateway connections open, summed over the live workers.",
    multiprocess_mode="livesum",
)
GATEWAY_LIMIT = Gauge(
    "tenantpool_gateway_pool_limit",
    "Gateway connections the live workers' pools may open (APP_GATEWAY_POOL_SIZE per cluster).",
    multiprocess_mode="livesum",
)
# A sum of the workers' "disconnected" flags, not a minimum of "connected" ones: processes
# that never listen (gunicorn's master, a flask command) then add 0 instead of pinning it.
LISTENERS_DISCONNECTED = Gauge(
    "tenantpool_change_listeners_disconnected",
    "Live workers whose change-event listener is not connected (0 when all listen).",
    multiprocess_mode="livesum",
)
CONTROL_PLANE_UP = Gauge(
    "tenantpool_control_plane_up",
    "1 if the control-plane database answered the last readiness check (/readyz, and each "
    "scrape of /metrics), else 0.",
    multiprocess_mode="livemostrecent",
)
FAIR_SHARE = Counter(
    "tenantpool_fair_share",
    "Tenant requests by fair-share outcome: admitted at once, admitted after a wait, or "
    "rejected with 429 (over the tenant's share of a worker's threads).",
    ["outcome"],
)
WORKER_STARTS = Counter("tenantpool_worker_starts", "Gunicorn workers started (forked).")
WORKER_EXITS = worker_exits.exits_counter()
WORKER_EXIT_KINDS = worker_exits.EXIT_KINDS
# Label values known in advance are exported from the start, at 0: a rule or a graph then
# sees a series instead of nothing until the first event.
for _way in ("dedicated", "shared"):
    POOL_WAIT.labels(_way)
for _how in WORKER_EXIT_KINDS:
    WORKER_EXITS.labels(_how)
for _outcome in ("admitted", "waited", "rejected"):
    FAIR_SHARE.labels(_outcome)
AUTH_THROTTLED = Counter(
    "tenantpool_auth_throttled",
    "Requests answered 429 because their client failed to authenticate too often.",
)


class TenancyMetrics(Observer):
    """The tenancy layer's reports, recorded as the series above."""

    def engine_created(self) -> None:
        ENGINES_CREATED.inc()
        ENGINES_LIVE.inc()

    def engines_evicted(self, reason: str, count: int) -> None:
        ENGINES_EVICTED.labels(reason).inc(count)
        ENGINES_LIVE.dec(count)

    def budget_wait(self, seconds: float) -> None:
        BUDGET_WAIT.observe(seconds)

    def budget_in_use(self, count: int) -> None:
        BUDGET_IN_USE.set(count)

    def login_rejected(self) -> None:
        AUTH_FAILURES.inc()

    def fair_share(self, outcome: str) -> None:
        FAIR_SHARE.labels(outcome).inc()

    def login(self) -> None:
        LOGINS.inc()

    def login_backoff(self, seconds: float) -> None:
        LOGIN_BACKOFFS.inc()

    def decrypt_failed(self) -> None:
        DECRYPT_FAILURES.inc()

    def pool_wait(self, way: str, seconds: float) -> None:
        POOL_WAIT.labels(way).observe(seconds)

    def gateway_connections(self, *, in_use: int = 0, opened: int = 0) -> None:
        if in_use:
            GATEWAY_IN_USE.inc(in_use)
        if opened:
            GATEWAY_OPEN.inc(opened)

    def gateway_pool_created(self, size: int) -> None:
        GATEWAY_LIMIT.inc(size)

    def listener_connected(self, connected: bool) -> None:
        LISTENERS_DISCONNECTED.set(0 if connected else 1)

    @staticmethod
    def budget_limit(limit: int) -> None:
        """This worker's connection budget (set once, when its tenancy is built)."""
        BUDGET_LIMIT.set(limit)


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    route = route or UNMATCHED_ROUTE
    method = method if method in _METHODS else "OTHER"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


def count_capacity_rejection() -> None:
    """Count one 503 ``capacity`` answer."""
    CAPACITY_REJECTIONS.inc()


def set_control_plane_up(up: bool) -> None:
    """Record the outcome of a readiness check of the control-plane database."""
    CONTROL_PLANE_UP.set(1 if up else 0)


def worker_directory() -> Path | None:
    """The directory the workers of this gunicorn share, if any (multiprocess mode)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(given) if given else None


def worker_started() -> None:
    """In a new worker (gunicorn's ``post_fork``)."""
    WORKER_STARTS.inc()


def worker_exiting() -> None:
    """In a worker that leaves by itself (``worker_exit``): its exit is not a death."""
    directory = worker_directory()
    if directory is not None:
        worker_exits.exit_marker(directory, os.getpid()).touch()


def worker_exited(pid: int, *, aborted: bool) -> None:
    """What the master does at a worker's exit (gunicorn.conf.py runs app/worker_exits.py
    itself, loaded by path): count how it went, forget its live files.

    ``aborted``: gunicorn killed it after its worker timeout.
    """
    worker_exits.record_exit(WORKER_EXITS, worker_directory(), pid, aborted=aborted)


def count_auth_throttled() -> None:
    """Count one 429 ``too_many_auth_failures`` answer (tenant keys and the admin token)."""
    AUTH_THROTTLED.inc()


def render() -> tuple[bytes, str]:
    """The exposition text of every worker (multiprocess mode) or of this process."""
    directory = worker_directory()
    if directory is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(top_tenants.TopTenantsCollector(directory))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
