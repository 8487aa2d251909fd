"""Re-encrypting every secret under the keyring's active key (``flask crypto rotate``).

Tenant passwords, then the gateway roles' passwords (``gateways``: one row per database).

Online and restartable: each batch is its own short transaction, so an interrupted run
keeps what it committed and the next run picks up the rest; a run with nothing left to do
changes nothing. Passwords do not change, so no engine needs rebuilding and no event is
sent. Rows are locked FOR NO KEY UPDATE while re-encrypted, which a concurrent credential
rotation waits for and the tenant's own writes (KEY SHARE on the row) do not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from app.crypto import CryptoError, Keyring, gateway_aad, tenant_aad
from app.models.gateway import Gateway
from app.models.tenant import Tenant

Progress = Callable[[int], object]
"""Called after each batch with the number of rows it handled."""


@dataclass
class RekeyReport:
    """What a run did; ``failed`` (tenants) and ``failed_gateways`` (roles) list secrets that
    could not be decrypted."""

    active_key_id: str
    pending: int = 0
    reencrypted: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)
    failed_gateways: list[str] = field(default_factory=list)


def _stale(active_key_id: str) -> sa.ColumnElement[bool]:
    # The key id is in the row and in the token; either one naming another key counts.
    token_key = sa.func.split_part(Tenant.db_password_encrypted, ":", 2)
    return sa.or_(Tenant.key_id != active_key_id, token_key != active_key_id)


def _stale_gateway(active_key_id: str) -> sa.ColumnElement[bool]:
    token_key = sa.func.split_part(Gateway.db_password_encrypted, ":", 2)
    return sa.or_(Gateway.key_id != active_key_id, token_key != active_key_id)


def count_stale(control_engine: sa.Engine, active_key_id: str) -> int:
    """Secrets (tenants' and gateways') not under ``active_key_id`` yet."""
    with control_engine.connect() as connection:
        tenants = connection.scalar(
            sa.select(sa.func.count()).select_from(Tenant).where(_stale(active_key_id))
        )
        gateways = connection.scalar(
            sa.select(sa.func.count()).select_from(Gateway).where(_stale_gateway(active_key_id))
        )
    return (tenants or 0) + (gateways or 0)


def reencrypt_all(
    control_engine: sa.Engine,
    keyring: Keyring,
    *,
    batch_size: int = 100,
    progress: Progress | None = None,
) -> RekeyReport:
    """Re-encrypt every tenant secret not under the active key yet, ``batch_size`` at a time."""
    active = keyring.active_key_id
    report = RekeyReport(active, pending=count_stale(control_engine, active))
    after: uuid.UUID | None = None
    while True:
        with control_engine.begin() as connection:
            query = sa.select(Tenant.id, Tenant.db_user, Tenant.db_password_encrypted).where(
                _stale(active)
            )
            if after is not None:
                # Keyset order, so rows that fail are passed over rather than retried forever.
                query = query.where(Tenant.id > after)
            rows = connection.execute(
                query.order_by(Tenant.id).limit(batch_size).with_for_update(key_share=True)
            ).all()
            if not rows:
                break
            for row in rows:
                aad = tenant_aad(row.id, row.db_user)
                try:
                    secret = keyring.decrypt(row.db_password_encrypted, aad)
                except CryptoError:
                    report.failed.append(row.id)
                    continue
                connection.execute(
                    sa.update(Tenant)
                    .where(Tenant.id == row.id)
                    .values(db_password_encrypted=keyring.encrypt(secret, aad), key_id=active)
                )
                report.reencrypted += 1
            after = rows[-1].id
        if progress is not None:
            progress(len(rows))
    _reencrypt_gateways(control_engine, keyring, report, progress)
    return report


def _reencrypt_gateways(
    control_engine: sa.Engine, keyring: Keyring, report: RekeyReport, progress: Progress | None
) -> None:
    """The gateways' passwords: a handful of rows (one per database), one transaction."""
    active = keyring.active_key_id
    with control_engine.begin() as connection:
        rows = connection.execute(
            sa.select(Gateway.database, Gateway.role, Gateway.db_password_encrypted)
            .where(_stale_gateway(active))
            .with_for_update()
        ).all()
        for row in rows:
            aad = gateway_aad(row.database, row.role)
            try:
                secret = keyring.decrypt(row.db_password_encrypted, aad)
            except CryptoError:
                report.failed_gateways.append(row.role)
                continue
            connection.execute(
                sa.update(Gateway)
                .where(Gateway.database == row.database)
                .values(db_password_encrypted=keyring.encrypt(secret, aad), key_id=active)
            )
            report.reencrypted += 1
    if progress is not None and rows:
        progress(len(rows))
