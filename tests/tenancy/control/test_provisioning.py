"""Tenant lifecycle on the real cluster: roles, rows, sessions, events and audit lines."""

from __future__ import annotations

import json
import logging
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy as sa

from app.dev.cluster import LocalCluster
from app.models import Tenant, User
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import (
    ProvisionedTenant,
    create_tenant,
    create_tenants,
    delete_tenant,
    resume_tenant,
    rotate_api_key,
    rotate_credentials,
    suspend_tenant,
)
from app.tenancy.control.queries import get_tenant, list_tenants
from app.tenancy.control.roles import role_name
from app.tenancy.errors import TenantNameTaken, TenantNotFound
from app.tenancy.serving.events import CHANNEL
from app.tenancy.serving.resolve import hash_api_key
from tests.support import connect_as, stored_password

ACTOR = "test"
ROLES = sa.text("SELECT count(*) FROM pg_roles WHERE rolname LIKE 't\\_%'")


def _rotate(tenancy: Tenancy, tenant_id: uuid.UUID) -> None:
    rotate_credentials(
        tenancy.clusters,
        tenancy.keyring,
        tenant_id,
        scram_iterations=tenancy.limits.scram_iterations,
        actor=ACTOR,
    )


@pytest.fixture
def superuser(pg_cluster: LocalCluster) -> Iterator[psycopg2.extensions.connection]:
    """Only to look at the server (roles, sessions, rows under RLS), never to change it."""
    connection = psycopg2.connect(pg_cluster.superuser_url("tenantpool"))
    connection.autocommit = True
    yield connection
    connection.close()


def _one(connection: psycopg2.extensions.connection, query: str, *args: object) -> object:
    with connection.cursor() as cursor:
        cursor.execute(query, args or None)
        row = cursor.fetchone()
    return None if row is None else row[0]


Listener = Callable[[float], list[dict[str, str]]]


@pytest.fixture
def listener(owner_url: str) -> Iterator[Listener]:
    """LISTEN on the event channel; ``listener(seconds)`` returns what arrived until then."""
    url = sa.make_url(owner_url)
    connection = psycopg2.connect(
        host=url.host, port=url.port, dbname=url.database, user=url.username, password=url.password
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"LISTEN {CHANNEL}")

    def received(seconds: float) -> list[dict[str, str]]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([connection], [], [], left)
            connection.poll()
        return [json.loads(note.payload) for note in connection.notifies]

    yield received
    connection.close()


