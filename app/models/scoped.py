"""Columns every tenant-scoped table has; the migration helper adds the RLS around them.

The model side of app/tenancy/control/ddl.py: what a migration makes with
``make_tenant_scoped`` and ``tenant_reference`` is declared here too, under the same names
(app/db.py's naming convention), so the models and the migrations agree
(tests/test_migrations.py) and ``flask db revision --autogenerate`` sees no difference.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import UUID


class TenantScoped:
    """Mixin: uuid id, tenant_id filled from the connected role, timestamps, and
    ``UNIQUE (tenant_id, id)``, which tenant references (:func:`tenant_reference`) point at.
    """

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The declarative base maps the class (and makes its table) in its own
        # __init_subclass__, further along the MRO; the key is added to that table, so a
        # model's own __table_args__ need not repeat it.
        super().__init_subclass__(**kwargs)
        table = cls.__dict__.get("__table__")
        if isinstance(table, sa.Table):
            table.append_constraint(sa.UniqueConstraint("tenant_id", "id"))


def tenant_reference(
    column: str, parent: str, *, ondelete: str = "RESTRICT"
) -> sa.ForeignKeyConstraint:
    """``(tenant_id, column) REFERENCES parent (tenant_id, id)``, for ``__table_args__``.

    The model twin of ``ddl.tenant_reference`` (which the migration runs): a row can only
    name a row of its own tenant. Never declare ``sa.ForeignKey("users.id")`` between tenant
    tables: foreign-key checks bypass RLS, so it would accept another tenant's id.
    """
    return sa.ForeignKeyConstraint(
        ["tenant_id", column], [f"{parent}.tenant_id", f"{parent}.id"], ondelete=ondelete
    )
