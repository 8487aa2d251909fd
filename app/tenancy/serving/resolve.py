"""From request headers to a tenant: pure functions, no I/O.

``uuid.UUID`` accepts braces, ``urn:uuid:`` prefixes, missing hyphens and non-ASCII digits,
so the header is matched against a strict ASCII pattern before it is parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Sequence

from app.tenancy.errors import AuthenticationFailed, InvalidTenantHeader

_CANONICAL_UUID = re.compile(
    r"\A(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12})\Z",
)
_BEARER = re.compile(r"\ABearer ([A-Za-z0-9_-]{16,128})\Z")
API_KEY_PREFIX = "tpk_"
# Compared against when the tenant is unknown, so unknown and known tenants cost the same.
_ABSENT_KEY_HASH = hashlib.sha256(b"no tenant has this key").digest()


def parse_tenant_id(values: Sequence[str]) -> uuid.UUID:
    """The tenant id of exactly one canonical ``X-Tenant-ID`` header.

    Raises InvalidTenantHeader for none, several, or any non-canonical form, and for the
    nil UUID, which can never name a tenant.
    """
    if len(values) != 1:
        raise InvalidTenantHeader(
            "X-Tenant-ID is missing" if not values else "X-Tenant-ID is given more than once"
        )
    value = values[0]
    if not _CANONICAL_UUID.match(value):
        raise InvalidTenantHeader("X-Tenant-ID must be a UUID like 8-4-4-4-12 hex digits")
    tenant_id = uuid.UUID(value)
    if tenant_id.int == 0:
        raise InvalidTenantHeader("X-Tenant-ID must not be the nil UUID")
    return tenant_id


def parse_bearer(values: Sequence[str]) -> str:
    """The API key of exactly one ``Authorization: Bearer`` header, else AuthenticationFailed."""
    if len(values) != 1:
        raise AuthenticationFailed("one Authorization: Bearer header is required")
    match = _BEARER.match(values[0])
    if match is None:
        raise AuthenticationFailed("one Authorization: Bearer header is required")
    return match.group(1)


def generate_api_key() -> str:
    """A new API key: 256 random bits. Only its hash is ever stored."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> bytes:
    """SHA-256 of the key. A fast hash is enough: keys are random, not guessable passwords."""
    return hashlib.sha256(api_key.encode("ascii")).digest()


def check_api_key(presented: str, stored_hash: bytes | None) -> None:
    """Raise AuthenticationFailed unless ``presented`` hashes to ``stored_hash``.

    Constant time, and the same work when the tenant is unknown (``stored_hash`` None), so the
    answer is no oracle of which tenants exist.
    """
    expected = _ABSENT_KEY_HASH if stored_hash is None else stored_hash
    matches = hmac.compare_digest(hash_api_key(presented), expected)
    if not matches or stored_hash is None:
        raise AuthenticationFailed("invalid API key for this tenant")
