"""Tenant change events, carried by PostgreSQL LISTEN/NOTIFY on the control plane.

``notify`` is called inside the owner transaction that makes the change, so the event is
delivered when (and only if) that transaction commits. Every worker of every node listens
(its reaper thread) and forgets the tenant: cached record and engine.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

CHANNEL = "tenantpool_tenant_events"


class EventKind(enum.StrEnum):
    CREATED = "created"
    CREDENTIALS_ROTATED = "credentials_rotated"
    API_KEY_ROTATED = "api_key_rotated"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    DELETED = "deleted"
    MOVED = "moved"
    LIMITS_CHANGED = "limits_changed"


@dataclass(frozen=True)
class TenantEvent:
    kind: EventKind
    tenant_id: uuid.UUID

    def to_payload(self) -> str:
        return json.dumps({"kind": self.kind.value, "tenant_id": str(self.tenant_id)})

    @classmethod
    def from_payload(cls, payload: str) -> TenantEvent:
        """Parse a NOTIFY payload; raises ValueError if it is not one of ours."""
        try:
            data = json.loads(payload)
            return cls(EventKind(data["kind"]), uuid.UUID(data["tenant_id"]))
        except (TypeError, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"not a tenant event: {error}") from None


def notify(connection: sa.Connection, event: TenantEvent) -> None:
    """Queue ``event`` on the channel; sent when ``connection``'s transaction commits."""
    connection.execute(
        sa.text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": event.to_payload()},
    )
