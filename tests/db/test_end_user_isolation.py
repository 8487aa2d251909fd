"""Attacks by one end user on another of the same tenant, on a real cluster, in every way.

User 1 (no admin role) runs SQL inside their own transaction, after the service's signed
opening, as an injection in a view would, and tries to become user 2 or an admin: forge
the settings, replay user 2's signature read from pg_stat_activity, write rows in user
2's name. Each must fail: the verifier raises (TPC01) when the context does not verify,
and the restrictive ``user_rows`` policy hides and refuses the rows.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app.models import Product, User
from app.models.order import Order
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.session import TenantSession
from tests.replicas import seen_or_refused

REFUSED = (sa.exc.DBAPIError, TenantUnavailable)


def _context(tenant: ProvisionedTenant, user: str) -> TenantContext:
    return TenantContext(str(tenant.id), user=user, roles=("member",), admin=False)


@pytest.fixture
def orders(serving_tenancy: Tenancy, tenant_a: ProvisionedTenant) -> dict[str, uuid.UUID]:
    """One order each by user-1, user-2 and the tenant's API key: creator -> order id."""
    session = serving_tenancy.open_session(tenant_a.id)
    with session.begin():
        user = User(first_name="Ada", last_name="X")
        product = Product(name="Widget", price=1)
        session.add_all([user, product])
    session.close()
    made = {}
    for creator in ("user-1", "user-2", "key"):
        context = None if creator == "key" else _context(tenant_a, creator)
        session = serving_tenancy.open_session(tenant_a.id, context=context)
        with session.begin():
            order = Order(user_id=user.id, product_id=product.id, quantity=1)
            session.add(order)
        made[creator] = order.id
        session.close()
    return made


@pytest.fixture
def user_1(serving_tenancy: Tenancy, tenant_a: ProvisionedTenant) -> Iterator[TenantSession]:
    session = serving_tenancy.open_session(tenant_a.id, context=_context(tenant_a, "user-1"))
    yield session
    session.close()


def _orders_seen(session: TenantSession, injected: str) -> set[uuid.UUID] | str:
    """The ids of the orders ``injected`` makes visible, or "refused"."""
    return seen_or_refused(session, injected)


def test_end_user_sees_only_own_orders_and_knows_who_they_are(
    user_1: TenantSession, orders: dict[str, uuid.UUID]
) -> None:
    assert _orders_seen(user_1, "SELECT id FROM orders") == {orders["user-1"]}
    who = user_1.execute(
        sa.text("SELECT current_app_user(), current_app_roles(), current_app_is_admin()")
    ).one()
    assert tuple(who) == ("user-1", ["member"], False)


def test_end_user_api_key_and_admin_see_every_order(
    serving_tenancy: Tenancy, tenant_a: ProvisionedTenant, orders: dict[str, uuid.UUID]
) -> None:
    admin = TenantContext(str(tenant_a.id), user="boss", roles=("admin",), admin=True)
    for context in (None, admin):
        session = serving_tenancy.open_session(tenant_a.id, context=context)
        try:
            assert _orders_seen(session, "SELECT id FROM orders") == set(orders.values())
        finally:
            session.close()


@pytest.mark.parametrize(
    "forged",
    [
        "set_config('app.user_id', 'user-2', true)",
        "set_config('app.user_admin', 'true', true)",
        "set_config('app.user_id', '', true), set_config('app.user_admin', 'true', true)",
        "set_config('app.user_roles', 'admin', true)",
        "set_config('app.tenant_sig', '', true), set_config('app.user_id', 'user-2', true)",
    ],
    ids=["other-user", "admin-flag", "as-api-key", "admin-role", "no-signature"],
)
def test_end_user_injected_settings_cannot_become_another_user(
    user_1: TenantSession, orders: dict[str, uuid.UUID], forged: str
) -> None:
    seen = _orders_seen(user_1, f"SELECT {forged}; SELECT id FROM orders")
    assert seen in ("refused", set())  # never user 2's order, nor the API key's


def test_end_user_replayed_signature_of_another_user_is_refused(
    serving_tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    user_1: TenantSession,
    orders: dict[str, uuid.UUID],
) -> None:
    """User 2's opening, read from pg_stat_activity of the backend user 2 holds, fails."""
    user_2 = serving_tenancy.open_session(tenant_a.id, context=_context(tenant_a, "user-2"))
    try:
        pid = user_2.scalar(sa.text("SELECT pg_backend_pid()"))
        try:
            query = user_1.scalar(
                # A tenant's own role sees its backends' queries; a gateway connection resets
                # to the gateway, which sees the gateway's.
                sa.text("SELECT query FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
            if not str(query).startswith("SELECT set_config"):  # hidden from the tenant role
                user_1.rollback()
                query = user_1.scalar(
                    sa.text("RESET ROLE; SELECT query FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                )
        finally:
            user_1.rollback()
        opening = re.match(r"(SELECT set_config\('app\.tenant_sig'.*?)(; | tenant_move)", query)
        assert opening is not None, query
        replayed = opening.group(1).rstrip(",")
        assert "'user-2'" in replayed
        seen = _orders_seen(user_1, f"{replayed}; SELECT id FROM orders")
        assert seen == "refused"
    finally:
        user_2.close()


def test_end_user_cannot_write_in_another_users_name(
    user_1: TenantSession, orders: dict[str, uuid.UUID]
) -> None:
    with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
        user_1.execute(
            sa.text(
                "INSERT INTO orders (user_id, product_id, quantity, created_by) "
                "SELECT user_id, product_id, 1, 'user-2' FROM orders LIMIT 1"
            )
        )
    user_1.rollback()
    with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
        user_1.execute(sa.text("UPDATE orders SET created_by = 'user-2'"))
    user_1.rollback()
    changed = user_1.execute(
        sa.text("UPDATE orders SET quantity = 9 WHERE id = :id"), {"id": orders["user-2"]}
    )
    assert changed.rowcount == 0
    others = {"id": orders["user-1"]}
    deleted = user_1.execute(sa.text("DELETE FROM orders WHERE id <> :id"), others)
    assert deleted.rowcount == 0
    user_1.commit()


def test_end_user_functions_answer_nobody_without_a_signed_context(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, orders: dict[str, uuid.UUID]
) -> None:
    """The tenant's own login with the settings but no signature: no user, not admin, and
    no user-scoped row, though the tenant policy alone would let it read the tenant's."""
    tenancy.open_session(tenant_a.id).close()  # the tenant's engine exists
    with tenancy.registry.get(tenant_a.id).engine.connect() as connection:
        connection.exec_driver_sql(
            "SELECT set_config('app.tenant_id', %(tenant)s, true), "
            "set_config('app.user_id', 'user-2', true), "
            "set_config('app.user_admin', 'true', true)",
            {"tenant": str(tenant_a.id)},
        )
        who = connection.exec_driver_sql("SELECT current_app_user(), current_app_is_admin()")
        assert tuple(who.one()) == (None, False)
        assert connection.exec_driver_sql("SELECT count(*) FROM orders").scalar_one() == 0
        assert connection.exec_driver_sql("SELECT count(*) FROM users").scalar_one() == 1
        connection.rollback()
