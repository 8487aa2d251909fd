"""``flask tenants ...``: the same lifecycle as the admin API, from a shell."""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask

from app.models import Tenant
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.control.queries import find_tenant_by_name, get_tenant
from app.tenancy.serving.resolve import hash_api_key
from tests.support import invoke, stored_password


def _name() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def test_tenants_create_prints_id_and_a_working_key(app: Flask, tenancy: Tenancy) -> None:
    name = _name()
    result = invoke(app, "tenants", "create", name)
    assert result.exit_code == 0, result.output
    match = re.search(r"id=(\S+)  name=(\S+)  api_key=(\S+)", result.output)
    assert match is not None
    tenant_id, api_key = uuid.UUID(match[1]), match[3]
    assert tenancy.authenticate(tenant_id, api_key).name == name


def test_tenants_create_refuses_a_taken_name(app: Flask, tenant_a: ProvisionedTenant) -> None:
    result = invoke(app, "tenants", "create", tenant_a.name)
    assert result.exit_code == 1
    assert "exists already" in result.output


def test_tenants_list_shows_every_tenant(app: Flask, tenant_a: ProvisionedTenant) -> None:
    result = invoke(app, "tenants", "list")
    assert result.exit_code == 0
    assert re.search(rf"{tenant_a.id}\s+active\s+test1\s+.*{tenant_a.name}", result.output)


def test_tenants_list_filters_by_status(app: Flask, tenant_a: ProvisionedTenant) -> None:
    assert invoke(app, "tenants", "suspend", str(tenant_a.id)).exit_code == 0
    assert tenant_a.name not in invoke(app, "tenants", "list", "--status", "active").output
    assert tenant_a.name in invoke(app, "tenants", "list", "--status", "suspended").output


def test_tenants_rotate_changes_the_password_by_default(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    before = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    result = invoke(app, "tenants", "rotate", tenant_a.name)
    assert result.exit_code == 0, result.output
    assert stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id) != before
    assert "api_key" not in result.output


def test_tenants_rotate_api_key_prints_the_new_key_only(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    before = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    result = invoke(app, "tenants", "rotate", str(tenant_a.id), "--api-key")
    assert result.exit_code == 0, result.output
    match = re.search(r"api_key=(\S+)", result.output)
    assert match is not None
    with tenancy.control_engine.connect() as connection:
        stored = connection.scalar(sa.select(Tenant.api_key_hash).where(Tenant.id == tenant_a.id))
    assert stored == hash_api_key(match[1])
    assert stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id) == before


def test_tenants_suspend_and_resume_by_name(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    assert invoke(app, "tenants", "suspend", tenant_a.name).exit_code == 0
    assert get_tenant(tenancy.control_engine, tenant_a.id).status == "suspended"
    assert invoke(app, "tenants", "resume", tenant_a.name).exit_code == 0
    assert get_tenant(tenancy.control_engine, tenant_a.id).status == "active"


def test_tenants_delete_asks_first(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    result = invoke(app, "tenants", "delete", tenant_a.name, input="n\n")
    assert result.exit_code == 1
    assert find_tenant_by_name(tenancy.control_engine, tenant_a.name) is not None


def test_tenants_delete_with_yes_removes_the_tenant(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    result = invoke(app, "tenants", "delete", str(tenant_a.id), "--yes", "--grace", "0")
    assert result.exit_code == 0, result.output
    assert find_tenant_by_name(tenancy.control_engine, tenant_a.name) is None


@pytest.mark.parametrize("command", ["rotate", "suspend", "resume", "delete"])
def test_tenants_unknown_tenant_is_a_clear_error(app: Flask, command: str) -> None:
    args = ["tenants", command, str(uuid.uuid4())] + (["--yes"] if command == "delete" else [])
    result = invoke(app, *args)
    assert result.exit_code == 1
    assert "no tenant with id or name" in result.output
