"""Idempotency keys of a tenant's writes: claimed before the write, stored with it.

A keyed write runs in one transaction of the tenant's session:

1. :func:`claim` takes a transaction-level advisory lock on (tenant, end user, key), without
   waiting: taken by another transaction, the first request with that key is still running
   (:class:`KeyInUse`, a 409). Then, in a statement of its own (so that its snapshot sees
   whatever the lock's last holder committed), it removes a few expired keys of the tenant
   (the key itself among them if expired: a key past its time is new) and looks the key up.
2. The view writes; :func:`store` inserts the key with the answer in the same transaction,
   just before the view commits. The write and its key commit or vanish together, so a
   retry after an unknown outcome (the connection lost during ``COMMIT``) either replays
   the answer or runs the write for the first time: never twice.

Keys are rows of ``idempotency_keys`` under RLS (migration 0007): another tenant's keys are
invisible, and so are another end user's to a JWT without the admin role; the look-up also
names the user (``principal``), so an API key or an admin never replays a user's answer.
The advisory lock's two 32-bit keys come from a hash of (tenant, user, key): another
tenant that happened on the same pair could at worst see a 409 (a 1 in 2**64 chance), never
a row; the move gate's locks use the one-bigint form, another key space.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from app.tenancy.errors import TenancyError
from app.tenancy.serving.context import TenantContext

PURGE_BATCH = 8
"""Expired keys a keyed write removes (its own tenant's, oldest first): more than one per
key made, so expired keys never pile up while the tenant writes with keys."""

_PRINCIPAL = "coalesce((SELECT current_app_user()), '')"
_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:high, :low)")
_FIND = sa.text(
    f"""
    WITH expired AS (
        SELECT id FROM idempotency_keys WHERE expires_at <= now()
         ORDER BY expires_at LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED
    ), purged AS (
        DELETE FROM idempotency_keys
         WHERE id IN (SELECT id FROM expired)
            OR (principal = {_PRINCIPAL} AND key = :key AND expires_at <= now())
    )
    SELECT fingerprint, status, headers, body FROM idempotency_keys
     WHERE principal = {_PRINCIPAL} AND key = :key AND expires_at > now()
    """
)
_STORE = sa.text(
    "INSERT INTO idempotency_keys (key, fingerprint, status, headers, body, expires_at) "
    "VALUES (:key, :fingerprint, :status, CAST(:headers AS jsonb), :body, "
    "now() + make_interval(secs => :ttl))"
)


class KeyInUse(TenancyError):
    """Another request with this key is still running (a 409: retry once it has answered)."""


@dataclass(frozen=True)
class Answer:
    """What a keyed write answered: replayed as it was to a retry with the same key."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class StoredKey:
    """A key found unexpired: the request it was first used with, and its answer."""

    fingerprint: bytes
    answer: Answer


def claim(session: orm.Session, key: str) -> StoredKey | None:
    """Lock ``key`` for this transaction; its stored answer, or None if it is new.

    Raises :class:`KeyInUse` when another transaction holds it. Must run before the write,
    in the write's transaction; the lock ends with it.
    """
    context: TenantContext = session.info["context"]
    high, low = lock_ids(context, key)
    if not session.execute(_LOCK, {"high": high, "low": low}).scalar_one():
        raise KeyInUse("a request with this Idempotency-Key is still running")
    row = session.execute(_FIND, {"key": key}).one_or_none()
    if row is None:
        return None
    answer = Answer(row.status, dict(row.headers), bytes(row.body))
    return StoredKey(bytes(row.fingerprint), answer)


def store(
    session: orm.Session, key: str, fingerprint: bytes, answer: Answer, ttl: dt.timedelta
) -> None:
    """Insert ``key`` with ``answer`` in the session's transaction (committed with the write)."""
    session.execute(
        _STORE,
        {
            "key": key,
            "fingerprint": fingerprint,
            "status": answer.status,
            "headers": json.dumps(answer.headers),
            "body": answer.body,
            "ttl": ttl.total_seconds(),
        },
    )


def lock_ids(context: TenantContext, key: str) -> tuple[int, int]:
    """The advisory lock's two signed 32-bit keys for ``key`` of this tenant and user."""
    digest = hashlib.sha256(f"{context.tenant_id}\n{context.user}\n{key}".encode()).digest()
    return (
        int.from_bytes(digest[:4], "big", signed=True),
        int.from_bytes(digest[4:8], "big", signed=True),
    )
