"""Sessions bound to one tenant; every transaction starts by naming that tenant for RLS.

The setting is transaction-local (``set_config(..., true)``): pooled connections outlive
requests, and a per-connection setting would leak to the next checkout. It also works
behind PgBouncer in transaction mode.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, orm

_SET_TENANT = "SELECT set_config('app.tenant_id', %(tenant_id)s, true)"


class TenantSession(orm.Session):
    """An ORM session whose every transaction is for ``tenant_id``."""

    def __init__(self, *args: Any, tenant_id: uuid.UUID, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info["tenant_id"] = str(tenant_id)


@event.listens_for(TenantSession, "after_begin")
def _set_tenant(session: orm.Session, transaction: object, connection: sa.Connection) -> None:
    connection.exec_driver_sql(_SET_TENANT, {"tenant_id": session.info["tenant_id"]})


def tenant_sessionmaker(engine: sa.Engine) -> orm.sessionmaker[TenantSession]:
    """The session factory of one tenant engine; call it with ``tenant_id=``."""
    return orm.sessionmaker(bind=engine, class_=TenantSession, expire_on_commit=False)
