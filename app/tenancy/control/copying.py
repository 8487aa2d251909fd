"""Copying a tenant's rows to another cluster, through the tenant's own role on both sides.

RLS applies to the copy as to any request (the owner never reads tenant rows): one
snapshot of the source, parents before children, one transaction on the target, and the
counts checked on both sides before the move may switch.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from app.tenancy.control.ddl import PLACEMENTS_TABLE
from app.tenancy.errors import TenancyError

Progress = Callable[[str, int, int], None]
"""Called as ``progress(table, rows_copied, rows_total)`` after every batch."""


class MoveError(TenancyError):
    """The move did not happen; the tenant is where it was. The message says why."""


_SET_TENANT = "SELECT set_config('app.tenant_id', %(tenant_id)s, true)"


def end_other_sessions(source: sa.Connection, *, settle: float = 0.1, rounds: int = 50) -> None:
    """End every other session of the connected tenant role, until two scans find none.

    A backend that passed its login check just before NOLOGIN may not be listed yet, so
    the scan repeats after a pause; it could do nothing meanwhile (the move lock is held).
    """
    end_others = sa.text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE usename = current_user AND pid <> pg_backend_pid()"
    )
    quiet = 0
    for _ in range(rounds):
        with source.begin():
            ended = source.execute(end_others).scalar_one()
        quiet = quiet + 1 if ended == 0 else 0
        if quiet == 2:
            return
        time.sleep(settle)
    raise MoveError("the tenant's sessions on the source kept coming back; try again")


def _tenant_tables(connection: sa.Connection) -> list[sa.Table]:
    """Every table whose rows belong to a tenant, parents before children."""
    names = connection.execute(
        sa.text(
            "SELECT conrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid = CAST(:parent AS regclass)"
        ),
        {"parent": PLACEMENTS_TABLE},
    ).scalars()
    metadata = sa.MetaData()
    metadata.reflect(connection, only=list(names))
    return [table for table in metadata.sorted_tables if table.name != PLACEMENTS_TABLE]


@contextlib.contextmanager
def _tenant_transaction(connection: sa.Connection, tenant_id: uuid.UUID) -> Iterator[None]:
    with connection.begin():
        connection.exec_driver_sql(_SET_TENANT, {"tenant_id": str(tenant_id)})
        yield


def copy_rows(
    source: sa.Connection,
    dest: sa.Connection,
    tenant_id: uuid.UUID,
    progress: Progress,
    batch_size: int,
) -> dict[str, int]:
    """Copy every tenant table in one snapshot of the source, in one target transaction."""
    source = source.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    counts: dict[str, int] = {}
    with _tenant_transaction(source, tenant_id), _tenant_transaction(dest, tenant_id):
        for table in _tenant_tables(source):
            total = source.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            copied = 0
            progress(table.name, copied, total)
            result = source.execute(sa.select(table).execution_options(yield_per=batch_size))
            for batch in result.partitions():
                dest.execute(table.insert(), [row._asdict() for row in batch])
                copied += len(batch)
                progress(table.name, copied, total)
            landed = dest.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            if not copied == total == landed:
                raise MoveError(
                    f"{table.name}: {total} rows on the source, {copied} read, {landed} on the "
                    "target; nothing was switched"
                )
            counts[table.name] = total
    return counts
