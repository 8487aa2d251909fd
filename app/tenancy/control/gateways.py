"""Each database's gateway role: what a worker needs to serve its tenants over shared connections.

Migration 0003 makes the role (``tp_gateway_<database>``, NOINHERIT, no grants) and the
signing key in ``tp_private.context``. The role's password is set here, once, by whichever
worker first needs it: random, sent to PostgreSQL only as a SCRAM verifier, and kept
encrypted in the control plane's ``gateways`` table, so every worker of every node logs in
with the same one. Two workers racing to set it are ordered by the row's primary key: the
second waits for the first's commit and reads its password.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from app.crypto import Keyring, gateway_aad
from app.models.gateway import Gateway
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.ddl import CONTEXT_SCHEMA
from app.tenancy.control.roles import GATEWAY_ROLE, role_verifier
from app.tenancy.control.scram import generate_password
from app.tenancy.serving.gateway import GatewayAccess


def context_key(clusters: Clusters, cluster: str) -> bytes:
    """The key ``cluster``'s database signs tenant contexts with (only its owner reads it)."""
    with clusters.engine(cluster).connect() as connection:
        key = connection.execute(sa.text(f"SELECT key FROM {CONTEXT_SCHEMA}.context")).scalar_one()
    return bytes(key)


def gateway_access(
    clusters: Clusters, keyring: Keyring, cluster: str, *, scram_iterations: int
) -> GatewayAccess:
    """The gateway's login and signing key on ``cluster``; sets its password on first use.

    The gateway logs in where the cluster's owner does (``APP_CLUSTERS``' DSN, or
    ``APP_DATABASE_URL`` for the control plane's database): directly, not through a
    pooler that routes tenants, since its tenant context is bound to its backend.
    Raises UnknownCluster, and SQLAlchemy's error when the cluster is not migrated.
    """
    owner = clusters.engine(cluster)
    with owner.connect() as connection:
        row = connection.execute(
            sa.text(
                f"SELECT c.gateway_role, c.key, s.system_identifier, current_database() AS db "
                f"FROM {CONTEXT_SCHEMA}.context c, pg_control_system() s"
            )
        ).one()
    role, key = str(row.gateway_role), bytes(row.key)
    if not GATEWAY_ROLE.fullmatch(role):
        raise ValueError("refusing to embed a malformed gateway role name")
    database = f"{row.system_identifier}/{row.db}"
    password = _password(clusters, keyring, cluster, _Role(database, role), scram_iterations)
    return GatewayAccess(role=role, url=owner.url.set(username=role, password=password), key=key)


@dataclass(frozen=True)
class _Role:
    """A gateway role and the database it serves (its row's key in ``gateways``)."""

    database: str
    name: str

    @property
    def aad(self) -> bytes:
        return gateway_aad(self.database, self.name)


def _password(
    clusters: Clusters, keyring: Keyring, cluster: str, role: _Role, scram_iterations: int
) -> str:
    with clusters.control.begin() as control:
        stored = _stored(control, keyring, role)
        if stored is not None:
            return stored
        password = generate_password()
        inserted = control.execute(
            insert(Gateway)
            .values(
                database=role.database,
                role=role.name,
                db_password_encrypted=keyring.encrypt(password, role.aad),
                key_id=keyring.active_key_id,
            )
            .on_conflict_do_nothing()
            .returning(Gateway.database)
        ).scalar()
        if inserted is None:  # another worker set it; its commit was waited for
            stored = _stored(control, keyring, role)
            if stored is None:  # pragma: no cover - the conflicting row was committed
                raise RuntimeError(f"the password of {role.name} vanished while it was set")
            return stored
        with clusters.transaction(cluster, control) as data:
            verifier = role_verifier(password, scram_iterations)
            data.exec_driver_sql(f"ALTER ROLE \"{role.name}\" LOGIN PASSWORD '{verifier}'")
    return password


def _stored(control: sa.Connection, keyring: Keyring, role: _Role) -> str | None:
    token = control.execute(
        sa.select(Gateway.db_password_encrypted).where(Gateway.database == role.database)
    ).scalar()
    return None if token is None else keyring.decrypt_str(token, role.aad)
