"""``flask seed-tenants``: progress on stderr, tenants on stdout."""

from __future__ import annotations

import uuid

from flask import Flask


def test_seed_tenants_reports_progress_on_stderr(app: Flask) -> None:
    prefix = f"seed-{uuid.uuid4().hex[:8]}"
    # Under `flask`, FlaskGroup pushes the app context; the test runner invokes app.cli.
    with app.app_context():
        result = app.test_cli_runner().invoke(
            args=["seed-tenants", "--count", "2", "--users-per-tenant", "1", "--prefix", prefix]
        )
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1].startswith("seeding tenants: 2/2 (100%) done in ")
    assert "seeding tenants" not in result.stdout
    assert result.stdout.count(f"{prefix}-000") == 2
