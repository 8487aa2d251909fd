"""Helpers of the read-replica and isolation tests (fixtures: tests/db/conftest.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from app.dev.cluster import LocalCluster
from app.tenancy.control.roles import role_name
from app.tenancy.errors import TenantUnavailable


def replica_dsn(replica: LocalCluster, database: str = "tenantpool") -> str:
    """``APP_READ_REPLICAS``'s form of a replica: where it is, never who logs in."""
    return f"postgresql://127.0.0.1:{replica.port}/{database}"


def wait_for_replica(
    tenancy: Any,
    position: int | None = None,
    *,
    tenants: Sequence[uuid.UUID] = (),
    cluster: str = "default",
    timeout: float = 15.0,
) -> None:
    """Until a replica of ``cluster`` is in the rotation, has replayed ``position`` and may
    serve ``tenants`` (it holds their last change)."""
    tenancy.start_background()  # the replica watcher, as a tenant request would
    deadline = time.monotonic() + timeout
    fresh_after = max(
        (tenancy.replicas.settled_after(tenancy.directory.find(t).changed_at) for t in tenants),
        default=None,
    )
    while tenancy.replicas.rotation.choose(cluster, position, fresh_after=fresh_after) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"no replica caught up within {timeout} s: {tenancy.replicas.status()}")
        time.sleep(0.05)


REFUSED_BY_THE_DATABASE = (sa.exc.DBAPIError, TenantUnavailable)
"""What an injection may get instead of rows: an error from PostgreSQL or the verifier."""


def seen_or_refused(session: Any, injected: str) -> set[Any] | str:
    """The first column of the rows ``injected`` makes visible in ``session``, or "refused".

    The session's transaction is rolled back either way.
    """
    try:
        rows = session.execute(sa.text(injected)).all()
    except REFUSED_BY_THE_DATABASE:
        return "refused"
    finally:
        session.rollback()
    return {row[0] for row in rows}


def injected_switch(tenant_id: uuid.UUID) -> str:
    """SQL an injection would run to become ``tenant_id``: its role and its setting."""
    return (
        f"SELECT set_config('role', '{role_name(tenant_id)}', true), "
        f"set_config('app.tenant_id', '{tenant_id}', true)"
    )
