"""``flask seed-tenants``: progress on stderr, tenants on stdout, demo rows, kept keys."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from app.cli import demo_data
from tests.support import invoke


def _seed(app: Flask, prefix: str, *args: str) -> Any:
    result = invoke(app, "seed-tenants", "--prefix", prefix, *args)
    assert result.exit_code == 0, result.output
    return result


def test_seed_tenants_reports_progress_on_stderr(app: Flask) -> None:
    prefix = f"seed-{uuid.uuid4().hex[:8]}"
    result = _seed(app, prefix, "--count", "2", "--users-per-tenant", "1")
    assert result.stderr.splitlines()[-1].startswith("seeding tenants: 2/2 (100%) done in ")
    assert "seeding tenants" not in result.stdout
    assert result.stdout.count(f"{prefix}-000") == 2


def test_seed_tenants_demo_people_are_varied_and_deterministic() -> None:
    people = [demo_data.user_row(0, number, "demo-0001.example") for number in range(132)]
    assert len({(p["first_name"], p["last_name"]) for p in people}) == 132
    assert len({p["last_name"] for p in people[:5]}) == 5
    emails = [p["email"] for p in people]
    emails += [demo_data.user_row(0, number, "x")["email"] for number in range(132, 300)]
    assert len(set(emails)) == len(emails)
    assert people[0]["email"] == "ada.lovelace@demo-0001.example"
    assert demo_data.user_row(1, 0, "d") != demo_data.user_row(0, 0, "d")
    assert demo_data.user_row(3, 7, "d") == demo_data.user_row(3, 7, "d")


def test_seed_tenants_writes_users_products_and_orders(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    output = tmp_path / "tenants.json"
    prefix = f"rows-{uuid.uuid4().hex[:8]}"
    rows = ("--users-per-tenant", "4", "--products-per-tenant", "3", "--orders-per-tenant", "5")
    _seed(app, prefix, "--count", "1", *rows, "--output", str(output))
    (tenant,) = json.loads(output.read_text())
    headers = {"X-Tenant-ID": tenant["id"], "Authorization": f"Bearer {tenant['api_key']}"}
    listed = {
        path: client.get(f"/v1/{path}", headers=headers).json["records"]
        for path in ("users", "products", "orders")
    }
    assert [len(listed[path]) for path in listed] == [4, 3, 5]
    assert len({user["last_name"] for user in listed["users"]}) == 4
    assert all(user["email"].endswith(f"@{prefix}-0001.example") for user in listed["users"])
    user_ids = {user["id"] for user in listed["users"]}
    assert {order["user_id"] for order in listed["orders"]} <= user_ids
    # Seeding again tops up to the numbers asked for, never beyond.
    _seed(app, prefix, "--count", "1", *rows, "--output", str(output), "--keep-keys")
    assert client.get("/v1/orders", headers=headers).json["total"] == 5
    assert oct(output.stat().st_mode & 0o777) == "0o600"


def test_seed_tenants_keep_keys_reuses_the_keys_it_wrote(app: Flask, tmp_path: Path) -> None:
    output, prefix = tmp_path / "tenants.json", f"keys-{uuid.uuid4().hex[:8]}"
    _seed(app, prefix, "--count", "2", "--output", str(output), "--keep-keys")
    first = json.loads(output.read_text())
    again = _seed(app, prefix, "--count", "2", "--output", str(output), "--keep-keys")
    assert json.loads(output.read_text()) == first
    assert first[0]["api_key"] not in again.stdout  # keys go to the file (make run shows them)
    # A key rotated meanwhile no longer opens its tenant: that tenant alone gets a new one.
    assert invoke(app, "tenants", "rotate", first[0]["name"], "--api-key").exit_code == 0
    _seed(app, prefix, "--count", "2", "--output", str(output), "--keep-keys")
    third = json.loads(output.read_text())
    assert third[0]["api_key"] != first[0]["api_key"]
    assert third[1] == first[1]
    # Without --keep-keys, every key is replaced (only hashes are stored).
    _seed(app, prefix, "--count", "2", "--output", str(output))
    assert json.loads(output.read_text())[1]["api_key"] != first[1]["api_key"]


def test_seed_tenants_keep_keys_needs_output(app: Flask) -> None:
    result = invoke(app, "seed-tenants", "--keep-keys")
    assert result.exit_code == 2
    assert "--keep-keys reads the keys from --output" in result.output


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
