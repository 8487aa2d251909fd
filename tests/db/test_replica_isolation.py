"""Attacks on a read replica (a streaming standby), in every way of serving, through the pools.

Everything that keeps tenants and end users apart lives in the database and replicates:
the tenant roles, the policies, the gateway's grants, the verifier and its key. These
tests do not assume it. Each read runs on the standby (checked: ``pg_is_in_recovery()``
there, and the session names the replica), inside tenant A's read-only transaction, with
the attacker's SQL after the service's opening, as an injection in a view would; it must
see none of tenant B's rows and none of another end user's.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from app.models import Product, User
from app.models.order import Order
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenant
from app.tenancy.control.roles import role_name
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.replica_reads import SERVER
from app.tenancy.serving.session import TenantSession
from tests.replicas import injected_switch, seen_or_refused, wait_for_replica
from tests.support import auth_headers


@dataclasses.dataclass(frozen=True)
class World:
    """Two tenants written on the primary and replayed on the replica."""

    a: ProvisionedTenant
    b: ProvisionedTenant
    made: dict[str, uuid.UUID]


@pytest.fixture(scope="module")
def world(replica_tenancy_module: Tenancy) -> World:
    """A with 3 users and one order each by two end users, B with 2 users; replayed."""
    tenancy = replica_tenancy_module
    a, b = (
        create_tenant(
            tenancy.clusters, tenancy.keyring, f"replica-{uuid.uuid4().hex[:12]}", tenancy.limits
        )
        for _ in range(2)
    )
    made: dict[str, uuid.UUID] = {}
    position = 0
    for tenant, count, key in ((a, 3, "user-a"), (b, 2, "user-b")):
        session = tenancy.open_session(tenant.id)
        with session.begin():
            users = [User(first_name=f"n{i}", last_name="x") for i in range(count)]
            session.add_all(users)
        made[key] = users[0].id
        session.close()
    session = tenancy.open_session(a.id)
    with session.begin():
        product = Product(name="Widget", price=1)
        session.add(product)
    session.close()
    for creator in ("user-1", "user-2"):
        session = tenancy.open_session(a.id, context=_context(a, creator))
        with session.begin():
            order = Order(user_id=made["user-a"], product_id=product.id, quantity=1)
            session.add(order)
        made[creator] = order.id
        position = max(position, session.commit_position() or 0)
        session.close()
    wait_for_replica(tenancy, position, tenants=(a.id, b.id))
    return World(a, b, made)


@pytest.fixture(scope="module")
def replica_tenancy_module(replica_app: Flask) -> Tenancy:
    return tenancy_of(replica_app)


@pytest.fixture
def tenant_a(world: World) -> ProvisionedTenant:
    return world.a


@pytest.fixture
def tenant_b(world: World) -> ProvisionedTenant:
    return world.b


@pytest.fixture
def written(world: World) -> dict[str, uuid.UUID]:
    return world.made


def _context(tenant: ProvisionedTenant, user: str) -> TenantContext:
    return TenantContext(str(tenant.id), user=user, roles=("member",), admin=False)


def _on_replica(
    tenancy: Tenancy, tenant: ProvisionedTenant, context: TenantContext | None = None
) -> TenantSession:
    session = tenancy.open_session(tenant.id, read_only=True, context=context)
    assert session.info.get(SERVER) is not None, "the read was not served by the replica"
    assert session.scalar(sa.text("SELECT pg_is_in_recovery()")) is True
    return session


@pytest.fixture
def session_a(
    replica_tenancy: Tenancy, tenant_a: ProvisionedTenant, written: dict[str, uuid.UUID]
) -> Iterator[TenantSession]:
    session = _on_replica(replica_tenancy, tenant_a)
    yield session
    session.close()


_seen = seen_or_refused


def test_replica_session_sees_only_its_tenant(
    session_a: TenantSession, tenant_a: ProvisionedTenant
) -> None:
    assert _seen(session_a, "SELECT tenant_id FROM users") == {tenant_a.id}
    assert session_a.scalar(sa.text("SELECT current_user")) == role_name(tenant_a.id)


def test_replica_binds_a_gateway_backend_by_its_start(
    session_a: TenantSession, tenant_a: ProvisionedTenant
) -> None:
    """A standby cannot draw backend numbers: a shared connection there is bound, and its
    contexts verified, by pid and start time (a tenant's own connection by pid alone)."""
    binding = session_a.connection().info["tenantpool.binding"]
    pid = session_a.scalar(sa.text("SELECT pg_backend_pid()"))
    shared = session_a.scalar(sa.text("SELECT session_user")) != role_name(tenant_a.id)
    assert re.fullmatch(rf"{pid}:s\d+" if shared else rf"{pid}:0", binding), binding


@pytest.mark.parametrize(
    "attack",
    [
        "{b}; SELECT tenant_id FROM users",
        'SET LOCAL ROLE "{role}"; SELECT tenant_id FROM users',
        "RESET ROLE; SELECT tenant_id FROM users",
        "COMMIT; SELECT tenant_id FROM users",
        "SELECT set_config('app.tenant_id', '{tid}', false); SELECT tenant_id FROM users",
    ],
    ids=["set-role-and-tenant", "set-role", "reset-role", "commit", "session-setting"],
)
def test_replica_injected_sql_sees_nothing_of_b(
    session_a: TenantSession, tenant_b: ProvisionedTenant, attack: str
) -> None:
    injected = attack.format(
        b=injected_switch(tenant_b.id), role=role_name(tenant_b.id), tid=tenant_b.id
    )
    seen = _seen(session_a, injected)
    assert seen == "refused" or tenant_b.id not in seen


def test_replica_signature_of_b_is_refused_in_a_session(
    replica_tenancy: Tenancy,
    session_a: TenantSession,
    tenant_b: ProvisionedTenant,
) -> None:
    """B's own signature, as B's session on the replica holds it, fails in A's session."""
    session_b = _on_replica(replica_tenancy, tenant_b)
    try:
        stolen = session_b.scalar(sa.text("SELECT current_setting('app.tenant_sig', true)"))
    finally:
        session_b.close()
    forged = f"{injected_switch(tenant_b.id)}, set_config('app.tenant_sig', '{stolen}', true)"
    assert _seen(session_a, f"{forged}; SELECT tenant_id FROM users") == "refused"


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT key FROM tp_private.context",
        "RESET ROLE; SELECT key FROM tp_private.context",
        "SELECT db_password_encrypted FROM tenants",
        "RESET ROLE; SELECT db_password_encrypted FROM gateways",
    ],
    ids=["key", "key-reset-role", "tenant-secrets", "gateway-secrets"],
)
def test_replica_injected_sql_cannot_read_keys_or_secrets(
    session_a: TenantSession, statement: str
) -> None:
    assert _seen(session_a, statement) == "refused"


