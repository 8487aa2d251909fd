"""Tenants on a cluster: role and placement there, secrets only in the control plane."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.models import Tenant, User
from app.tenancy import Tenancy
from app.tenancy.errors import TenantNameTaken, UnknownCluster
from app.tenancy.provisioning import create_tenant, remove_placement
from tests.support import Inspector, MakePlaced


def test_placement_role_and_placement_live_on_the_tenants_cluster(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("c2")
    role = f"t_{tenant.id.hex}"
    attributes = inspect.rows(
        "c2",
        "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolconnlimit, "
        "pg_has_role(oid, 'tenant_base', 'MEMBER'), rolpassword "
        "FROM pg_authid WHERE rolname = %s",
        role,
    )
    assert len(attributes) == 1
    login, superuser, bypass, createrole, limit, member, verifier = attributes[0]
    assert (login, superuser, bypass, createrole, member) == (True, False, False, False, True)
    assert limit == placed.limits.connection_limit
    # Our client-side verifier, with our iteration count, not one the server computed.
    assert verifier.startswith(f"SCRAM-SHA-256${placed.limits.scram_iterations}:")
    assert inspect.placed("c2", tenant.id)
    assert not inspect.has_role("default", tenant.id)
    assert not inspect.placed("default", tenant.id)
    with placed.control_engine.connect() as connection:
        cluster = connection.execute(sa.select(Tenant.cluster).where(Tenant.id == tenant.id))
        assert cluster.scalar_one() == "c2"


def test_placement_data_cluster_holds_no_secret(
    make_placed: MakePlaced, inspect: Inspector
) -> None:
    make_placed("c2")
    assert inspect.value("c2", "SELECT count(*) FROM tenants") == 0


def test_placement_unknown_cluster_writes_nothing(placed: Tenancy) -> None:
    with pytest.raises(UnknownCluster):
        create_tenant(placed.clusters, placed.keyring, "nowhere", placed.limits, cluster="c9")
    with placed.control_engine.connect() as connection:
        found = connection.execute(sa.select(Tenant.id).where(Tenant.name == "nowhere"))
        assert found.first() is None


def test_placement_name_in_use_leaves_nothing_on_the_cluster(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    first = make_placed("c2")
    with placed.control_engine.connect() as connection:
        name = connection.execute(sa.select(Tenant.name).where(Tenant.id == first.id)).scalar()
    roles_before = inspect.value("c2", "SELECT count(*) FROM pg_roles WHERE rolname ~ '^t_'")
    with pytest.raises(TenantNameTaken):
        create_tenant(placed.clusters, placed.keyring, name, placed.limits, cluster="c2")
    assert inspect.value("c2", "SELECT count(*) FROM pg_roles WHERE rolname ~ '^t_'") == (
        roles_before
    )


def test_placement_remove_placement_cascades_and_drops_the_role(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant, other = make_placed("c2"), make_placed("c2")
    for owner in (tenant, other):
        session = placed.open_session(owner.id)
        with session.begin():
            session.execute(sa.insert(User), [{"first_name": "a", "last_name": "b"}] * 3)
        session.close()
    placed.forget(tenant.id, "test")  # no session of the role may outlive it
    assert remove_placement(placed.clusters.engine("c2"), tenant.id)
    assert inspect.tenant_rows("c2", "users", tenant.id) == 0
    assert not inspect.has_role("c2", tenant.id)
    assert inspect.tenant_rows("c2", "users", other.id) == 3
    assert not remove_placement(placed.clusters.engine("c2"), tenant.id)  # idempotent
