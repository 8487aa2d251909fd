"""Attacks on shared connections (DESIGN section 3a), on a real cluster, through the real pools.

Every test runs SQL inside tenant A's transaction on a gateway connection, as an SQL
injection in a view would (the service's opening first, then the attacker's text), and
must neither see nor write a row of tenant B. "Refused" means the statement failed: the
verifier raises when a context is claimed and does not verify, PostgreSQL refuses what
the gateway or the tenant role may not do.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app.models import User
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import (
    ProvisionedTenant,
    delete_tenant,
    resume_tenant,
    suspend_tenant,
)
from app.tenancy.control.roles import role_name
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.session import TenantSession
from tests.replicas import injected_switch, seen_or_refused

REFUSED = (sa.exc.DBAPIError, TenantUnavailable)
"""What an attack may get instead of rows: an error from PostgreSQL or the verifier."""
ACTOR = "test"
INJECTED_DRAW = "RESET ROLE; SELECT tp_private.backend_binding()"


@pytest.fixture
def two_tenants(
    shared_tenancy: Tenancy, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> tuple[ProvisionedTenant, ProvisionedTenant]:
    """A with 3 users, B with 2, written through the shared way itself."""
    for tenant, count in ((tenant_a, 3), (tenant_b, 2)):
        session = shared_tenancy.open_session(tenant.id)
        with session.begin():
            session.execute(
                sa.insert(User), [{"first_name": f"n{i}", "last_name": "x"} for i in range(count)]
            )
        session.close()
    return tenant_a, tenant_b


@pytest.fixture
def session_a(
    shared_tenancy: Tenancy, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> Iterator[TenantSession]:
    session = shared_tenancy.open_session(two_tenants[0].id)
    yield session
    session.close()


def _tenants_seen(session: TenantSession, injected: str) -> set[uuid.UUID] | str:
    """The tenant ids of the user rows ``injected`` makes visible, or "refused"."""
    return seen_or_refused(session, injected)


def test_shared_session_sees_only_its_tenant(
    session_a: TenantSession, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, _ = two_tenants
    seen = _tenants_seen(session_a, "SELECT tenant_id FROM users")
    assert seen == {tenant_a.id}
    assert session_a.scalar(sa.text("SELECT current_user")) == role_name(tenant_a.id)


def test_shared_injected_set_role_and_tenant_sees_nothing_of_b(
    session_a: TenantSession, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    _, tenant_b = two_tenants
    seen = _tenants_seen(session_a, f"{injected_switch(tenant_b.id)}; SELECT tenant_id FROM users")
    assert seen == "refused"


def test_shared_injected_set_role_alone_sees_nothing(
    session_a: TenantSession, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    _, tenant_b = two_tenants
    role = role_name(tenant_b.id)
    seen = _tenants_seen(session_a, f'SET LOCAL ROLE "{role}"; SELECT tenant_id FROM users')
    assert seen in ("refused", set())


def test_shared_injected_reset_role_reads_nothing(session_a: TenantSession) -> None:
    assert _tenants_seen(session_a, "RESET ROLE; SELECT tenant_id FROM users") == "refused"


def test_shared_injected_commit_leaves_the_tenant_behind(session_a: TenantSession) -> None:
    """After an injected COMMIT the role and settings are gone with their transaction."""
    assert _tenants_seen(session_a, "COMMIT; SELECT tenant_id FROM users") == "refused"


def test_shared_injected_write_for_b_is_refused(
    shared_tenancy: Tenancy,
    session_a: TenantSession,
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    _, tenant_b = two_tenants
    insert = (
        f"{injected_switch(tenant_b.id)}; INSERT INTO users (first_name, last_name) "
        "VALUES ('mallory', 'x') RETURNING tenant_id"
    )
    assert _tenants_seen(session_a, insert) == "refused"
    session_b = shared_tenancy.open_session(tenant_b.id)
    names = session_b.scalars(sa.select(User.first_name)).all()
    session_b.close()
    assert "mallory" not in names
    assert len(names) == 2


def test_shared_forged_context_on_an_empty_table_is_refused(
    session_a: TenantSession, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    """B has no products: a forged switch to B is refused, not answered with no rows.

    The policy checks its context once per statement whenever role and request agree
    (migration 0011), not only when a row is there to filter.
    """
    _, tenant_b = two_tenants
    injected = f"{injected_switch(tenant_b.id)}; SELECT tenant_id FROM products"
    assert _tenants_seen(session_a, injected) == "refused"


def test_shared_signature_of_another_backend_is_refused(
    shared_tenancy: Tenancy,
    session_a: TenantSession,
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    """B's signature, read from pg_stat_activity of the backend B used, fails on A's."""
    _, tenant_b = two_tenants
    session_b = shared_tenancy.open_session(tenant_b.id)  # another gateway connection, held
    try:
        b_pid = session_b.scalar(sa.text("SELECT pg_backend_pid()"))
        stolen = _signature_seen_on(session_a, b_pid)
        assert session_a.scalar(sa.text("SELECT pg_backend_pid()")) != b_pid
        forged = f"{injected_switch(tenant_b.id)}, set_config('app.tenant_sig', '{stolen}', true)"
        assert _tenants_seen(session_a, f"{forged}; SELECT tenant_id FROM users") == "refused"
    finally:
        session_b.close()


def test_shared_signature_replayed_on_its_own_backend_is_refused(
    shared_tenancy: Tenancy,
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    """The attack a pool makes possible: B's signature for backend X, stashed, then used by
    injected SQL that A's request later runs on X. The signature is valid for X; it fails
    because the service did not put it at the start of the message."""
    tenant_a, tenant_b = two_tenants
    # Read-only, as for a GET: nothing is sent after the statement, whose text, B's
    # signature included, stays X's last query in pg_stat_activity.
    session_b = shared_tenancy.open_session(tenant_b.id, read_only=True)
    b_pid = session_b.scalar(sa.text("SELECT pg_backend_pid()"))
    session_b.close()
    spy = shared_tenancy.open_session(tenant_a.id)
    stolen = (
        _signature_seen_on(spy, b_pid)
        if spy.scalar(sa.text("SELECT pg_backend_pid()")) != b_pid
        else None
    )
    spy.close()
    if stolen is None:  # the spy itself got X: read it from another connection
        other = shared_tenancy.open_session(tenant_b.id)
        holder = shared_tenancy.open_session(tenant_a.id)
        stolen = _signature_seen_on(holder, b_pid)
        holder.close()
        other.close()
    forged = f"{injected_switch(tenant_b.id)}, set_config('app.tenant_sig', '{stolen}', true)"
    for _ in range(4 * shared_tenancy.gateways.size):  # until A's request lands on X
        session = shared_tenancy.open_session(tenant_a.id)
        try:
            if session.scalar(sa.text("SELECT pg_backend_pid()")) == b_pid:
                seen = _tenants_seen(session, f"{forged}; SELECT tenant_id FROM users")
                assert seen == "refused"
                return
        finally:
            session.close()
    pytest.fail("A's requests never landed on the backend B's signature was made for")


def _signature_seen_on(session: TenantSession, pid: int) -> str:
    """Read the signature in the last query of backend ``pid``, as injected SQL could."""
    try:
        text = session.scalar(
            sa.text("RESET ROLE; SELECT query FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pid},
        )
    finally:
        session.rollback()
    found = re.search(r"'app\.tenant_sig', '([0-9a-f]{64})'", text or "")
    assert found is not None, "the gateway can read its other backends' queries"
    return found.group(1)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT key FROM tp_private.context",
        "RESET ROLE; SELECT key FROM tp_private.context",
        "RESET ROLE; SELECT db_password_encrypted FROM gateways",
        "SELECT db_password_encrypted FROM tenants",
        "SELECT currval('tp_private.backend_nonces')",
        "SELECT nextval('tp_private.backend_nonces')",
        "RESET ROLE; SELECT setval('tp_private.backend_nonces', 1)",
        "RESET ROLE; SELECT currval('tp_private.backend_nonces')",
        "SELECT tp_private.backend_binding()",
    ],
    ids=[
        "as-tenant",
        "as-gateway",
        "gateway-secrets",
        "tenant-secrets",
        "read-number",
        "draw-number",
        "set-number",
        "gateway-reads-number",
        "tenant-draws-number",
    ],
)
def test_shared_injected_sql_cannot_read_keys_or_secrets(
    session_a: TenantSession, statement: str
) -> None:
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), session_a.begin():
        session_a.execute(sa.text(statement))


@pytest.mark.parametrize("read_only", [True, False], ids=["read", "write"])
@pytest.mark.parametrize(
    "injected",
    ["DISCARD SEQUENCES", INJECTED_DRAW],
    ids=["discard-number", "draw-new-number"],
)
def test_shared_stale_binding_costs_the_next_tenant_nothing(
    shared_tenancy: Tenancy,
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
    injected: str,
    read_only: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A's SQL drops or redraws its backend's number; B, served next on that backend, gets
    its own rows without an error (the connection is bound again), and never A's."""
    tenant_a, tenant_b = two_tenants
    attacker = shared_tenancy.open_session(tenant_a.id, read_only=read_only)
    try:
        pid = attacker.scalar(sa.text("SELECT pg_backend_pid()"))
        try:
            attacker.execute(sa.text(injected))
            ran = True
        except sa.exc.DBAPIError:  # drawing a number in a read-only transaction
            ran = False
        attacker.rollback()
    finally:
        attacker.close()
    with caplog.at_level("WARNING", logger="app.tenancy.serving.session"):
        for _ in range(4 * shared_tenancy.gateways.size):  # until B's request lands there
            session = shared_tenancy.open_session(tenant_b.id, read_only=read_only)
            try:
                tenants = session.scalars(sa.select(User.tenant_id)).all()
                landed = session.scalar(sa.text("SELECT pg_backend_pid()")) == pid
            finally:
                session.close()
            assert tenants == [tenant_b.id] * 2
            if landed:
                break
        else:
            pytest.fail("B's requests never landed on the backend A's SQL ran on")
    assert ("bound a shared connection to its backend again" in caplog.text) == ran
    assert ran or (injected, read_only) == (INJECTED_DRAW, True)


