"""The move gate means the same whatever search_path a session set, and costs one call.

Migration 0009 dropped the gate's and ``tenant_move_lock``'s ``SET search_path`` (so the lock
key is inlined, and no setting is switched per transaction) and qualified every name instead.
A pooled connection keeps what an earlier transaction set at session level; these tests set
hostile search_paths that way and check that the next transaction still finds the gate (each
opening resets search_path: ``session.pinned``) and is still held by a move.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.errors import TenantUnavailable


def test_move_lock_is_inlined_and_neither_function_switches_search_path(
    tenancy: Tenancy,
) -> None:
    with tenancy.control_engine.connect() as connection:  # the owner
        plan = connection.exec_driver_sql(
            f"EXPLAIN (VERBOSE) SELECT tenant_move_lock('{uuid.uuid4()}'::uuid)"
        )
        text = "\n".join(row[0] for row in plan)
        configs = connection.exec_driver_sql(
            "SELECT proconfig FROM pg_proc WHERE oid IN "
            "('tenant_move_lock(uuid)'::regprocedure, 'tenant_move_gate()'::regprocedure)"
        ).scalars()
        assert list(configs) == [None, None]
    assert "tenant_move_lock" not in text, text


@pytest.mark.parametrize("search_path", ["", "pg_temp", "pg_temp, public"])
def test_gate_holds_after_a_session_level_search_path(
    tenancy: Tenancy, serving_tenancy: Tenancy, tenant_a: ProvisionedTenant, search_path: str
) -> None:
    session = serving_tenancy.open_session(tenant_a.id)
    try:
        with session.begin():
            at_login = session.execute(sa.text("SHOW search_path")).scalar_one()
            session.execute(
                sa.text("SELECT set_config('search_path', :path, false)"), {"path": search_path}
            )
            pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with tenancy.control_engine.connect() as owner:
            owner.execute(
                sa.text("SELECT pg_advisory_xact_lock(tenant_move_lock(:tenant))"),
                {"tenant": tenant_a.id},
            )
            with pytest.raises(TenantUnavailable, match="being moved"), session.begin():
                session.execute(sa.text("SELECT pg_backend_pid()"))
            owner.rollback()
        with session.begin():
            assert session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == pid
            # Each transaction's opening set it back (session.pinned).
            assert session.execute(sa.text("SHOW search_path")).scalar_one() == at_login
    finally:
        session.close()
