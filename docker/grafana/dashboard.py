"""The tenantpool Grafana dashboard, as code: ``python docker/grafana/dashboard.py`` writes it.

Plain dictionaries in Grafana's dashboard JSON model (schema 39), no library: the model is
stable and small enough, and a generator of our own needs nothing pinned. The written
file, ``docker/grafana/dashboards/tenantpool.json``, is what compose provisions; the suite
checks it is what this script makes (``--check`` does the same) and that every metric its
queries name is exported by a running service (tests/e2e/test_observability.py).

Per-tenant panels use the bounded top series (``tenantpool_top_tenant_*``, app/top_tenants.py),
never a label per tenant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "tenantpool.json"
UID = "tenantpool"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = '{instance=~"$instance"}'
"""The instance selector every query carries (the dashboard's ``instance`` variable)."""
RATE = "$__rate_interval"

Panel = dict[str, Any]


def _target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
    if instant:
        target.update(instant=True, range=False, format="time_series")
    return target


def timeseries(title: str, targets: list[dict[str, Any]], *, unit: str = "short") -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
    }


def top(title: str, metric: str, *, unit: str) -> Panel:
    """A bar gauge of the merged top series: one bar per tenant, highest first."""
    expr = f"topk(10, sum by (tenant) ({metric}{SEL}))"
    return {
        "type": "bargauge",
        "title": title,
        "datasource": DATASOURCE,
        "targets": [_target(expr, "{{tenant}}", instant=True)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True},
    }


def stat(title: str, expr: str, *, mappings: list[dict[str, Any]] | None = None) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "datasource": DATASOURCE,
        "targets": [_target(expr)],
        "fieldConfig": {"defaults": {"mappings": mappings or []}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
    }


_UP_DOWN = [
    {"type": "value", "options": {"0": {"text": "down", "color": "red"}}},
    {"type": "value", "options": {"1": {"text": "up", "color": "green"}}},
]


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{SEL}[{RATE}])))"


def requests_row() -> list[Panel]:
    return [
        timeseries(
            "Requests per second, by route and status",
            [
                _target(
                    f"sum by (route, status) (rate(tenantpool_http_requests_total{SEL}[{RATE}]))",
                    "{{route}} {{status}}",
                )
            ],
            unit="reqps",
        ),
        timeseries(
            "Latency p50 and p99, by route",
            [
                _target(
                    _quantile(0.5, "tenantpool_http_request_duration_seconds", "route"),
                    "p50 {{route}}",
                ),
                _target(
                    _quantile(0.99, "tenantpool_http_request_duration_seconds", "route"),
                    "p99 {{route}}",
                ),
            ],
            unit="s",
        ),
        timeseries(
            "Rejections per second: 503 capacity, 429 fair share",
            [
                _target(
                    f"sum(rate(tenantpool_capacity_rejections_total{SEL}[{RATE}]))",
                    "capacity (503)",
                ),
                _target(
                    "sum(rate(tenantpool_fair_share_total"
                    f'{{outcome="rejected", {SEL[1:-1]}}}[{RATE}]))',
                    "fair share (429)",
                ),
            ],
            unit="reqps",
        ),
    ]


