"""Building a tenant's engine: read its credentials, decrypt, connect as its own role.

Called by the registry outside its lock; may be slow (a query, a decryption, a TCP and
SCRAM handshake) and may raise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from app.crypto import CryptoError, Keyring, tenant_aad
from app.tenancy.directory import TenantDirectory
from app.tenancy.errors import AuthenticationFailed, TenantUnavailable
from app.tenancy.session import TENANT_DRIVER


@dataclass(frozen=True)
class PoolSettings:
    """Per-tenant pool bounds, from config."""

    pool_size: int
    max_overflow: int
    pool_timeout: float
    connect_timeout: int


class TenantEngineFactory:
    """Callable ``tenant_id -> Engine`` connecting as the tenant's own LOGIN role."""

    def __init__(
        self,
        directory: TenantDirectory,
        keyring: Keyring,
        cluster_url: Callable[[str], sa.URL],
        pool: PoolSettings,
    ) -> None:
        self._directory = directory
        self._keyring = keyring
        self._cluster_url = cluster_url
        self._pool = pool

    def __call__(self, tenant_id: uuid.UUID) -> sa.Engine:
        credentials = self._directory.credentials(tenant_id)
        if credentials is None:
            # Deleted between authentication and now: answer as for an unknown tenant.
            raise AuthenticationFailed("tenant no longer exists")
        try:
            password = self._keyring.decrypt_str(
                credentials.db_password_encrypted, tenant_aad(tenant_id, credentials.db_user)
            )
        except CryptoError:
            raise TenantUnavailable(
                "the tenant's database credentials cannot be decrypted", code="credentials"
            ) from None
        url = self._cluster_url(credentials.cluster).set(
            drivername=TENANT_DRIVER, username=credentials.db_user, password=password
        )
        engine = sa.create_engine(
            url,
            pool_size=self._pool.pool_size,
            max_overflow=self._pool.max_overflow,
            pool_timeout=self._pool.pool_timeout,
            pool_pre_ping=True,
            connect_args={
                # Every backend says which tenant and which worker it serves.
                "application_name": f"tp:{tenant_id}:{os.getpid()}",
                "connect_timeout": self._pool.connect_timeout,
            },
        )
        # First connect here, outside the registry lock, so a bad password fails now and
        # the pool starts warm.
        try:
            with engine.connect():
                pass
        except BaseException:
            engine.dispose()
            raise
        return engine
