"""Attacks on stored idempotency keys, on a real cluster, in every way of serving.

A stored key holds a write's answer (a record, its Location). Tenant B, with SQL injected
into its own transaction after the service's opening, tries to read, replay, change or
remove tenant A's keys; an end user without the admin role tries the same on another
user's keys of the same tenant. Each must see nothing or be refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.control.roles import role_name
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving import idempotency as keys
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.session import TenantSession
from tests.replicas import injected_switch
from tests.support import auth_headers

REFUSED = (sa.exc.DBAPIError, TenantUnavailable)
KEY = "pay-42"
DAY = dt.timedelta(days=1)


def _rows(session: TenantSession, injected: str) -> set[tuple[str, str]] | str:
    """The (tenant, principal) of the key rows ``injected`` makes visible, or "refused"."""
    try:
        return {(str(r.tenant_id), r.principal) for r in session.execute(sa.text(injected))}
    except REFUSED:
        return "refused"
    finally:
        session.rollback()


@pytest.fixture
def stored(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> tuple[ProvisionedTenant, ProvisionedTenant]:
    """A key of A's (through the API) and one of B's."""
    for tenant in (tenant_a, tenant_b):
        headers = {**auth_headers(tenant), "Idempotency-Key": f"{KEY}-{tenant.id}"}
        answer = serving_client.post(
            "/v1/users", json={"first_name": "Ada", "last_name": "X"}, headers=headers
        )
        assert answer.status_code == 201, answer.json
    return tenant_a, tenant_b


@pytest.fixture
def session_b(
    serving_tenancy: Tenancy, stored: tuple[ProvisionedTenant, ProvisionedTenant]
) -> Iterator[TenantSession]:
    session = serving_tenancy.open_session(stored[1].id)
    yield session
    session.close()


def test_idempotency_isolation_b_sees_only_its_keys(
    session_b: TenantSession, stored: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    seen = _rows(session_b, "SELECT tenant_id, principal FROM idempotency_keys")
    assert seen == {(str(stored[1].id), "")}


@pytest.mark.parametrize(
    "attack",
    [
        "{a}; SELECT tenant_id, principal FROM idempotency_keys",
        "SELECT set_config('app.tenant_id', '{tenant}', true); "
        "SELECT tenant_id, principal FROM idempotency_keys",
        'SET LOCAL ROLE "{role}"; SELECT tenant_id, principal FROM idempotency_keys',
        "RESET ROLE; SELECT tenant_id, principal FROM idempotency_keys",
        "{a}; UPDATE idempotency_keys SET expires_at = now() RETURNING tenant_id, principal",
        "{a}; DELETE FROM idempotency_keys RETURNING tenant_id, principal",
        "UPDATE idempotency_keys SET tenant_id = '{tenant}' RETURNING tenant_id, principal",
    ],
    ids=["forged-context", "tenant-setting", "set-role", "reset-role", "update", "delete", "move"],
)
def test_idempotency_isolation_b_never_reaches_a_keys(
    serving_tenancy: Tenancy,
    session_b: TenantSession,
    stored: tuple[ProvisionedTenant, ProvisionedTenant],
    attack: str,
) -> None:
    tenant_a, _ = stored
    injected = attack.format(
        a=injected_switch(tenant_a.id), tenant=tenant_a.id, role=role_name(tenant_a.id)
    )
    seen = _rows(session_b, injected)
    assert seen == "refused" or str(tenant_a.id) not in {tenant for tenant, _ in seen}
    session_a = serving_tenancy.open_session(tenant_a.id, read_only=True)
    try:  # A's key is still there, unexpired
        alive = session_a.scalar(
            sa.text(
                "SELECT count(*) FROM idempotency_keys WHERE key = :key AND expires_at > now()"
            ),
            {"key": f"{KEY}-{tenant_a.id}"},
        )
    finally:
        session_a.close()
    assert alive == 1


def _user(tenant: ProvisionedTenant, user: str) -> TenantContext:
    return TenantContext(str(tenant.id), user=user, roles=("member",), admin=False)


def test_idempotency_isolation_user_never_reaches_another_users_keys(
    serving_tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    for user in ("user-1", "user-2"):
        session = serving_tenancy.open_session(tenant_a.id, context=_user(tenant_a, user))
        try:
            assert keys.claim(session, KEY) is None
            keys.store(session, KEY, b"f", keys.Answer(201, {}, user.encode()), DAY)
            session.commit()
        finally:
            session.close()
    session = serving_tenancy.open_session(tenant_a.id, context=_user(tenant_a, "user-1"))
    try:
        assert _rows(session, "SELECT tenant_id, principal FROM idempotency_keys") == {
            (str(tenant_a.id), "user-1")
        }
        forged = (
            "SELECT set_config('app.user_id', 'user-2', true), "
            "set_config('app.user_admin', 'true', true); "
            "SELECT tenant_id, principal FROM idempotency_keys"
        )
        assert _rows(session, forged) == "refused"
        found = keys.claim(session, KEY)
        assert found is not None
        assert found.answer.body == b"user-1"
    finally:
        session.close()
