"""/metrics through gunicorn: every worker's samples, summed, whichever worker answers."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import requests

from app.top_tenants import TOP
from tests.e2e.conftest import SeededTenant, Service

pytestmark = pytest.mark.e2e

SENT = 40


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in exposition text; 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _served_by(service: Service, route: str) -> Counter[int]:
    """Requests of ``route`` per worker pid, from the access log lines."""
    pids: Counter[int] = Counter()
    for line in service.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"tenantpool.access"' in line:
            entry = json.loads(line)
            if entry.get("route") == route:
                pids[entry["pid"]] += 1
    return pids


def test_metrics_sum_requests_of_every_worker(service: Service) -> None:
    route = "/health_check"
    before_text = requests.get(service.url + "/metrics", timeout=10).text
    before = _sample(
        before_text, "tenantpool_http_requests_total", method="GET", route=route, status="200"
    )
    served_before = _served_by(service, route)

    # A new connection each, so that gunicorn spreads them over its workers; until both
    # have served some (the master does not balance: whichever worker accepts first wins).
    sent = 0
    while sent < SENT or (len(_served_by(service, route) - served_before) < 2 and sent < 1000):
        assert requests.get(service.url + route, timeout=10).status_code == 200
        sent += 1

    after = _sample(
        requests.get(service.url + "/metrics", timeout=10).text,
        "tenantpool_http_requests_total",
        method="GET",
        route=route,
        status="200",
    )
    served = _served_by(service, route) - served_before
    assert len(served) == 2, f"both workers should have served some: {served}"
    assert after - before == sent


def test_metrics_have_no_tenant_label(service: Service, seeded: list[SeededTenant]) -> None:
    """Tenant ids appear only in the bounded top series (app/top_tenants.py), at most TOP each."""
    for tenant in seeded:
        assert requests.get(service.url + "/v1/users", headers=tenant.headers, timeout=10).ok

    text = requests.get(service.url + "/metrics", timeout=10).text

    assert _sample(text, "tenantpool_tenant_engines_created_total") >= 1
    assert 'route="/v1/users"' in text
    top_series = ("tenantpool_top_tenant_requests_per_second{", "tenantpool_top_tenant_pool_wait")
    for line in text.splitlines():
        if any(tenant.id in line for tenant in seeded):
            assert line.startswith(top_series), line
    top_lines = [line for line in text.splitlines() if line.startswith(top_series)]
    assert len(top_lines) <= 2 * TOP