def test_provisioning_create_refuses_a_taken_name(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    with pytest.raises(TenantNameTaken):
        create_tenant(tenancy.clusters, tenancy.keyring, tenant_a.name, tenancy.limits)


def test_provisioning_rotate_credentials_old_password_fails_new_one_works(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    old = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    _rotate(tenancy, tenant_a.id)
    new = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    assert new != old
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect_as(tenancy.control_engine.url, tenant_a.id, old)
    connect_as(tenancy.control_engine.url, tenant_a.id, new).close()


def test_provisioning_rotate_credentials_keeps_open_sessions_working(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    password = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    connection = connect_as(tenancy.control_engine.url, tenant_a.id, password)
    try:
        _rotate(tenancy, tenant_a.id)
        assert _one(connection, "SELECT current_user") == role_name(tenant_a.id)
    finally:
        connection.close()


def test_provisioning_rotate_credentials_encrypts_under_the_active_key(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    _rotate(tenancy, tenant_a.id)
    assert get_tenant(tenancy.control_engine, tenant_a.id).key_id == tenancy.keyring.active_key_id


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (lambda t, tid: _rotate(t, tid), "credentials_rotated"),
        (lambda t, tid: rotate_api_key(t.control_engine, tid, actor=ACTOR), "api_key_rotated"),
        (lambda t, tid: suspend_tenant(t.clusters, tid, actor=ACTOR), "suspended"),
        (lambda t, tid: resume_tenant(t.clusters, tid, actor=ACTOR), "resumed"),
        (lambda t, tid: delete_tenant(t.clusters, tid, actor=ACTOR), "deleted"),
    ],
    ids=["rotate_credentials", "rotate_api_key", "suspend", "resume", "delete"],
)
def test_provisioning_each_change_emits_its_event(
    tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    listener: Listener,
    action: Callable[[Tenancy, uuid.UUID], object],
    kind: str,
) -> None:
    action(tenancy, tenant_a.id)
    assert {"kind": kind, "tenant_id": str(tenant_a.id)} in listener(0.5)


def test_provisioning_create_emits_created_event(tenancy: Tenancy, listener: Listener) -> None:
    created = create_tenant(
        tenancy.clusters, tenancy.keyring, f"ev-{uuid.uuid4().hex[:8]}", tenancy.limits
    )
    assert {"kind": "created", "tenant_id": str(created.id)} in listener(0.5)


def test_provisioning_failed_change_emits_no_event(tenancy: Tenancy, listener: Listener) -> None:
    with pytest.raises(TenantNotFound):
        suspend_tenant(tenancy.clusters, uuid.uuid4(), actor=ACTOR)
    assert listener(0.5) == []


def test_provisioning_rotate_api_key_replaces_the_hash(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    new_key = rotate_api_key(tenancy.control_engine, tenant_a.id, actor=ACTOR)
    with tenancy.control_engine.connect() as connection:
        stored = connection.scalar(sa.select(Tenant.api_key_hash).where(Tenant.id == tenant_a.id))
    assert stored == hash_api_key(new_key) != hash_api_key(tenant_a.api_key)


def test_provisioning_suspend_stops_new_logins_and_resume_allows_them(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    password = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    assert suspend_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR).status == "suspended"
    with pytest.raises(psycopg2.OperationalError, match="not permitted to log in"):
        connect_as(tenancy.control_engine.url, tenant_a.id, password)
    assert resume_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR).status == "active"
    connect_as(tenancy.control_engine.url, tenant_a.id, password).close()


@pytest.mark.parametrize(
    "action",
    [
        lambda t, tid: _rotate(t, tid),
        lambda t, tid: rotate_api_key(t.control_engine, tid, actor=ACTOR),
        lambda t, tid: suspend_tenant(t.clusters, tid, actor=ACTOR),
        lambda t, tid: resume_tenant(t.clusters, tid, actor=ACTOR),
        lambda t, tid: delete_tenant(t.clusters, tid, actor=ACTOR),
        lambda t, tid: get_tenant(t.control_engine, tid),
    ],
    ids=["rotate_credentials", "rotate_api_key", "suspend", "resume", "delete", "get"],
)
def test_provisioning_unknown_tenant_raises_not_found(
    tenancy: Tenancy, action: Callable[[Tenancy, uuid.UUID], object]
) -> None:
    with pytest.raises(TenantNotFound):
        action(tenancy, uuid.uuid4())


def test_provisioning_list_pages_through_every_tenant(
    tenancy: Tenancy, make_tenant: Callable[[], ProvisionedTenant]
) -> None:
    made = {make_tenant().id for _ in range(3)}
    seen: list[uuid.UUID] = []
    page = 1
    while True:
        records, total = list_tenants(tenancy.control_engine, page=page, page_size=2)
        if not records:
            break
        seen += [record.id for record in records]
        page += 1
    assert len(seen) == len(set(seen)) == total
    assert made <= set(seen)


def test_provisioning_list_filters_by_status(tenancy: Tenancy, tenant_a: ProvisionedTenant) -> None:
    suspend_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR)
    suspended, _ = list_tenants(tenancy.control_engine, page=1, page_size=100, status="suspended")
    active, _ = list_tenants(tenancy.control_engine, page=1, page_size=100, status="active")
    assert tenant_a.id in {record.id for record in suspended}
    assert tenant_a.id not in {record.id for record in active}


def _add_users(tenancy: Tenancy, tenant_id: uuid.UUID, count: int) -> None:
    session = tenancy.open_session(tenant_id)
    with session.begin():
        session.execute(sa.insert(User), [{"first_name": "a", "last_name": "b"}] * count)
    session.close()


def test_provisioning_delete_removes_role_row_rows_and_sessions(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, superuser: psycopg2.extensions.connection
) -> None:
    _add_users(tenancy, tenant_a.id, 3)
    password = stored_password(tenancy.control_engine, tenancy.keyring, tenant_a.id)
    idle = connect_as(tenancy.control_engine.url, tenant_a.id, password)
    role = role_name(tenant_a.id)

    delete_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR, grace=0.5)

    assert _one(superuser, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role) == 0
    assert _one(superuser, "SELECT count(*) FROM tenants WHERE id = %s", str(tenant_a.id)) == 0
    assert _one(superuser, "SELECT count(*) FROM users WHERE tenant_id = %s", str(tenant_a.id)) == 0
    assert _one(superuser, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", role) == 0
    with pytest.raises(psycopg2.OperationalError):
        _one(idle, "SELECT 1")
    idle.close()


def test_provisioning_delete_leaves_the_owner_no_membership(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, superuser: psycopg2.extensions.connection
) -> None:
    owner = tenancy.control_engine.url.username
    delete_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR)
    # The owner's one membership is the gateway's (migration 0003), no tenant role.
    memberships = _one(
        superuser,
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        "JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = %s AND g.rolname ~ '^t_'",
        owner,
    )
    assert memberships == 0


