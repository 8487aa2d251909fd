"""Tenants on a cluster: role and placement there, secrets only in the control plane."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.models import Tenant, User
from app.tenancy import Tenancy
from app.tenancy.control.moving import move_tenant
from app.tenancy.control.provisioning import (
    ProvisionedTenant,
    create_tenant,
    delete_tenant,
    resume_tenant,
    role_limits,
    rotate_credentials,
    set_role_limits,
    suspend_tenant,
)
from app.tenancy.control.roles import remove_placement
from app.tenancy.errors import TenantNameTaken, UnknownCluster
from tests.support import Inspector, MakePlaced, auth_headers


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


ACTOR = "test"


def test_placement_rotate_credentials_changes_the_role_on_its_cluster(
    placed: Tenancy, placed_client: FlaskClient, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("c2")
    assert placed_client.get("/v1/users", headers=auth_headers(tenant)).status_code == 200
    before = inspect.value(
        "c2", "SELECT rolpassword FROM pg_authid WHERE rolname = %s", _role(tenant)
    )
    rotate_credentials(placed.clusters, placed.keyring, tenant.id, scram_iterations=64, actor=ACTOR)
    after = inspect.value(
        "c2", "SELECT rolpassword FROM pg_authid WHERE rolname = %s", _role(tenant)
    )
    assert after != before
    placed.forget(tenant.id, "test")  # the event does it in a worker
    assert placed_client.get("/v1/users", headers=auth_headers(tenant)).status_code == 200


def test_placement_suspend_and_resume_switch_login_on_its_cluster(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("c2")
    can_login = "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s"
    suspend_tenant(placed.clusters, tenant.id, actor=ACTOR)
    assert inspect.value("c2", can_login, _role(tenant)) is False
    resume_tenant(placed.clusters, tenant.id, actor=ACTOR)
    assert inspect.value("c2", can_login, _role(tenant)) is True


def test_placement_role_limits_live_on_its_cluster(
    placed: Tenancy, make_placed: MakePlaced
) -> None:
    tenant = make_placed("c2")
    set_role_limits(placed.clusters, tenant.id, connection_limit=7, statement_timeout_ms=321)
    assert role_limits(placed.clusters, tenant.id) == (7, 321)


def test_placement_delete_removes_rows_role_and_secret(
    placed: Tenancy, placed_client: FlaskClient, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("c2")
    body = {"first_name": "Gone", "last_name": "Soon"}
    assert (
        placed_client.post("/v1/users", json=body, headers=auth_headers(tenant)).status_code == 201
    )
    delete_tenant(placed.clusters, tenant.id, actor=ACTOR, grace=0.2)
    assert inspect.holds_nothing_of("c2", tenant.id)
    with placed.control_engine.connect() as connection:
        assert connection.scalar(sa.select(Tenant.id).where(Tenant.id == tenant.id)) is None


def test_placement_move_keeps_a_suspended_tenant_suspended_and_its_limits(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("default")
    set_role_limits(placed.clusters, tenant.id, connection_limit=9, statement_timeout_ms=999)
    suspend_tenant(placed.clusters, tenant.id, actor=ACTOR)
    move_tenant(placed.clusters, placed.engines, placed.limits, tenant.id, "c2")
    can_login = "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s"
    assert inspect.value("c2", can_login, _role(tenant)) is False
    assert role_limits(placed.clusters, tenant.id) == (9, 999)
    resume_tenant(placed.clusters, tenant.id, actor=ACTOR)
    assert inspect.value("c2", can_login, _role(tenant)) is True


def test_placement_admin_api_creates_on_the_cluster_asked_for(
    placed_client: FlaskClient, two_clusters_env: dict[str, str], inspect: Inspector
) -> None:
    admin = {"Authorization": f"Bearer {two_clusters_env['APP_ADMIN_TOKEN']}"}
    name = f"adm-{uuid.uuid4().hex[:10]}"
    created = placed_client.post(
        "/v1/admin/tenants", json={"name": name, "cluster": "c2"}, headers=admin
    )
    assert created.status_code == 201, created.json
    assert created.json["cluster"] == "c2"  # type: ignore[index]
    assert inspect.placed("c2", uuid.UUID(created.json["id"]))  # type: ignore[index]
    unknown = placed_client.post(
        "/v1/admin/tenants", json={"name": name + "x", "cluster": "c9"}, headers=admin
    )
    assert unknown.status_code == 422
    assert "cluster" in unknown.json["errors"]  # type: ignore[index]


def _role(tenant: ProvisionedTenant) -> str:
    return f"t_{tenant.id.hex}"
