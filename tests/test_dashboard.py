"""docker/grafana: the dashboard is what its script makes, and names metrics the app declares.

That a running service really exports them: tests/e2e/test_observability.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.top_tenants import TopTenantsCollector
from tests.promql import DASHBOARD, PROMETHEUS_SERIES, dashboard_queries, metric_names, names_used
from tests.support import REPO_ROOT


def _generator() -> ModuleType:
    path = REPO_ROOT / "docker" / "grafana" / "dashboard.py"
    spec = importlib.util.spec_from_file_location("tenantpool_dashboard", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared_sample_names(tmp_path: Path) -> set[str]:
    """The sample names the app's metrics can have (whether or not observed yet)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    families = [*REGISTRY.collect(), *TopTenantsCollector(tmp_path).collect()]
    return {
        family.name + suffix
        for family in families
        if family.name.startswith("tenantpool_")
        for suffix in suffixes.get(family.type, ())
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (route, status) (rate(a_total{instance=~"$instance"}[$__rate_interval]))',
            {"a_total"},
        ),
        ("histogram_quantile(0.99, sum by (le, way) (rate(b_bucket[5m]))) > 0.25", {"b_bucket"}),
        ('x{status="503"} / ignoring(status) y > bool 0.5 unless z offset 5m', {"x", "y", "z"}),
        ('topk(10, sum by (tenant) (c{label="sum(d)"}))', {"c"}),
        ("up == 0 and on (instance) e", {"up", "e"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_dashboard_file_is_what_the_script_makes() -> None:
    assert _generator().main(["--check"]) == 0


def test_dashboard_names_only_metrics_the_app_declares(tmp_path: Path) -> None:
    unknown = names_used() - declared_sample_names(tmp_path) - PROMETHEUS_SERIES
    assert unknown == set()


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    used = set().union(*(metric_names(q) for q in dashboard_queries()))
    for needed in (
        "tenantpool_http_requests_total",  # rate by route and status
        "tenantpool_http_request_duration_seconds_bucket",  # latency
        "tenantpool_tenant_engines",  # live
        "tenantpool_tenant_engines_created_total",
        "tenantpool_tenant_engines_evicted_total",
        "tenantpool_connection_budget_in_use",
        "tenantpool_gateway_connections_in_use",
        "tenantpool_tenant_logins_total",
        "tenantpool_top_tenant_requests_per_second",  # top-N, bounded
        "tenantpool_top_tenant_pool_wait_seconds_per_second",
    ):
        assert needed in used, needed


def test_dashboard_panels_fit_the_grid_and_have_unique_ids() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_per_tenant_panels_use_the_bounded_series() -> None:
    """No query groups by a tenant label except over the top series (at most 10 each)."""
    for query in dashboard_queries():
        if "tenant)" in query:
            assert metric_names(query) <= {
                "tenantpool_top_tenant_requests_per_second",
                "tenantpool_top_tenant_pool_wait_seconds_per_second",
            }, query