def _query_in_thread(
    tenancy: Tenancy, tenant_id: uuid.UUID, query: str
) -> tuple[threading.Thread, list[object]]:
    """Run ``query`` as the tenant on a connection of its own; the list gets its outcome."""
    password = stored_password(tenancy.control_engine, tenancy.keyring, tenant_id)
    busy = connect_as(tenancy.control_engine.url, tenant_id, password)
    busy.autocommit = True  # idle once the query is done, as a pooled connection is
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(_one(busy, query))
        except psycopg2.Error as error:
            outcome.append(error)
        finally:
            busy.close()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.1)  # the query is running
    return thread, outcome


def test_provisioning_delete_lets_a_running_query_finish_within_grace(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    thread, outcome = _query_in_thread(tenancy, tenant_a.id, "SELECT 1 FROM pg_sleep(0.5)")
    delete_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR, grace=20)
    thread.join(10)
    assert outcome == [1]


def test_provisioning_delete_ends_a_query_running_past_grace(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    thread, outcome = _query_in_thread(tenancy, tenant_a.id, "SELECT pg_sleep(60)")
    started = time.monotonic()
    delete_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR, grace=0.3)
    thread.join(10)
    assert time.monotonic() - started < 30
    assert len(outcome) == 1
    assert isinstance(outcome[0], psycopg2.OperationalError)


def test_provisioning_audit_line_per_action_without_secrets(
    tenancy: Tenancy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantpool.audit")
    name = f"audit-{uuid.uuid4().hex[:8]}"
    created = create_tenant(tenancy.clusters, tenancy.keyring, name, tenancy.limits, actor="alice")
    password = stored_password(tenancy.control_engine, tenancy.keyring, created.id)
    _rotate(tenancy, created.id)
    new_key = rotate_api_key(tenancy.control_engine, created.id, actor="alice")
    suspend_tenant(tenancy.clusters, created.id, actor="alice")
    resume_tenant(tenancy.clusters, created.id, actor="alice")
    delete_tenant(tenancy.clusters, created.id, actor="alice")

    lines = [record for record in caplog.records if record.name == "tenantpool.audit"]
    actions = [record.__dict__["action"] for record in lines]
    assert actions == [
        "created",
        "credentials_rotated",
        "api_key_rotated",
        "suspended",
        "resumed",
        "deleted",
    ]
    for record in lines:
        assert record.__dict__["tenant_id"] == str(created.id)
        assert record.__dict__["tenant_name"] == name
        assert record.__dict__["actor"] in ("alice", ACTOR)
        text = json.dumps(record.__dict__, default=str)
        for secret in (password, created.api_key, new_key):
            assert secret not in text


def test_provisioning_create_tenants_makes_each_usable(tenancy: Tenancy) -> None:
    names = [f"batch-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    created = create_tenants(tenancy.clusters, tenancy.keyring, names, tenancy.limits)
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
    with pytest.raises(TenantNameTaken):
        create_tenants(tenancy.clusters, tenancy.keyring, [fresh, tenant_a.name], tenancy.limits)
    with tenancy.control_engine.connect() as connection:
        assert connection.scalar(ROLES) == roles_before
        assert connection.scalar(sa.select(Tenant.id).where(Tenant.name == fresh)) is None


def test_provisioning_create_tenants_of_nothing_is_nothing(tenancy: Tenancy) -> None:
    assert create_tenants(tenancy.clusters, tenancy.keyring, [], tenancy.limits) == []


def _gateway_is_member(superuser: psycopg2.extensions.connection, tenant_id: uuid.UUID) -> bool:
    return bool(
        _one(
            superuser,
            "SELECT pg_has_role((SELECT gateway_role FROM tp_private.context), %s, 'MEMBER')",
            role_name(tenant_id),
        )
    )


def test_provisioning_gateway_membership_follows_the_tenant_status(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, superuser: psycopg2.extensions.connection
) -> None:
    """Granted at create and resume, revoked at suspend: the shared way fails closed too."""
    assert _gateway_is_member(superuser, tenant_a.id)
    suspend_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR)
    assert not _gateway_is_member(superuser, tenant_a.id)
    resume_tenant(tenancy.clusters, tenant_a.id, actor=ACTOR)
    assert _gateway_is_member(superuser, tenant_a.id)
