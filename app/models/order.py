"""Orders of a tenant: one of its users orders a quantity of one of its products.

The worked example of docs/extending.md: a tenant-scoped table with two references to
other tenant tables, each including ``tenant_id``, so an order can only name its own
tenant's user and product.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import UUID

from app.db import Base
from app.models.scoped import TenantScoped, tenant_reference

ORDER_STATUSES = ("pending", "paid", "shipped", "cancelled")


class Order(TenantScoped, Base):
    __tablename__ = "orders"
    __table_args__ = (
        # A user's orders go with the user; a product still ordered cannot be deleted.
        tenant_reference("user_id", "users", ondelete="CASCADE"),
        tenant_reference("product_id", "products", ondelete="RESTRICT"),
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.CheckConstraint(
            f"status IN ({', '.join(repr(status) for status in ORDER_STATUSES)})", name="status"
        ),
    )

    user_id: orm.Mapped[uuid.UUID] = orm.mapped_column(UUID(as_uuid=True))
    product_id: orm.Mapped[uuid.UUID] = orm.mapped_column(UUID(as_uuid=True))
    quantity: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    status: orm.Mapped[str] = orm.mapped_column(sa.String(20), server_default=ORDER_STATUSES[0])
    # Who created it (migration 0006, context_sql.user_scoped_ddl): the end user's sub, from
    # the verified context; NULL for an API key. A policy shows a user only their own.
    created_by: orm.Mapped[str | None] = orm.mapped_column(
        sa.Text, server_default=sa.text("current_app_user()")
    )
