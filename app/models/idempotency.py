"""A keyed write's answer (``Idempotency-Key``), kept for a retry (migration 0007).

Written and read by app/tenancy/serving/idempotency.py only, through the tenant's session:
RLS keeps each tenant's keys its own, and the end-user policy each user's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import JSONB

from app.db import Base
from app.models.scoped import TenantScoped

MAX_KEY_LENGTH = 255
"""The longest ``Idempotency-Key`` accepted (400 beyond)."""


class IdempotencyKey(TenantScoped, Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        sa.UniqueConstraint("tenant_id", "principal", "key"),
        sa.CheckConstraint("length(key) >= 1", name="key_not_empty"),
    )

    # The end user (a JWT's sub) whose key it is, '' for an API key: from the verified context.
    principal: orm.Mapped[str] = orm.mapped_column(
        sa.Text, server_default=sa.text("coalesce(current_app_user(), '')")
    )
    key: orm.Mapped[str] = orm.mapped_column(sa.String(MAX_KEY_LENGTH))
    # SHA-256 of the request (method, path, body): the same key with another request is a 422.
    fingerprint: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    status: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)
    headers: orm.Mapped[dict[str, Any]] = orm.mapped_column(JSONB)
    body: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    expires_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True))
