"""Creating tenants: a LOGIN role, its encrypted password, an API key hash, one row.

The role's password is random and reaches PostgreSQL only as a SCRAM-SHA-256 verifier
computed here, so no server log can show it. Role and row are made in one owner
transaction: either both exist or neither. The role's limits (CONNECTION LIMIT and
statement_timeout, so one tenant cannot starve the others) default from config and can
be set per tenant at creation (``limits=``) or later (``set_role_limits``); they live on
the role itself, where PostgreSQL enforces them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.crypto import Keyring, tenant_aad
from app.models.tenant import Tenant
from app.tenancy.ddl import TENANT_BASE_ROLE
from app.tenancy.events import EventKind, TenantEvent, notify
from app.tenancy.resolve import generate_api_key, hash_api_key
from app.tenancy.scram import generate_password, is_scram_verifier, scram_sha256_verifier


@dataclass(frozen=True)
class RoleLimits:
    """Per-tenant role limits so one tenant cannot starve the others."""

    connection_limit: int
    statement_timeout_ms: int
    scram_iterations: int


@dataclass(frozen=True)
class ProvisionedTenant:
    """A new tenant; ``api_key`` is shown once and never stored."""

    id: uuid.UUID
    name: str
    api_key: str


def role_name(tenant_id: uuid.UUID) -> str:
    """The tenant's role: ``t_`` + 32 hex digits; ``current_tenant_id()`` parses it back."""
    return f"t_{tenant_id.hex}"


def create_tenant(
    control_engine: sa.Engine,
    keyring: Keyring,
    name: str,
    limits: RoleLimits,
    *,
    cluster: str = "default",
) -> ProvisionedTenant:
    """Create the tenant's role and row in one transaction and return its API key."""
    return create_tenants(control_engine, keyring, [name], limits, cluster=cluster)[0]


def create_tenants(
    control_engine: sa.Engine,
    keyring: Keyring,
    names: Sequence[str],
    limits: RoleLimits,
    *,
    cluster: str = "default",
) -> list[ProvisionedTenant]:
    """Create several tenants in one transaction: all of them, or none.

    Two round trips whatever the count (the role statements in one message, the rows in
    one INSERT), so seeding a thousand tenants does not cost a thousand commits.
    """
    tenants = [ProvisionedTenant(uuid.uuid4(), name, generate_api_key()) for name in names]
    if not tenants:
        return []
    statements = []
    rows = []
    for tenant in tenants:
        role = role_name(tenant.id)
        password = generate_password()
        statements.append(
            f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS '
            f"INHERIT CONNECTION LIMIT {int(limits.connection_limit)} "
            f"PASSWORD '{_verifier(password, limits.scram_iterations)}' "
            f"IN ROLE {TENANT_BASE_ROLE}; "
            + _statement_timeout_sql(role, limits.statement_timeout_ms)
        )
        rows.append(
            {
                "id": tenant.id,
                "name": tenant.name,
                "db_user": role,
                "db_password_encrypted": keyring.encrypt(password, tenant_aad(tenant.id, role)),
                "key_id": keyring.active_key_id,
                "api_key_hash": hash_api_key(tenant.api_key),
                "cluster": cluster,
            }
        )
    with control_engine.begin() as connection:
        connection.exec_driver_sql("; ".join(statements))
        connection.execute(sa.insert(Tenant).values(rows))
    return tenants


def set_role_limits(
    control_engine: sa.Engine,
    tenant_id: uuid.UUID,
    *,
    connection_limit: int,
    statement_timeout_ms: int,
) -> None:
    """Change the tenant role's limits; raises LookupError for an unknown tenant.

    Existing sessions keep the statement_timeout they started with, so every worker is
    told (``limits_changed``) to drop the tenant's engine; new connections get the limits.
    """
    with control_engine.begin() as connection:
        role = connection.scalar(sa.select(Tenant.db_user).where(Tenant.id == tenant_id))
        if role is None:
            raise LookupError(f"no tenant {tenant_id}")
        connection.exec_driver_sql(
            f'ALTER ROLE "{role}" CONNECTION LIMIT {int(connection_limit)}; '
            + _statement_timeout_sql(role, statement_timeout_ms)
        )
        notify(connection, TenantEvent(EventKind.LIMITS_CHANGED, tenant_id))


def role_limits(control_engine: sa.Engine, tenant_id: uuid.UUID) -> tuple[int, int | None]:
    """The tenant role's CONNECTION LIMIT and statement_timeout in ms (None if unset)."""
    with control_engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT r.rolconnlimit, "
                "(SELECT split_part(setting, '=', 2) FROM unnest(r.rolconfig) AS setting "
                " WHERE setting LIKE 'statement_timeout=%') AS timeout "
                "FROM pg_roles r JOIN tenants t ON t.db_user = r.rolname WHERE t.id = :id"
            ),
            {"id": tenant_id},
        ).one_or_none()
    if row is None:
        raise LookupError(f"no tenant {tenant_id}")
    return row.rolconnlimit, None if row.timeout is None else int(row.timeout)


def reset_api_key(control_engine: sa.Engine, tenant_id: uuid.UUID) -> str:
    """Give the tenant a new API key (the old one stops working) and return it."""
    api_key = generate_api_key()
    with control_engine.begin() as connection:
        result = connection.execute(
            sa.update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(api_key_hash=hash_api_key(api_key), updated_at=sa.func.now())
        )
    if result.rowcount != 1:
        raise LookupError(f"no tenant {tenant_id}")
    return api_key


def _verifier(password: str, iterations: int) -> str:
    verifier = scram_sha256_verifier(password, iterations)
    # DDL takes no bind parameters; the verifier is embedded, so its alphabet is checked.
    if not is_scram_verifier(verifier):
        raise ValueError("refusing to embed a malformed SCRAM verifier")
    return verifier


def _statement_timeout_sql(role: str, timeout_ms: int) -> str:
    return f'ALTER ROLE "{role}" SET statement_timeout = {int(timeout_ms)}'
