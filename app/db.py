"""Declarative base with a constraint naming convention, and the control-plane engine.

The control-plane engine connects as the owner role of ``APP_DATABASE_URL``. It reads and
writes ``tenants`` only: tenant rows are never read through it (RLS forbids the owner
anyway, see migrations).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from app import dbfailover, dbwait


def _fk_column(constraint: sa.ForeignKeyConstraint, table: sa.Table) -> str:
    """The column a foreign key is about: ``user_id`` of a tenant reference
    ``(tenant_id, user_id)``, else its first column (naming convention token ``fk_column``).

    So two references to one parent get two names, and app/errors.py can tell from a
    violated constraint's name which field of the request was wrong.
    """
    columns = [element.parent.name for element in constraint.elements]
    if len(columns) > 1 and columns[0] == "tenant_id":
        return "_".join(columns[1:])
    return columns[0]


NAMING_CONVENTION: dict[str, Any] = {
    "fk_column": _fk_column,
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(fk_column)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


CONTROL_POOL_MAX = 4
"""Most connections one worker's control-plane engine opens (the start-up check counts them).

All are kept once opened (no overflow): an overflow connection is closed on return, and
a new one opened right after could briefly coexist on the server with the old backend,
still exiting: one more than counted.
"""


class Base(orm.DeclarativeBase):
    """Base of every model; constraint names come from the naming convention."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def create_control_engine(
    url: str | sa.URL,
    *,
    connect_timeout: int = 5,
    io_timeout: float | None = None,
    pool_timeout: float = 5.0,
) -> sa.Engine:
    """Engine of the owner role for the control plane.

    The pool is small: tenant lookups are cached per worker, so this engine only serves
    cache misses, readiness probes and admin work. It is disposed without closing the
    parent's sockets in a forked child, so a pool made before a fork is never shared.
    Connecting waits at most ``connect_timeout`` s and, once :func:`dbwait.install` ran,
    each round trip ``io_timeout`` s (None: unbounded); waiting for one of its connections,
    ``pool_timeout`` s. No ping: a pooled connection the server closed is replaced at
    checkout without a round trip (``dbwait.discard_if_closed_by_server``), so a request
    that needs the control plane while the server is silent costs one bounded round trip,
    not a ping and a query.
    """
    engine = sa.create_engine(
        url,
        # Fixed: the start-up capacity check counts exactly CONTROL_POOL_MAX per worker.
        pool_size=CONTROL_POOL_MAX,
        max_overflow=0,
        pool_timeout=pool_timeout,
        connect_args={
            "application_name": f"tp:control:{os.getpid()}",
            **dbwait.connect_args(connect_timeout=connect_timeout, io_timeout=io_timeout),
        },
    )
    sa.event.listen(engine, "checkout", dbwait.discard_if_closed_by_server)
    # A demoted primary's connections are dropped: the next ones find the new primary.
    dbfailover.follow_writable(engine)
    _dispose_after_fork(engine)
    return engine


def _dispose_after_fork(engine: sa.Engine) -> None:
    ref = weakref.ref(engine)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=after_in_child)
