"""A tenant's engine as the registry holds it, and how an engine is let go safely."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic

import sqlalchemy as sa
from sqlalchemy import event, orm

# typing_extensions (a hard dependency of SQLAlchemy) for a TypeVar default: a bare
# ``EngineEntry`` or ``EngineRegistry`` means one of ``orm.Session``.
from typing_extensions import TypeVar

logger = logging.getLogger("app.tenancy.serving.registry")

S = TypeVar("S", bound=orm.Session, default=orm.Session)


@dataclass(eq=False)
class EngineEntry(Generic[S]):
    """One tenant's engine and sessionmaker.

    ``last_used`` is written under the registry lock. ``retired`` becomes True once the
    registry has let go of the engine: whoever still holds the entry may finish its work,
    but every connection checked in after that is closed instead of pooled.
    """

    tenant_id: uuid.UUID
    engine: sa.Engine
    sessionmaker: orm.sessionmaker[S]
    last_used: float
    retired: bool = field(default=False, repr=False)


def checked_out(engine: sa.Engine) -> int:
    """Connections checked out of the engine's pool; 0 for pools that do not count."""
    checkedout: Callable[[], int] | None = getattr(engine.pool, "checkedout", None)
    return 0 if checkedout is None else checkedout()


def close_retired_on_checkin(entry: EngineEntry[Any]) -> None:
    """Make the entry's engine close, not pool, connections returned after retirement.

    Why: ``Engine.dispose()`` only closes connections checked in at that moment. One
    checked out then goes back, on return, into the queue of the old, orphaned pool and
    stays open until that pool is garbage collected (checked in SQLAlchemy 2.1:
    ``QueuePool.dispose`` empties the queue, ``_ConnectionRecord.checkin`` puts the
    record back into its own pool). The listener is added before the engine is shared,
    never to a pool in use, and ``dispose()`` carries pool listeners over to the new pool,
    so connections a late holder opens on a retired engine are closed on return too.
    Never in a forked child: there the connections are the parent's.
    """
    owner_pid = os.getpid()

    def close_if_retired(dbapi_connection: Any, record: Any) -> None:
        if entry.retired and os.getpid() == owner_pid:
            record.close()

    event.listen(entry.engine.pool, "checkin", close_if_retired)


def retire(entry: EngineEntry[Any], *, close: bool) -> None:
    """Dispose a popped entry's engine. Never call with the registry lock held."""
    entry.retired = True
    try:
        entry.engine.dispose(close=close)
    except Exception:
        # One broken connection must not stop the others from being disposed.
        logger.exception("disposing the engine of tenant %s failed", entry.tenant_id)
