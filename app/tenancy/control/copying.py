"""Copying a tenant's rows to another cluster, through the tenant's own role on both sides.

RLS applies to the copy as to any request (the owner never reads tenant rows): one
snapshot of the source, parents before children, one transaction on the target, and the
counts checked on both sides before the move may switch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from app.tenancy.control.ddl import PLACEMENTS_TABLE
from app.tenancy.errors import TenancyError
from app.tenancy.serving.context import ContextSigner, TenantContext

Progress = Callable[[str, int, int], None]
"""Called as ``progress(table, rows_copied, rows_total)`` after every batch."""


class MoveError(TenancyError):
    """The move did not happen; the tenant is where it was. The message says why."""


def _sign_statements(
    connection: sa.Connection, signer: ContextSigner, tenant_id: uuid.UUID
) -> None:
    """Open every later statement of ``connection`` with the tenant's signed context.

    As a request with the tenant's API key: the tenant itself, every row, user-scoped
    tables included (their policy asks for the signed context, not only the role). The
    verifier wants the signature in front of each message, so each statement gets it.
    """
    with connection.begin():
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    opening = signer.opening(TenantContext.of_tenant(tenant_id), f"{pid}:0") + "; "

    def prefix(*args: Any) -> tuple[str, Any]:
        statement, parameters = args[2], args[3]
        return opening + statement, parameters

    sa.event.listen(connection, "before_cursor_execute", prefix, retval=True)


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


def _batches(source: sa.Connection, table: sa.Table, size: int) -> Iterator[Sequence[sa.Row[Any]]]:
    """The table's rows in primary-key order, ``size`` at a time (keyset pages).

    One statement per page, each with its own signed opening: a server-side cursor's
    FETCH would reach the policies without one. REPEATABLE READ keeps the pages one snapshot.
    """
    key = list(table.primary_key.columns)
    if not key:
        raise MoveError(f"{table.name} has no primary key: its rows cannot be paged")
    page = sa.select(table).order_by(*key).limit(size)
    rows = source.execute(page).all()
    while rows:
        yield rows
        after = sa.tuple_(*key) > sa.tuple_(*(rows[-1]._mapping[column] for column in key))
        rows = source.execute(page.where(after)).all() if len(rows) == size else []


def copy_rows(
    source: sa.Connection,
    dest: sa.Connection,
    tenant_id: uuid.UUID,
    signers: tuple[ContextSigner, ContextSigner],
    progress: Progress,
    batch_size: int,
) -> dict[str, int]:
    """Copy every tenant table in one snapshot of the source, in one target transaction.

    ``signers``: of the source's and of the target's cluster (each has its own key).
    """
    source = source.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    _sign_statements(source, signers[0], tenant_id)
    _sign_statements(dest, signers[1], tenant_id)
    counts: dict[str, int] = {}
    with source.begin(), dest.begin():
        for table in _tenant_tables(source):
            total = source.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            copied = 0
            progress(table.name, copied, total)
            for batch in _batches(source, table, batch_size):
                # One multi-row INSERT: one statement, one message, one signed opening.
                dest.execute(table.insert().values([row._asdict() for row in batch]))
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
