"""The control plane's secrets of the gateway roles: one row per database it serves shared."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy import orm

from app.db import Base


class Gateway(Base):
    """A database's gateway role (``tp_private.context.gateway_role`` there) and its password.

    ``database`` is ``<server system identifier>/<database name>``: roles are per server,
    and two servers may each have a database of the same name. The password is random,
    encrypted like a tenant's (database and role as associated data) and set on the role as
    a SCRAM verifier by the first worker that needs it (``control.gateways``). Owner access
    only; a data cluster's table stays empty.
    """

    __tablename__ = "gateways"

    database: orm.Mapped[str] = orm.mapped_column(sa.Text, primary_key=True)
    role: orm.Mapped[str] = orm.mapped_column(sa.Text)
    db_password_encrypted: orm.Mapped[str] = orm.mapped_column(sa.Text)
    key_id: orm.Mapped[str] = orm.mapped_column(sa.Text)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )
