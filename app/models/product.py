"""Products of a tenant. Tenant-scoped like users (the template's were global)."""

from __future__ import annotations

import decimal

import sqlalchemy as sa
from sqlalchemy import orm

from app.db import Base
from app.models.scoped import TenantScoped


class Product(TenantScoped, Base):
    __tablename__ = "products"
    __table_args__ = (
        sa.CheckConstraint("price >= 0", name="price_not_negative"),
        sa.CheckConstraint("stock >= 0", name="stock_not_negative"),
    )

    name: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    description: orm.Mapped[str] = orm.mapped_column(sa.String(2000), server_default="")
    price: orm.Mapped[decimal.Decimal] = orm.mapped_column(sa.Numeric(12, 2))
    stock: orm.Mapped[int] = orm.mapped_column(sa.Integer, server_default="0")
