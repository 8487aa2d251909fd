"""``flask tenancy check``, references: no tenant row can name another tenant's row.

A foreign key is checked by PostgreSQL as the table's owner, past RLS: ``orders.user_id
REFERENCES users (id)`` accepts the id of another tenant's user, and the order then joins
to it. A reference between tenant tables must carry ``tenant_id`` on both sides, paired:
``(tenant_id, user_id) REFERENCES users (tenant_id, id)`` (``ddl.tenant_reference``). That
needs ``UNIQUE (tenant_id, id)`` on the parent, which every tenant table with an ``id`` has
(``ddl.make_tenant_scoped``, migration 0004).

Read-only catalog queries, as the owner; one line per finding, naming the table, the
columns and the fix.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.tenancy.control.ddl import PLACEMENTS_TABLE, unique_key_name

# Tables with a tenant_id column in user schemas, as checks.py finds them.
_TENANT_TABLES = f"""
    SELECT c.oid, a.attnum AS tenant_attnum
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
      AND c.oid IS DISTINCT FROM to_regclass('{PLACEMENTS_TABLE}')
"""


def reference_problems(connection: sa.Connection) -> list[str]:
    """Every reference between tenant tables without ``tenant_id``, every tenant table
    without ``UNIQUE (tenant_id, id)``."""
    return _unpaired_references(connection) + _missing_unique_keys(connection)


def _unpaired_references(connection: sa.Connection) -> list[str]:
    rows = connection.execute(
        sa.text(
            f"""
            WITH tenant AS ({_TENANT_TABLES})
            SELECT con.conname, con.conrelid::regclass::text AS child,
                   con.confrelid::regclass::text AS parent,
                   ARRAY(SELECT a.attname::text
                         FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, position)
                         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                         ORDER BY k.position) AS columns,
                   ARRAY(SELECT a.attname::text
                         FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, position)
                         JOIN pg_attribute a ON a.attrelid = con.confrelid
                          AND a.attnum = k.attnum
                         ORDER BY k.position) AS parent_columns
            FROM pg_constraint con
            JOIN tenant child ON child.oid = con.conrelid
            JOIN tenant parent ON parent.oid = con.confrelid
            WHERE con.contype = 'f'
            ORDER BY 2, 1
            """
        )
    ).all()
    found = []
    for row in rows:
        columns, parent_columns = list(row.columns), list(row.parent_columns)
        if _paired_on_tenant(columns, parent_columns):
            continue
        own = [column for column in columns if column != "tenant_id"] or columns
        targets = [column for column in parent_columns if column != "tenant_id"] or ["id"]
        found.append(
            f"table {row.child}: foreign key {row.conname} ({', '.join(columns)}) references "
            f"{row.parent} ({', '.join(parent_columns)}) without pairing tenant_id, so a row "
            "can name another tenant's row (foreign-key checks bypass row level security); "
            f"make it (tenant_id, {', '.join(own)}) REFERENCES {row.parent} "
            f"(tenant_id, {', '.join(targets)}): "
            f'tenant_reference(op, "{row.child}", "{own[0]}", "{row.parent}") in a migration'
        )
    return found


def _paired_on_tenant(columns: list[str], parent_columns: list[str]) -> bool:
    """``tenant_id`` is in the reference and points at the parent's ``tenant_id``."""
    return "tenant_id" in columns and parent_columns[columns.index("tenant_id")] == "tenant_id"


def _missing_unique_keys(connection: sa.Connection) -> list[str]:
    rows = connection.execute(
        sa.text(
            f"""
            WITH tenant AS ({_TENANT_TABLES})
            SELECT c.oid::regclass::text AS name, c.relname
            FROM tenant
            JOIN pg_class c ON c.oid = tenant.oid
            JOIN pg_attribute id ON id.attrelid = c.oid AND id.attname = 'id'
                                AND NOT id.attisdropped
            WHERE NOT EXISTS (
                SELECT FROM pg_index i
                WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                  AND i.indnkeyatts = 2
                  AND ((i.indkey[0], i.indkey[1]) = (tenant.tenant_attnum, id.attnum)
                       OR (i.indkey[0], i.indkey[1]) = (id.attnum, tenant.tenant_attnum))
            )
            ORDER BY 1
            """
        )
    ).all()
    return [
        f"table {row.name}: has no UNIQUE (tenant_id, id), which tenant references point at; "
        f"ALTER TABLE {row.name} ADD CONSTRAINT {unique_key_name(row.relname)} "
        "UNIQUE (tenant_id, id) (make_tenant_scoped adds it to new tables)"
        for row in rows
    ]
