"""``flask db revision --autogenerate`` that writes tenant tables the tenancy way.

Alembic compares the models with the database and would write a tenant table as a plain
``create_table`` with its ``tenant_id`` column and foreign keys: no RLS, no policy, no
grants, ``flask tenancy check`` failing. migrations/env.py hands its directives to
:func:`tenancy_directives`, which writes instead

- the table without ``tenant_id`` and what hangs on it, then
  ``make_tenant_scoped(op, "<table>")`` (column, index, key, RLS, policy, grants);
- a model's ``created_by`` column (rows of the end user who made them) as
  ``make_user_scoped(op, "<table>")`` (column and restrictive policy), new table or not;
- each tenant reference ``(tenant_id, col) -> parent (tenant_id, id)`` as
  ``tenant_reference(op, "<table>", "<col>", "<parent>", on_delete=...)``, at table creation
  or added later;

and :func:`include_object` keeps the indexes those helpers make, which no model declares,
from being "removed". The migration template imports both helpers. What this cannot see is
SQL a migration runs by hand (functions, views, grants): review every generated file.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, ops

from app.tenancy.control.context_sql import USER_COLUMN
from app.tenancy.control.ddl import PLACEMENTS_TABLE

_HELPER_INDEX = re.compile(r"^ix_[a-z0-9_]+_tenant_id_[a-z0-9_]+$")


class MakeTenantScopedOp(MigrateOperation):
    """``make_tenant_scoped(op, table)`` in a generated migration."""

    def __init__(self, table: str) -> None:
        self.table = table


class MakeUserScopedOp(MigrateOperation):
    """``make_user_scoped(op, table)`` in a generated migration."""

    def __init__(self, table: str) -> None:
        self.table = table


class TenantReferenceOp(MigrateOperation):
    """``tenant_reference(op, table, column, parent, on_delete=...)`` in a generated migration."""

    def __init__(self, table: str, column: str, parent: str, on_delete: str) -> None:
        self.table, self.column, self.parent, self.on_delete = table, column, parent, on_delete


@renderers.dispatch_for(MakeTenantScopedOp)
def _render_scoped(autogen_context: AutogenContext, op: MakeTenantScopedOp) -> str:
    return f"make_tenant_scoped(op, {op.table!r})"


@renderers.dispatch_for(MakeUserScopedOp)
def _render_user_scoped(autogen_context: AutogenContext, op: MakeUserScopedOp) -> str:
    return f"make_user_scoped(op, {op.table!r})"


@renderers.dispatch_for(TenantReferenceOp)
def _render_reference(autogen_context: AutogenContext, op: TenantReferenceOp) -> str:
    return (
        f"tenant_reference(op, {op.table!r}, {op.column!r}, {op.parent!r}, "
        f"on_delete={op.on_delete!r})"
    )


def include_object(
    item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's ``include_object``: leave out the indexes the tenancy helpers made."""
    return not (
        type_ == "index"
        and reflected
        and compare_to is None
        and name is not None
        and _HELPER_INDEX.match(name) is not None
    )


def tenancy_directives(context: Any, revision: Any, directives: list[Any]) -> None:
    """Alembic's ``process_revision_directives``: tenant tables through the helpers."""
    for script in directives:
        for upgrade in script.upgrade_ops_list:
            upgrade.ops = _rewritten(upgrade.ops)


def _rewritten(operations: list[Any]) -> list[Any]:
    result: list[Any] = []
    for operation in operations:
        if isinstance(operation, ops.CreateTableOp) and _is_tenant_table(operation):
            result += _create_tenant_table(operation)
        elif isinstance(operation, ops.ModifyTableOps):
            operation.ops = [_as_helper(item) for item in operation.ops]
            result.append(operation)
        else:
            result.append(operation)
    return result


def _is_tenant_table(operation: ops.CreateTableOp) -> bool:
    return any(
        isinstance(item, sa.ForeignKeyConstraint)
        and item.referred_table.name == PLACEMENTS_TABLE
        and [column.name for column in item.columns] == ["tenant_id"]
        for item in operation.columns
    )


def _create_tenant_table(operation: ops.CreateTableOp) -> list[MigrateOperation]:
    """The table without ``tenant_id`` and its constraints, then the helpers' calls."""
    kept: list[Any] = []
    references: list[MigrateOperation] = []
    scoped: list[MigrateOperation] = [MakeTenantScopedOp(operation.table_name)]
    for item in operation.columns:
        if isinstance(item, sa.Column) and item.name == "tenant_id":
            continue
        if isinstance(item, sa.Column) and item.name == USER_COLUMN:
            scoped.append(MakeUserScopedOp(operation.table_name))
            continue
        if isinstance(item, sa.Constraint) and "tenant_id" in _column_names(item):
            reference = _reference(operation.table_name, item)
            if reference is not None:
                references.append(reference)
            continue  # the tenant key, the placement's foreign key: make_tenant_scoped's
        kept.append(item)
    table = ops.CreateTableOp(
        operation.table_name,
        kept,
        schema=operation.schema,
        _constraints_included=True,
        **operation.kw,
    )
    return [table, *scoped, *references]


def _as_helper(operation: Any) -> Any:
    """A tenant reference or an owner column added to an existing table, as the helper's call."""
    if isinstance(operation, ops.AddColumnOp) and operation.column.name == USER_COLUMN:
        return MakeUserScopedOp(operation.table_name)
    if isinstance(operation, ops.CreateForeignKeyOp):
        columns = list(operation.local_cols)
        remote = list(operation.remote_cols)
        if len(columns) == 2 and columns[0] == "tenant_id" and remote == ["tenant_id", "id"]:
            on_delete = operation.kw.get("ondelete") or "NO ACTION"
            return TenantReferenceOp(
                operation.source_table, columns[1], operation.referent_table, on_delete.upper()
            )
    return operation


def _reference(table: str, constraint: sa.Constraint) -> TenantReferenceOp | None:
    if not isinstance(constraint, sa.ForeignKeyConstraint):
        return None
    columns = _column_names(constraint)
    remote = [element.column.name for element in constraint.elements]
    if len(columns) != 2 or columns[0] != "tenant_id" or remote != ["tenant_id", "id"]:
        return None
    on_delete = (constraint.ondelete or "NO ACTION").upper()
    return TenantReferenceOp(table, columns[1], constraint.referred_table.name, on_delete)


def _column_names(constraint: sa.Constraint) -> list[str]:
    if isinstance(constraint, sa.ForeignKeyConstraint):
        return [element.parent.name for element in constraint.elements]
    if isinstance(constraint, sa.PrimaryKeyConstraint | sa.UniqueConstraint):
        return [column.name for column in constraint.columns]
    return []
