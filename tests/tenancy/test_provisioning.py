"""Creating tenants in batches: every tenant usable, and a batch is all or nothing."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.models import Tenant, User
from app.tenancy import Tenancy
from app.tenancy.provisioning import ProvisionedTenant, create_tenants

ROLES = sa.text("SELECT count(*) FROM pg_roles WHERE rolname LIKE 't\\_%'")


def test_provisioning_create_tenants_makes_each_usable(tenancy: Tenancy) -> None:
    names = [f"batch-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    created = create_tenants(tenancy.control_engine, tenancy.keyring, names, tenancy.limits)
    assert [tenant.name for tenant in created] == names
    for tenant in created:
        session = tenancy.open_session(tenant.id)
        try:
            assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
        finally:
            session.close()


def test_provisioning_create_tenants_is_all_or_nothing(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    fresh = f"batch-{uuid.uuid4().hex[:8]}"
    with tenancy.control_engine.connect() as connection:
        roles_before = connection.scalar(ROLES)
    with pytest.raises(sa.exc.IntegrityError):
        create_tenants(
            tenancy.control_engine, tenancy.keyring, [fresh, tenant_a.name], tenancy.limits
        )
    with tenancy.control_engine.connect() as connection:
        assert connection.scalar(ROLES) == roles_before
        assert connection.scalar(sa.select(Tenant.id).where(Tenant.name == fresh)) is None


def test_provisioning_create_tenants_of_nothing_is_nothing(tenancy: Tenancy) -> None:
    assert create_tenants(tenancy.control_engine, tenancy.keyring, [], tenancy.limits) == []
