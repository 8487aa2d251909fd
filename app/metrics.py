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

from app.tenancy.serving.observer import Observer

__all__ = [
    "TenancyMetrics",
    "count_auth_throttled",
    "count_capacity_rejection",
    "observe_request",
    "render",
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
FAIR_SHARE = Counter(
    "tenantpool_fair_share",
    "Tenant requests by fair-share outcome: admitted at once, admitted after a wait, or "
    "rejected with 429 (over the tenant's share of a worker's threads).",
    ["outcome"],
)
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


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    route = route or UNMATCHED_ROUTE
    method = method if method in _METHODS else "OTHER"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


def count_capacity_rejection() -> None:
    """Count one 503 ``capacity`` answer."""
    CAPACITY_REJECTIONS.inc()


def count_auth_throttled() -> None:
    """Count one 429 ``too_many_auth_failures`` answer (tenant keys and the admin token)."""
    AUTH_THROTTLED.inc()


def render() -> tuple[bytes, str]:
    """The exposition text of every worker (multiprocess mode) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
