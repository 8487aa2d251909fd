"""``Idempotency-Key`` on POST, PATCH and DELETE: a retry gets the first answer, nothing twice.

The header Stripe and the IETF draft (httpapi-idempotency-key-header) use. For a tenant
request that sends one (``hooks.require_tenant`` calls :func:`begin` once the session is
bound; the views end with :func:`acknowledge`):

- the same key with the same request (method, path with query, body bytes) within
  ``APP_IDEMPOTENCY_TTL`` replays the first answer (status, body, the headers in
  :data:`REPLAYED_HEADERS`, plus ``Idempotent-Replayed: true``) and changes nothing;
- the same key with another request: 422 ``idempotency_key_reused``;
- the same key while its first request is still running: 409 ``idempotency_key_in_use``;
- a key that is empty, longer than 255 characters, not printable ASCII (or holds ``"``,
  ``\\`` or ``,``), or is sent twice: 400. ``"abc"`` (the draft's sf-string) is the key ``abc``.

Only successful answers are stored, in the write's own transaction
(app/tenancy/serving/idempotency.py). A failed write (4xx, 5xx) changed nothing and stores
nothing, so a retry with the key runs again: storing it would pin a transient failure (409,
503, a referenced row not there yet) to the key for its whole lifetime.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, request
from sqlalchemy import event, orm

from app.errors import ApiError, BadRequest
from app.headers import header_values
from app.models.idempotency import MAX_KEY_LENGTH
from app.tenancy.serving import idempotency as keys
from app.tenancy.serving.session import TenantSession

HEADER = "Idempotency-Key"
KEYED_METHODS = frozenset({"POST", "PATCH", "DELETE"})
REPLAYED_HEADERS: tuple[str, ...] = ("Content-Type", "Location")
"""Headers of the first answer a replay repeats. A header a write answer gains later (a
consistency token, say) belongs here if a replay must repeat it as first sent."""
REPLAYED = "Idempotent-Replayed"
_PENDING = "idempotency"  # session.info key of the claimed key, until it is stored
# Printable ASCII but '"', '\\' and ',' (spaces inside allowed): a value a header carries
# unambiguously. No comma, because servers join a repeated header's values with one.
_CHAR = r"\x21\x23-\x2b\x2d-\x5b\x5d-\x7e"
_KEY = re.compile(rf"^[{_CHAR}](?:[ {_CHAR}]{{0,{MAX_KEY_LENGTH - 2}}}[{_CHAR}])?$")


class InvalidIdempotencyKey(BadRequest):
    code = "invalid_idempotency_key"


class IdempotencyKeyInUse(ApiError):
    status, code, title = 409, "idempotency_key_in_use", "Conflict"


class IdempotencyKeyReused(ApiError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"


@dataclass
class _Claim:
    key: str
    fingerprint: bytes
    ttl: dt.timedelta
    stored: bool = False  # the answer is in the transaction


def begin(session: orm.Session, ttl: dt.timedelta) -> Response | None:
    """Claim the request's key, if it sends one: the replayed answer, or None to go on.

    Raises 400 (bad key), 409 (its first request still runs) or 422 (another request).
    """
    if request.method not in KEYED_METHODS:
        return None
    values = header_values(HEADER)
    if not values:
        return None
    key = _parse(values)
    fingerprint = _fingerprint()
    try:
        found = keys.claim(session, key)
    except keys.KeyInUse:
        raise IdempotencyKeyInUse(
            "a request with this Idempotency-Key is still running; retry once it has answered"
        ) from None
    if found is None:
        session.info[_PENDING] = _Claim(key, fingerprint, ttl)
        return None
    if found.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with another request (method, path or body)"
        )
    # Committed (the claim's lock and purge): its WAL position, at or after the first
    # answer's commit, gives the replay an X-Consistency-Token that reads that write.
    session.commit()
    return _replay(found.answer)


def acknowledge(session: orm.Session, answer: Any) -> Response:
    """Commit the view's write with its ``answer`` (what a view returns), stored under the key.

    Views call this instead of ``session.commit()`` once they know their answer.
    """
    response = current_app.make_response(answer)
    claimed: _Claim | None = session.info.get(_PENDING)
    if claimed is not None:
        stored = keys.Answer(
            response.status_code,
            {name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers},
            response.get_data(),
        )
        keys.store(session, claimed.key, claimed.fingerprint, stored, claimed.ttl)
        claimed.stored = True
    session.commit()
    return response


def _parse(values: list[str]) -> str:
    if len(values) != 1:
        raise InvalidIdempotencyKey("send one Idempotency-Key header")
    key = values[0]
    if len(key) >= 2 and key[0] == key[-1] == '"':  # the IETF draft's sf-string form
        key = key[1:-1]
    if not _KEY.match(key):
        raise InvalidIdempotencyKey(
            f"send one Idempotency-Key of 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            "other than double quote, backslash and comma"
        )
    return key


def _fingerprint() -> bytes:
    """SHA-256 of the method, the path with its query and the body (read once, kept)."""
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.full_path.encode(), request.get_data()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _replay(answer: keys.Answer) -> Response:
    response = Response(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response.headers[name] = value
    response.headers[REPLAYED] = "true"
    return response


@event.listens_for(TenantSession, "before_commit")
def _refuse_unkeyed_commit(session: orm.Session) -> None:
    # A keyed write that commits without storing its key would run again on a retry: a
    # view that commits on its own instead of calling acknowledge() is a bug, made loud.
    claimed: _Claim | None = session.info.get(_PENDING)
    if claimed is not None and not claimed.stored:
        raise RuntimeError("a write with an Idempotency-Key committed without acknowledge()")
