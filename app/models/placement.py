"""Which tenants a cluster holds: one secret-free row each, the parent of every tenant row."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import UUID

from app.db import Base


class TenantPlacement(Base):
    """A tenant held by this cluster. Deleting it cascades to all the tenant's rows here.

    Lives on every cluster, the control plane's database included; owner access only.
    The tenant's secrets stay in the control plane's ``tenants`` table.
    """

    __tablename__ = "tenant_placements"

    tenant_id: orm.Mapped[uuid.UUID] = orm.mapped_column(UUID(as_uuid=True), primary_key=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
