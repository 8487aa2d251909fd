"""The control plane: one row per tenant, owned and read by the owner role only."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import UUID

from app.db import Base


class TenantStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Tenant(Base):
    """A tenant: its PostgreSQL role, the role's encrypted password and its API key hash."""

    __tablename__ = "tenants"
    __table_args__ = (sa.CheckConstraint("status IN ('active', 'suspended')", name="status"),)

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(UUID(as_uuid=True), primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
    db_user: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
    db_password_encrypted: orm.Mapped[str] = orm.mapped_column(sa.Text)
    key_id: orm.Mapped[str] = orm.mapped_column(sa.Text)
    api_key_hash: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    status: orm.Mapped[str] = orm.mapped_column(sa.Text, server_default=TenantStatus.ACTIVE.value)
    cluster: orm.Mapped[str] = orm.mapped_column(sa.Text, server_default="default")
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
