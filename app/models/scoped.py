"""Columns every tenant-scoped table has; the migration helper adds the RLS around them."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import UUID


class TenantScoped:
    """Mixin: uuid id, tenant_id filled from the connected role, timestamps."""

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=sa.func.gen_random_uuid()
    )
    # Never set by the application: the column default derives it from the connected role,
    # and the RLS policy's WITH CHECK rejects any other value.
    tenant_id: orm.Mapped[uuid.UUID] = orm.mapped_column(
        UUID(as_uuid=True),
        sa.ForeignKey("tenant_placements.tenant_id", ondelete="CASCADE"),
        server_default=sa.text("current_tenant_id()"),
    )
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