def test_shared_verifier_called_directly_confirms_only_the_real_context(
    session_a: TenantSession, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    _, tenant_b = two_tenants
    with session_a.begin():
        assert session_a.scalar(sa.text("SELECT tp_private.tenant_context_ok()")) is True
    forged = (
        f"SELECT set_config('app.tenant_id', '{tenant_b.id}', true), "
        f"set_config('app.tenant_sig', '{'0' * 64}', true); SELECT tp_private.tenant_context_ok()"
    )
    with pytest.raises(REFUSED), session_a.begin():
        session_a.execute(sa.text(forged))
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), session_a.begin():
        session_a.execute(sa.text("RESET ROLE; SELECT tp_private.tenant_context_ok()"))


def test_shared_suspended_tenant_gets_nothing_on_a_warm_connection(
    shared_tenancy: Tenancy, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, _ = two_tenants
    session = shared_tenancy.open_session(tenant_a.id)  # the pool is warm
    assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 3
    session.close()
    suspend_tenant(shared_tenancy.clusters, tenant_a.id, actor=ACTOR)
    try:
        # Past authentication (whose cache may not have heard yet), straight to the pool.
        session = shared_tenancy.open_session(tenant_a.id)
        with pytest.raises(TenantUnavailable):
            session.scalar(sa.select(sa.func.count()).select_from(User))
        session.close()
    finally:
        resume_tenant(shared_tenancy.clusters, tenant_a.id, actor=ACTOR)
    session = shared_tenancy.open_session(tenant_a.id)
    assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 3
    session.close()


def test_shared_deleted_tenant_gets_nothing_on_a_warm_connection(
    shared_tenancy: Tenancy, two_tenants: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, _ = two_tenants
    session = shared_tenancy.open_session(tenant_a.id)
    session.scalar(sa.select(sa.func.count()).select_from(User))
    session.close()
    directory_saw = shared_tenancy.directory.find(tenant_a.id)
    assert directory_saw is not None
    delete_tenant(shared_tenancy.clusters, tenant_a.id, actor=ACTOR, grace=0)
    # The directory has not heard (no listener in process): the pool is asked anyway.
    session = shared_tenancy.gateways.session(
        TenantContext.of_tenant(tenant_a.id), directory_saw.cluster, read_only=True
    )
    with pytest.raises(TenantUnavailable):
        session.scalar(sa.select(sa.func.count()).select_from(User))
    session.close()


def test_shared_gateway_connection_refuses_sql_outside_a_tenant_session(
    shared_tenancy: Tenancy, session_a: TenantSession
) -> None:
    engine = session_a.get_bind()
    assert isinstance(engine, sa.Connection)
    gateway_engine = engine.engine
    with gateway_engine.connect() as connection, pytest.raises(sa.exc.InvalidRequestError):
        connection.execute(sa.text("SELECT 1"))
