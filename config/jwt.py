"""End users' tokens (DESIGN 6): the ``APP_JWT_*`` settings; unset ``APP_JWT_JWKS_URL``: off."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from config.reader import ConfigError, Reader

_CLAIM = re.compile(r"^[A-Za-z0-9_:./-]{1,64}$")
_ROLE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class JwtSettings:
    """Where the identity provider's keys are, what its tokens must say, what claims mean."""

    jwks_url: str
    issuer: str
    audience: str
    tenant_claim: str
    roles_claim: str
    admin_role: str
    write_scope: str | None


def load_jwt(reader: Reader, env: str) -> JwtSettings | None:
    """The JWT settings, or None when ``APP_JWT_JWKS_URL`` is unset (API keys only)."""
    jwks_url = reader.get("APP_JWT_JWKS_URL", "", lambda raw: _jwks_url(raw, env))
    if not jwks_url:
        return None
    return JwtSettings(
        jwks_url=jwks_url,
        issuer=reader.require("APP_JWT_ISSUER", str),
        audience=reader.require("APP_JWT_AUDIENCE", str),
        tenant_claim=reader.get("APP_JWT_TENANT_CLAIM", "tenant_id", _claim),
        roles_claim=reader.get("APP_JWT_ROLES_CLAIM", "roles", _claim),
        admin_role=reader.get("APP_JWT_ADMIN_ROLE", "admin", _role),
        write_scope=reader.get("APP_JWT_WRITE_SCOPE", None, _role),
    )


def _jwks_url(raw: str, env: str) -> str:
    """https, or http to this machine outside production (a development identity provider)."""
    url = urllib.parse.urlsplit(raw)
    if url.scheme == "https" and url.hostname:
        return raw
    if url.scheme == "http" and _loopback(url.hostname or ""):
        if env == "production":
            raise ConfigError("APP_JWT_JWKS_URL: production needs an https:// URL")
        return raw
    raise ValueError("must be an https:// URL (http:// only to this machine, outside production)")


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _claim(raw: str) -> str:
    if not _CLAIM.match(raw):
        raise ValueError("must be a claim name of letters, digits and _:./-")
    return raw


def _role(raw: str) -> str:
    if not _ROLE.match(raw):
        raise ValueError("must be a name of letters, digits and _.:-")
    return raw
