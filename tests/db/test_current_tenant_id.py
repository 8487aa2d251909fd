"""``current_tenant_id()`` is inlined into every statement and means the same whatever the path.

Migration 0008 dropped its ``SET search_path`` so that the planner inlines it (one SQL-function
call less per statement); every name in it is schema-qualified instead. These tests try to make
the inlined body mean something else from inside a tenant's transaction.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.models import User
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant


def test_current_tenant_id_is_inlined(tenancy: Tenancy) -> None:
    with tenancy.control_engine.connect() as connection:  # the owner
        plan = connection.exec_driver_sql("EXPLAIN (VERBOSE) SELECT current_tenant_id()")
        text = "\n".join(row[0] for row in plan)
        config = connection.exec_driver_sql(
            "SELECT proconfig FROM pg_proc WHERE oid = 'current_tenant_id()'::regprocedure"
        ).scalar_one()
    assert "CASE WHEN" in text, text
    assert "current_tenant_id" not in text, text
    assert config is None


@pytest.mark.parametrize("search_path", ["", "public", "pg_temp"])
def test_current_tenant_id_means_the_same_under_any_search_path(
    serving_tenancy: Tenancy, tenant_a: ProvisionedTenant, search_path: str
) -> None:
    session = serving_tenancy.open_session(tenant_a.id)
    try:
        with session.begin():
            session.add(User(first_name="Ada", last_name="X"))
        with session.begin():
            session.execute(
                sa.text("SELECT set_config('search_path', :path, true)"), {"path": search_path}
            )
            mine = session.execute(sa.text("SELECT public.current_tenant_id()")).scalar_one()
            assert mine == tenant_a.id
            seen = session.execute(sa.text("SELECT DISTINCT tenant_id FROM public.users")).scalars()
            assert set(seen) == {tenant_a.id}
    finally:
        session.close()
