"""docker/prometheus: the alert rules pass promtool's checks and unit tests; each has a runbook.

promtool comes from Debian's ``prometheus`` package, which .ci/run installs when it runs as
root and promtool is missing; elsewhere these tests skip and say how to get it. That the
service really exports every metric the rules use: tests/e2e/test_observability.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.promql import RULES, alert_expressions
from tests.support import REPO_ROOT

PROMETHEUS = REPO_ROOT / "docker" / "prometheus"
RULE_TESTS = PROMETHEUS / "rules.test.yml"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing: apt-get install prometheus (.ci/run does when run as root)",
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_unit_tests_pass() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_prometheus_config_passes_promtool_check() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_unit_tests_would_catch_a_rule_that_never_fires(tmp_path: Any) -> None:
    """The unit tests bite: with one rule's threshold out of reach, promtool fails."""
    rules = RULES.read_text().replace("> 0.05", "> 1000")
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "rules.test.yml").write_text(RULE_TESTS.read_text())
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "rules.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "TenantpoolHigh503Rate" in result.stdout + result.stderr


def _cases() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULE_TESTS.read_text())
    return [case for test in document["tests"] for case in test["alert_rule_test"]]


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet() -> None:
    fires = {case["alertname"] for case in _cases() if case["exp_alerts"]}
    quiet = {case["alertname"] for case in _cases() if not case["exp_alerts"]}
    alerts = set(alert_expressions())
    assert alerts - fires == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a quiet case"


def test_every_alert_has_a_runbook_line_in_operations() -> None:
    text = OPERATIONS.read_text()
    section = text[text.index("\n## Alerts\n") :]
    section = section[: section.find("\n## ", 1)]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+?) \|$", section, re.MULTILINE)
    documented = {name for name, meaning, action in rows if meaning.strip() and action.strip()}
    assert documented == set(alert_expressions())


def test_every_alert_links_its_runbook_and_says_how_bad() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert rule["annotations"]["runbook_url"] == "docs/operations.md#alerts", rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
