"""The worker's tenancy: control-plane engine, tenant directory, engine registry, keyring."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from app.crypto import Keyring
from app.tenancy.directory import TenantDirectory, TenantRecord
from app.tenancy.errors import AuthenticationFailed, TenantSuspended
from app.tenancy.provisioning import RoleLimits
from app.tenancy.registry import EngineRegistry
from app.tenancy.resolve import check_api_key
from app.tenancy.session import TenantSession


@dataclass
class Tenancy:
    """Everything one worker needs to serve tenant requests. Thread safe."""

    control_engine: sa.Engine
    directory: TenantDirectory
    registry: EngineRegistry[TenantSession]
    keyring: Keyring
    limits: RoleLimits

    def authenticate(self, tenant_id: uuid.UUID, api_key: str) -> TenantRecord:
        """The tenant, if ``api_key`` is its key and it is active.

        Raises AuthenticationFailed (unknown tenant, wrong or foreign key: one answer) or
        TenantSuspended.
        """
        record = self.directory.find(tenant_id)
        check_api_key(api_key, None if record is None else record.api_key_hash)
        if record is None:  # pragma: no cover - check_api_key raised already
            raise AuthenticationFailed("invalid API key for this tenant")
        if not record.active:
            raise TenantSuspended("this tenant is suspended")
        return record

    def open_session(self, tenant_id: uuid.UUID) -> TenantSession:
        """A session on the tenant's own engine; the caller closes it."""
        entry = self.registry.get(tenant_id)
        return entry.sessionmaker(tenant_id=tenant_id)

    def forget(self, tenant_id: uuid.UUID, reason: str) -> None:
        """Drop what this worker holds of the tenant: cached record and engine."""
        self.directory.invalidate(tenant_id)
        self.registry.evict(tenant_id, reason)

    def close(self) -> None:
        """Dispose every engine of this worker (worker exit)."""
        self.registry.dispose_all()
        self.control_engine.dispose()
