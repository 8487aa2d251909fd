"""``flask seed-tenants``: progress on stderr, tenants on stdout."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

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


def test_seed_tenants_with_output_prints_ids_and_names_never_keys(
    app: Flask, tmp_path: Path
) -> None:
    prefix = f"seed-{uuid.uuid4().hex[:8]}"
    output = tmp_path / "tenants.json"
    with app.app_context():
        args = ["seed-tenants", "--count", "2", "--users-per-tenant", "0", "--prefix", prefix]
        result = app.test_cli_runner().invoke(args=[*args, "--output", str(output)])
    assert result.exit_code == 0, result.output
    seeded = json.loads(output.read_text())
    assert len(seeded) == 2
    assert output.stat().st_mode & 0o777 == 0o600
    for tenant in seeded:
        assert f"{tenant['name']}  id={tenant['id']}" in result.stdout
        assert tenant["api_key"] not in result.stdout
        assert tenant["api_key"] not in result.stderr
    assert "api_key" not in result.stdout
