"""Users of a tenant."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm

from app.db import Base
from app.models.scoped import TenantScoped


class User(TenantScoped, Base):
    __tablename__ = "users"

    first_name: orm.Mapped[str] = orm.mapped_column(sa.String(50))
    last_name: orm.Mapped[str] = orm.mapped_column(sa.String(50))
    email: orm.Mapped[str | None] = orm.mapped_column(sa.String(254))
    confirmed: orm.Mapped[bool] = orm.mapped_column(sa.Boolean, server_default=sa.false())