def test_replica_refuses_writes(session_a: TenantSession) -> None:
    injected = "INSERT INTO users (first_name, last_name) VALUES ('m', 'x') RETURNING tenant_id"
    assert _seen(session_a, injected) == "refused"


def test_replica_end_user_sees_only_own_orders_and_cannot_become_another(
    replica_tenancy: Tenancy, tenant_a: ProvisionedTenant, written: dict[str, uuid.UUID]
) -> None:
    session = _on_replica(replica_tenancy, tenant_a, _context(tenant_a, "user-1"))
    try:
        assert _seen(session, "SELECT id FROM orders") == {written["user-1"]}
        forged = "SELECT set_config('app.user_id', 'user-2', true); SELECT id FROM orders"
        seen = _seen(session, forged)
        assert seen == "refused" or written["user-2"] not in seen
    finally:
        session.close()


def test_replica_http_cross_tenant_reads_get_the_answers_of_the_primary(
    replica_app: Flask,
    replica_tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    tenant_b: ProvisionedTenant,
    written: dict[str, uuid.UUID],
) -> None:
    client = replica_app.test_client()
    before = sum(replica_tenancy.replicas.served.values())  # type: ignore[union-attr]
    listed = client.get("/v1/users", headers=auth_headers(tenant_b))
    assert listed.status_code == 200
    assert {row["id"] for row in listed.json["records"]}.isdisjoint(  # type: ignore[index]
        {str(written["user-a"])}
    )
    assert listed.json["total"] == 2  # type: ignore[index]
    foreign = client.get(f"/v1/users/{written['user-a']}", headers=auth_headers(tenant_b))
    missing = client.get(f"/v1/users/{uuid.uuid4()}", headers=auth_headers(tenant_b))
    assert foreign.status_code == missing.status_code == 404
    wrong_key = {**auth_headers(tenant_b), "X-Tenant-ID": str(tenant_a.id)}
    assert client.get("/v1/users", headers=wrong_key).status_code == 401
    assert sum(replica_tenancy.replicas.served.values()) >= before + 3  # type: ignore[union-attr]
