"""Metric names in PromQL expressions (dashboard queries, alert rules), for the suite's checks.

Not a PromQL parser: strings, label matchers, ranges, grouping clauses and Grafana
variables are removed, then every identifier not followed by ``(`` (a function or an
aggregation) and not a keyword is a metric name. Enough for the expressions we write;
tests/test_dashboard.py tests it on the tricky cases.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

DASHBOARD = REPO_ROOT / "docker" / "grafana" / "dashboards" / "tenantpool.json"
RULES = REPO_ROOT / "docker" / "prometheus" / "rules.yml"
PROMETHEUS_SERIES = frozenset({"up"})
"""Series Prometheus makes itself, which no service exports."""

_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "le"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    for pattern in (_MATCHERS, _RANGE, _GROUPING, _VARIABLE):
        text = pattern.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", definition)
        if match:
            queries.append(match.group(1))
    return queries


def alert_expressions(path: Path = RULES) -> dict[str, str]:
    """Alert name -> expression."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def names_used() -> set[str]:
    """Every metric name the dashboard and the alert rules use."""
    expressions = [*dashboard_queries(), *alert_expressions().values()]
    return set().union(*(metric_names(expr) for expr in expressions))