def engines_row() -> list[Panel]:
    return [
        timeseries(
            "Tenant engines live",
            [_target(f"sum(tenantpool_tenant_engines{SEL})", "engines")],
        ),
        timeseries(
            "Engines created and evicted per second",
            [
                _target(
                    f"sum(rate(tenantpool_tenant_engines_created_total{SEL}[{RATE}]))", "created"
                ),
                _target(
                    f"sum by (reason) (rate(tenantpool_tenant_engines_evicted_total{SEL}[{RATE}]))",
                    "evicted: {{reason}}",
                ),
            ],
            unit="ops",
        ),
        timeseries(
            "Connection budget and gateway pool use",
            [
                _target(f"sum(tenantpool_connection_budget_in_use{SEL})", "budget in use"),
                _target(f"sum(tenantpool_connection_budget_limit{SEL})", "budget limit"),
                _target(f"sum(tenantpool_gateway_connections_in_use{SEL})", "gateway in use"),
                _target(f"sum(tenantpool_gateway_connections_open{SEL})", "gateway open"),
                _target(f"sum(tenantpool_gateway_pool_limit{SEL})", "gateway limit"),
            ],
        ),
        timeseries(
            "Waits for a connection, p99",
            [
                _target(_quantile(0.99, "tenantpool_pool_wait_seconds", "way"), "request: {{way}}"),
                _target(
                    f"histogram_quantile(0.99, sum by (le) "
                    f"(rate(tenantpool_connection_budget_wait_seconds_bucket{SEL}[{RATE}])))",
                    "budget slot",
                ),
            ],
            unit="s",
        ),
        timeseries(
            "Tenant logins per second",
            [
                _target(f"sum(rate(tenantpool_tenant_logins_total{SEL}[{RATE}]))", "logins"),
                _target(
                    f"sum(rate(tenantpool_tenant_auth_failures_total{SEL}[{RATE}]))", "rejected"
                ),
                _target(
                    f"sum(rate(tenantpool_tenant_login_backoffs_total{SEL}[{RATE}]))", "back-offs"
                ),
            ],
            unit="ops",
        ),
    ]


def tenants_row() -> list[Panel]:
    return [
        top(
            "Busiest tenants (requests per second, last 1-2 min)",
            "tenantpool_top_tenant_requests_per_second",
            unit="reqps",
        ),
        top(
            "Tenants waiting most for connections (seconds per second)",
            "tenantpool_top_tenant_pool_wait_seconds_per_second",
            unit="s",
        ),
    ]


def health_row() -> list[Panel]:
    return [
        stat("Control plane", f"min(tenantpool_control_plane_up{SEL})", mappings=_UP_DOWN),
        stat(
            "Change listeners disconnected",
            f"sum(tenantpool_change_listeners_disconnected{SEL})",
        ),
        timeseries(
            "Worker exits (last 15 min)",
            [
                _target(
                    f"sum by (how) (increase(tenantpool_worker_exits_total{SEL}[15m]))", "{{how}}"
                )
            ],
        ),
        stat(
            "Decrypt failures (last 15 min)",
            f"sum(increase(tenantpool_credential_decrypt_failures_total{SEL}[15m]))",
        ),
    ]


ROWS = [
    ("Requests", requests_row, 8),
    ("Engines and connections", engines_row, 8),
    ("Tenants (top 10, bounded series)", tenants_row, 12),
    ("Health", health_row, 6),
]


def _variables() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {
            "name": "instance",
            "type": "query",
            "label": "Instance",
            "datasource": DATASOURCE,
            "query": {"query": "label_values(tenantpool_http_requests_total, instance)"},
            "definition": "label_values(tenantpool_http_requests_total, instance)",
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "current": {"text": "All", "value": "$__all"},
        },
    ]


def build() -> dict[str, Any]:
    """The dashboard's JSON model."""
    panels: list[Panel] = []
    y = 0
    for title, make, width in ROWS:
        panels.append(
            {"type": "row", "title": title, "collapsed": False, "gridPos": _grid(0, y, 24, 1)}
        )
        y += 1
        for index, panel in enumerate(make()):
            x = (index * width) % 24
            if index and x == 0:
                y += 8
            panels.append({**panel, "gridPos": _grid(x, y, width, 8)})
        y += 8
    for panel_id, panel in enumerate(panels, start=1):
        panel["id"] = panel_id
    return {
        "uid": UID,
        "title": "tenantpool",
        "description": "Requests, engines, connections, logins, the busiest tenants, health.",
        "tags": ["tenantpool"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "panels": panels,
    }


def _grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"x": x, "y": y, "w": w, "h": h}


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(
                f"{OUTPUT} is out of date: run python docker/grafana/dashboard.py", file=sys.stderr
            )
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
