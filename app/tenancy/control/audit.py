"""One JSON line per tenant lifecycle action on the ``tenantpool.audit`` logger.

Who (``actor``), what (``action``), which tenant, and when (the line's ``ts``); never a
secret: callers pass names and ids only, and nothing else is added here.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import uuid

audit_log = logging.getLogger("tenantpool.audit")


def audit(action: str, tenant_id: uuid.UUID, *, actor: str, tenant_name: str | None = None) -> None:
    """Log that ``actor`` did ``action`` to the tenant; call after the change is committed."""
    audit_log.info(
        "tenant %s",
        action,
        extra={
            "audit": True,
            "action": action,
            "actor": actor,
            "tenant_id": str(tenant_id),
            "tenant_name": tenant_name,
        },
    )


def cli_actor() -> str:
    """Who runs a command on this machine: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME, as in some containers
        user = f"uid{os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"
