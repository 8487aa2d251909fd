"""What an administrator may read of tenants: no password, ciphertext or key hash."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from app.models.tenant import Tenant
from app.tenancy.errors import TenantNotFound


@dataclass(frozen=True)
class TenantInfo:
    """What an administrator may see of a tenant: no password, ciphertext or key hash."""

    id: uuid.UUID
    name: str
    status: str
    cluster: str
    db_user: str
    key_id: str
    created_at: dt.datetime
    updated_at: dt.datetime


INFO_COLUMNS = (
    Tenant.id,
    Tenant.name,
    Tenant.status,
    Tenant.cluster,
    Tenant.db_user,
    Tenant.key_id,
    Tenant.created_at,
    Tenant.updated_at,
)


def get_tenant(control_engine: sa.Engine, tenant_id: uuid.UUID) -> TenantInfo:
    """The tenant; raises TenantNotFound."""
    with control_engine.connect() as connection:
        row = connection.execute(
            sa.select(*INFO_COLUMNS).where(Tenant.id == tenant_id)
        ).one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    return TenantInfo(**row._mapping)


def find_tenant_by_name(control_engine: sa.Engine, name: str) -> TenantInfo | None:
    with control_engine.connect() as connection:
        row = connection.execute(sa.select(*INFO_COLUMNS).where(Tenant.name == name)).one_or_none()
    return None if row is None else TenantInfo(**row._mapping)


def list_tenants(
    control_engine: sa.Engine, *, page: int, page_size: int, status: str | None = None
) -> tuple[list[TenantInfo], int]:
    """One page of tenants, oldest first, and the total count."""
    conditions = [] if status is None else [Tenant.status == status]
    with control_engine.connect() as connection:
        total = connection.scalar(sa.select(sa.func.count()).select_from(Tenant).where(*conditions))
        rows = connection.execute(
            sa.select(*INFO_COLUMNS)
            .where(*conditions)
            .order_by(Tenant.created_at, Tenant.id)
            .limit(page_size)
            .offset((page - 1) * page_size)
        ).all()
    return [TenantInfo(**row._mapping) for row in rows], total or 0


def tenant_backends(engine: sa.Engine, tenant_id: uuid.UUID) -> dict[int, int]:
    """Server connections attributed to the tenant, per app worker pid, on ``engine``'s server.

    A backend names its tenant and worker in ``application_name`` (``tp:<tenant>:<pid>``):
    a dedicated connection for its whole life, a shared one for its transaction. Any role
    may read ``application_name`` in ``pg_stat_activity``; pids of different app nodes
    are not told apart here.
    """
    prefix = f"tp:{tenant_id}:"
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT substr(application_name, :start)::int AS pid, count(*) AS connections "
                "FROM pg_stat_activity WHERE starts_with(application_name, :prefix) "
                "AND substr(application_name, :start) ~ '^[0-9]{1,9}$' GROUP BY 1"
            ),
            {"prefix": prefix, "start": len(prefix) + 1},
        ).all()
    return {int(row.pid): int(row.connections) for row in rows}
