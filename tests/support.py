"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from app.tenancy.provisioning import ProvisionedTenant


def auth_headers(tenant: ProvisionedTenant) -> dict[str, str]:
    """The headers of a request by ``tenant`` for itself."""
    return {"X-Tenant-ID": str(tenant.id), "Authorization": f"Bearer {tenant.api_key}"}
