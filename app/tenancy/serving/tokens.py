"""End users: identity-provider tokens (JWT) that carry the tenant, verified against a JWKS.

Beside tenant API keys (machine clients), a caller may send ``Authorization: Bearer <jwt>``
from the team's identity provider (Keycloak, Auth0, Cognito, Entra ID, ...). The token is
verified with PyJWT against the provider's public keys (``JwksCache``): asymmetric
algorithms only (``ALGORITHMS``; ``none`` and HMAC never, so a public key can never be
used as an HMAC secret), the issuer and audience configured, ``exp``, ``nbf`` and ``iat``
with ``LEEWAY`` seconds of clock skew. The tenant comes from a claim, the end user from
``sub``, their roles from another claim; every value that will reach SQL is checked to a
strict shape here. Whatever is wrong with a token, the answer is the one AuthenticationFailed
(401), as for an API key: no oracle of which part failed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from app.tenancy.errors import AuthenticationFailed, InvalidTenantHeader
from app.tenancy.serving.resolve import parse_tenant_id

__all__ = ["ALGORITHMS", "LEEWAY", "Identity", "JwksCache", "TokenVerifier", "looks_like_jwt"]

logger = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256", "EdDSA")
"""Accepted signature algorithms: asymmetric only."""
LEEWAY = 30
"""Seconds of clock skew allowed when checking exp, nbf and iat."""
_ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_MAX_JWKS_BYTES = 1024 * 1024
_MAX_ROLES = 32
_ROLE = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
# Printable ASCII but the quote and the backslash: the subject reaches SQL as a literal.
_SUBJECT = re.compile(r"\A[\x21-\x26\x28-\x5b\x5d-\x7e]{1,255}\Z")
# A compact JWT of at most 8 kB: three base64url parts (a signature is never empty here).
_JWT_SHAPE = re.compile(r"\A[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_MAX_TOKEN = 8192

Fetch = Callable[[str, float], bytes]
"""``fetch(url, timeout)``: the JWKS document's bytes; raises OSError/ValueError on failure."""


def looks_like_jwt(credential: str) -> bool:
    """Whether a bearer credential is shaped like a compact JWT (API keys have no dot)."""
    return len(credential) <= _MAX_TOKEN and _JWT_SHAPE.match(credential) is not None


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for: a tenant, an end user and what they may do.

    ``admin``: the user holds the admin role (``APP_JWT_ADMIN_ROLE``) and sees all of the
    tenant's rows; ``can_write``: the token's scopes allow writes (``APP_JWT_WRITE_SCOPE``).
    """

    tenant_id: uuid.UUID
    subject: str
    roles: tuple[str, ...]
    admin: bool
    can_write: bool


def _http_fetch(url: str, timeout: float) -> bytes:
    # S310: the URL is the operator's APP_JWT_JWKS_URL, checked to be https (or loopback) by
    # config; never anything a client sent.
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError("the JWKS document is over 1 MB")
    return body


class JwksCache:
    """The identity provider's public keys by ``kid``. Thread safe.

    Fetched on first use, again once ``ttl`` seconds old, and on a token naming a ``kid``
    not known yet (a key rotation at the provider), but then at most once per
    ``min_interval`` seconds: a flood of tokens with made-up kids costs at most
    ``60 / min_interval`` fetches a minute. A fetch is one GET bounded by ``timeout``,
    made by one thread at a time (``_fetching``), never under ``_lock``; a request waits
    for it at most ``timeout`` seconds, and only when it needs a key not known yet. While
    the provider is unreachable, the keys known keep working.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        min_interval: float = 10.0,
        timeout: float = 2.0,
        fetch: Fetch = _http_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_interval = min_interval
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._fetching = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self.fetches = 0

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The public key ``kid``; None if the provider does not list it (after a refetch)."""
        now = self._clock()
        with self._lock:
            known = self._keys.get(kid)
            stale = self._fetched_at is None or now - self._fetched_at >= self.ttl
            due = self._attempted_at is None or now - self._attempted_at >= self.min_interval
        if known is not None:
            if stale and due:
                self._refresh(wait=False)  # the key known serves this request meanwhile
            return known
        if not due:
            return None
        self._refresh(wait=True)
        with self._lock:
            return self._keys.get(kid)

    def _refresh(self, *, wait: bool) -> None:
        if not self._fetching.acquire(timeout=self.timeout if wait else 0):
            return  # another thread is fetching: what it gets serves the next requests
        try:
            with self._lock:
                now = self._clock()
                if self._attempted_at is not None and now - self._attempted_at < self.min_interval:
                    return  # fetched while this thread waited for the lock
                self._attempted_at = now
            keys = self._load()
            if keys is not None:
                with self._lock:
                    self._keys = keys
                    self._fetched_at = self._clock()
        finally:
            self._fetching.release()

    def _load(self) -> dict[str, jwt.PyJWK] | None:
        """The provider's asymmetric keys by kid; None (logged) if they cannot be had."""
        self.fetches += 1
        try:
            document = json.loads(self._fetch(self.url, self.timeout))
            entries = document["keys"]
            if not isinstance(entries, list):
                raise ValueError("keys is not a list")
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "cannot fetch the JWKS (%s); keeping the keys known", type(error).__name__
            )
            return None
        keys = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
                continue  # HMAC ("oct") keys are never accepted, whatever a token says
            kid = entry.get("kid")
            if not isinstance(kid, str):
                continue
            try:
                keys[kid] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                logger.warning("ignored an unusable key %r in the JWKS", kid)
        return keys


class TokenVerifier:
    """Verifies an end user's JWT and says for which tenant and user it speaks. Thread safe."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        tenant_claim: str = "tenant_id",
        roles_claim: str = "roles",
        admin_role: str = "admin",
        write_scope: str | None = None,
        leeway: int = LEEWAY,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.roles_claim = roles_claim
        self.admin_role = admin_role
        self.write_scope = write_scope
        self.leeway = leeway

    def verify(self, token: str) -> Identity:
        """The token's identity; AuthenticationFailed for anything wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused() from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS or not isinstance(kid, str) or not kid:
            raise _refused()
        key = self.jwks.key(kid)
        if key is None or key.algorithm_name != algorithm:
            raise _refused()
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWTError:
            raise _refused() from None
        return self._identity(claims)

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        tenant, subject = claims.get(self.tenant_claim), claims.get("sub")
        if not isinstance(tenant, str) or not isinstance(subject, str):
            raise _refused()
        try:
            tenant_id = parse_tenant_id([tenant])
        except InvalidTenantHeader:
            raise _refused() from None
        if not _SUBJECT.match(subject):
            raise _refused()
        roles = claims.get(self.roles_claim, [])
        if not isinstance(roles, list) or len(roles) > _MAX_ROLES:
            raise _refused()
        if not all(isinstance(role, str) and _ROLE.match(role) for role in roles):
            raise _refused()
        granted = tuple(sorted(set(roles)))
        return Identity(
            tenant_id, subject, granted, self.admin_role in granted, self._can_write(claims)
        )

    def _can_write(self, claims: Mapping[str, Any]) -> bool:
        if self.write_scope is None:
            return True
        scopes = claims.get("scope", claims.get("scp", ""))
        granted = scopes.split() if isinstance(scopes, str) else scopes
        return isinstance(granted, list) and self.write_scope in granted


def _refused() -> AuthenticationFailed:
    return AuthenticationFailed("invalid bearer token for this tenant")
