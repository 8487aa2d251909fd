"""The busiest tenants as a bounded metric: a few "top" series, never one per tenant.

Every worker's reaper writes, on each tick, the ``TOP`` tenants it served most (requests
per second) and that waited most for connections (pool wait seconds per second) over
the last one to two minutes (``TenantActivity.top``), into ``top-<pid>.json`` in the
directory its gunicorn gives the workers. ``/metrics`` sums those files per tenant and
exports the ``TOP`` highest of each as::

    tenantpool_top_tenant_requests_per_second{tenant="<uuid>"}
    tenantpool_top_tenant_pool_wait_seconds_per_second{tenant="<uuid>"}

So a scrape holds at most ``TOP`` series of each, whatever the tenant count; Prometheus
keeps a series per tenant that was ever among them, which grows with how often the top
changes, not with the tenants. A tenant's total is exact when every worker counted it
among its own top; one that is in some workers' lists only is undercounted by what the
others saw, which can only hide a tenant that no worker finds busy.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.tenancy.serving.activity import TenantActivity
from app.worker_exits import top_file

__all__ = ["TOP", "TopTenantsCollector", "top_file", "write_top"]

logger = logging.getLogger(__name__)

TOP = 10
"""Series per top metric."""
STALE_AFTER = 300.0
"""Seconds after which a worker's file is ignored (a worker that stopped writing)."""


def write_top(directory: Path, activity: TenantActivity, count: int = TOP) -> None:
    """Write this worker's busiest tenants (a reaper task); replaced atomically."""
    requests, waits = activity.top(count)
    document = {
        "requests": [[str(tenant), rate] for tenant, rate in requests],
        "pool_wait": [[str(tenant), rate] for tenant, rate in waits],
    }
    path = top_file(directory, os.getpid())
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document))
    partial.replace(path)


def merge_top(directory: Path, count: int = TOP) -> tuple[dict[str, float], dict[str, float]]:
    """The ``count`` highest per-tenant sums of every worker's fresh file, for each list."""
    requests: dict[str, float] = {}
    waits: dict[str, float] = {}
    oldest = time.time() - STALE_AFTER
    for path in directory.glob("top-*.json"):
        try:
            if path.stat().st_mtime < oldest:
                continue
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed meanwhile, or being replaced
        for key, totals in (("requests", requests), ("pool_wait", waits)):
            for tenant, rate in document.get(key, []):
                totals[tenant] = totals.get(tenant, 0.0) + float(rate)
    return _highest(requests, count), _highest(waits, count)


def _highest(totals: dict[str, float], count: int) -> dict[str, float]:
    return dict(sorted(totals.items(), key=lambda item: item[1], reverse=True)[:count])


class TopTenantsCollector(Collector):
    """Exports the merged top lists of the workers whose files are in ``directory``."""

    def __init__(self, directory: Path, count: int = TOP) -> None:
        self._directory = directory
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        requests, waits = merge_top(self._directory, self._count)
        families = (
            (
                "tenantpool_top_tenant_requests_per_second",
                "Requests per second of the busiest tenants over the last 1-2 minutes "
                f"(at most {self._count} series).",
                requests,
            ),
            (
                "tenantpool_top_tenant_pool_wait_seconds_per_second",
                "Seconds per second the tenants that waited most for database connections "
                f"spent waiting, over the last 1-2 minutes (at most {self._count} series).",
                waits,
            ),
        )
        for name, documentation, values in families:
            family = GaugeMetricFamily(name, documentation, labels=["tenant"])
            for tenant, value in values.items():
                family.add_metric([tenant], value)
            yield family
