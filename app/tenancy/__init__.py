"""Tenancy: one PostgreSQL role, one engine and one RLS context per tenant.

Lifecycle of a tenant request (``app.hooks`` is the only caller from Flask):

1. ``resolve.parse_tenant_id`` checks the one ``X-Tenant-ID`` header strictly;
   ``resolve.parse_bearer`` reads the API key.
2. ``TenantDirectory.find`` returns the tenant's cached record (status, key hash,
   cluster); ``resolve.check_api_key`` compares in constant time. Unknown tenant, wrong
   key and another tenant's key all raise the same ``AuthenticationFailed``.
3. ``EngineRegistry.get`` returns the tenant's engine, creating it on first use through
   ``TenantEngineFactory`` (credentials decrypted, connected as the tenant's own role)
   outside the registry lock. Every connection of every tenant engine holds a slot of the
   worker's ``ConnectionBudget``; a tenant whose logins are rejected backs off.
4. ``Tenancy.open_session`` checks a connection out and gives a ``TenantSession`` on it:
   every transaction it begins first runs ``set_config('app.tenant_id', <tenant>, true)``,
   so RLS sees both who is connected and whom the request is for, and fails closed if
   either is missing.
5. The caller commits or rolls back and closes the session; the connection returns to the
   tenant's pool. The worker's ``Reaper`` disposes engines left idle and, through the
   ``TenantEventListener``, forgets a tenant the moment a change event names it.
"""

from app.tenancy.service import Tenancy, attach, tenancy_of

__all__ = ["Tenancy", "attach", "tenancy_of"]
