"""The signed context every tenant statement opens with, on either way of serving.

::

    SELECT set_config('app.tenant_sig', '<hmac>', true), [set_config('role', 't_<hex>', true),]
           set_config('app.tenant_id', ...), set_config('app.user_id', ...),
           set_config('app.user_roles', ...), set_config('app.user_admin', ...)[, ...]

The signature is HMAC-SHA256, under the database's key (``tp_private.context``, read once
per worker), of the tenant, the end user, their roles, whether they see all of the tenant's
rows, and the backend (``<pid>:n<number>`` or, on a standby, ``<pid>:s<start>`` on a gateway
connection, ``<pid>:0`` on a tenant's own): exactly what ``tp_private.tenant_context_ok()``
recomputes (app/tenancy/control/context_sql.py). It comes first, because the verifier also
requires it to open the client's message. On a gateway connection the opening also switches the role
and sets what the tenant role's own settings would have (statement timeout, application
name).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass

__all__ = ["ContextSigner", "TenantContext"]

OPENINGS_CACHED = 1024
"""Openings a signer keeps: one per (context, connection) in recent use."""


@dataclass(frozen=True)
class TenantContext:
    """For whom a transaction runs: a tenant, and the end user if a JWT named one.

    An API key speaks for the tenant itself: no user, no roles, every row (``admin``).
    Every field reaches SQL as a literal: ``tenant_id`` is a canonical UUID, ``user`` and
    ``roles`` were checked to a strict alphabet when the token was verified
    (``serving/tokens.py``), never with a quote, a backslash or a comma in them.
    """

    tenant_id: str
    user: str = ""
    roles: tuple[str, ...] = ()
    admin: bool = True

    @classmethod
    def of_tenant(cls, tenant_id: uuid.UUID) -> TenantContext:
        """The context of an API key: the tenant itself."""
        return cls(str(tenant_id))


class ContextSigner:
    """Builds the signed opening of a tenant's statements on one engine's connections.

    ``shared``: a gateway connection, whose opening also switches to the tenant's role and
    sets its statement timeout and application name.
    """

    def __init__(self, key: bytes, *, shared: bool, statement_timeout_ms: int = 0) -> None:
        if len(key) != 32:
            raise ValueError("the tenant context key must be 32 bytes")
        self._key = key
        self._shared = shared
        self._timeout = int(statement_timeout_ms)
        self._pid = os.getpid()  # signers are made in the worker, never before a fork
        # Every statement of a transaction sends the same opening, and a pooled connection
        # serves the same few contexts again and again: sign each pair once, not per statement.
        self.opening = functools.lru_cache(maxsize=OPENINGS_CACHED)(self._opening)

    def _opening(self, context: TenantContext, binding: str) -> str:
        """The context statement (no trailing ``;``): signature first, as the verifier wants."""
        roles = ",".join(context.roles)
        admin = "true" if context.admin else "false"
        signed = "\n".join((context.tenant_id, context.user, roles, admin, binding))
        signature = hmac.new(self._key, signed.encode(), hashlib.sha256).hexdigest()
        settings = [f"set_config('app.tenant_sig', '{signature}', true)"]
        if self._shared:
            settings.append(f"set_config('role', 't_{context.tenant_id.replace('-', '')}', true)")
        settings += [
            f"set_config('app.tenant_id', '{context.tenant_id}', true)",
            f"set_config('app.user_id', '{context.user}', true)",
            f"set_config('app.user_roles', '{roles}', true)",
            f"set_config('app.user_admin', '{admin}', true)",
        ]
        if self._shared:
            # The tenant role's own settings do not apply after SET ROLE; and the backend says
            # whom it serves in pg_stat_activity, as a tenant's own connection does.
            settings += [
                f"set_config('statement_timeout', '{self._timeout}', true)",
                f"set_config('application_name', 'tp:{context.tenant_id}:{self._pid}', true)",
            ]
        return "SELECT " + ", ".join(settings)
