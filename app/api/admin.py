"""``/v1/admin/tenants``: the tenant lifecycle over HTTP, behind the admin token.

Separate from tenant authentication: no ``X-Tenant-ID``, and a tenant's API key is just a
wrong token here. The token is compared as a SHA-256 hash in constant time; missing and
wrong tokens get the same 401. With ``APP_ADMIN_TRUSTED_CIDRS`` set, other addresses get 403
before the token is looked at. The client address is the peer's, or, behind
``APP_TRUSTED_PROXIES`` proxies, the one they forwarded (werkzeug's ProxyFix).

Responses never hold a password, ciphertext or key hash; an API key appears only in the
response that created it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from app import metrics
from app.api.body import json_object, page_response, query_args
from app.errors import Forbidden, Unauthorized, ValidationFailed
from app.headers import header_values
from app.hooks import client_address
from app.schemas.stats import TenantStatsSchema
from app.schemas.tenants import (
    TenantCreateSchema,
    TenantListQuerySchema,
    TenantSchema,
    TenantWithKeySchema,
)
from app.tenancy import tenancy_of
from app.tenancy.control import provisioning, queries
from app.tenancy.control.clusters import DEFAULT_CLUSTER, Clusters
from app.tenancy.control.queries import TenantInfo
from app.tenancy.serving.events import EventKind, TenantEvent
from app.tenant_stats import tenant_stats
from config import Settings

EXTENSION = "tenantpool.admin"
_TENANT = TenantSchema()
_TENANT_WITH_KEY = TenantWithKeySchema()
_CREATE = TenantCreateSchema()
_LIST_QUERY = TenantListQuerySchema()
_STATS = TenantStatsSchema()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@dataclass(frozen=True)
class AdminGuard:
    """Who may use the admin API: a token (kept as its hash) and optional networks."""

    token_hash: bytes
    enabled: bool
    trusted: tuple[Network, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminGuard:
        token = settings.admin_token
        # Without a token every request is compared against a random one: same work, no entry.
        digest = _digest(token if token is not None else secrets.token_urlsafe(32))
        return cls(digest, token is not None, settings.trusted_cidrs)

    def allows_address(self, address: str | None) -> bool:
        if not self.trusted:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack listener
        return any(ip in network for network in self.trusted)

    def allows_token(self, authorization: list[str]) -> bool:
        presented = ""
        if len(authorization) == 1 and authorization[0].startswith("Bearer "):
            presented = authorization[0].removeprefix("Bearer ")
        matches = hmac.compare_digest(_digest(presented), self.token_hash)
        return matches and self.enabled and bool(presented)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def init_app(app: Flask) -> None:
    """Register the blueprint; trust forwarded addresses only from configured proxies."""
    settings: Settings = app.config["SETTINGS"]
    app.extensions[EXTENSION] = AdminGuard.from_settings(settings)
    if settings.trusted_proxies > 0:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0
        )
    app.register_blueprint(bp)


@bp.before_request
def _authorize() -> None:
    guard: AdminGuard = current_app.extensions[EXTENSION]
    if not guard.allows_address(request.remote_addr):
        raise Forbidden("the admin API is not available from this address")
    # Failed tokens spend the same per-client allowance as failed tenant keys (429 past it).
    throttle = tenancy_of(current_app).auth_throttle
    throttle.check(client_address())
    if not guard.allows_token(header_values("Authorization")):
        throttle.failed(client_address())
        raise Unauthorized("missing or invalid admin token")


@bp.get("/tenants")
def list_tenants() -> Response:
    params = query_args(_LIST_QUERY)
    page, size = params["page"], params["page_size"]
    records, total = queries.list_tenants(
        _engine(), page=page, page_size=size, status=params.get("status")
    )
    return page_response(_TENANT.dump(records, many=True), page=page, page_size=size, total=total)


@bp.post("/tenants")
def create_tenant() -> tuple[Response, int, dict[str, str]]:
    values = _CREATE.load(json_object())
    tenancy = tenancy_of(current_app)
    cluster = values.get("cluster", DEFAULT_CLUSTER)
    if cluster not in tenancy.clusters.names:
        known = ", ".join(tenancy.clusters.names)
        raise ValidationFailed({"cluster": [f"no cluster named {cluster!r}; known: {known}"]})
    created = provisioning.create_tenant(
        tenancy.clusters,
        tenancy.keyring,
        values["name"],
        tenancy.limits,
        cluster=cluster,
        actor=_actor(),
    )
    body = _with_key(queries.get_tenant(_engine(), created.id), created.api_key)
    return body, 201, {"Location": url_for(".get_tenant", tenant_id=created.id)}


@bp.get("/tenants/<uuid:tenant_id>")
def get_tenant(tenant_id: uuid.UUID) -> Response:
    return jsonify(_TENANT.dump(queries.get_tenant(_engine(), tenant_id)))


@bp.get("/tenants/<uuid:tenant_id>/stats")
def get_tenant_stats(tenant_id: uuid.UUID) -> Response:
    """The tenant across this service's workers and on its database server (tenant_stats)."""
    info = queries.get_tenant(_engine(), tenant_id)
    report = tenant_stats(
        tenancy_of(current_app),
        info,
        workers_directory=metrics.worker_directory(),
        include_self=True,
    )
    return jsonify(_STATS.dump(report))


@bp.post("/tenants/<uuid:tenant_id>/rotate-credentials")
def rotate_credentials(tenant_id: uuid.UUID) -> Response:
    tenancy = tenancy_of(current_app)
    info = provisioning.rotate_credentials(
        tenancy.clusters,
        tenancy.keyring,
        tenant_id,
        scram_iterations=tenancy.limits.scram_iterations,
        actor=_actor(),
    )
    return _changed(info, EventKind.CREDENTIALS_ROTATED)


@bp.post("/tenants/<uuid:tenant_id>/rotate-api-key")
def rotate_api_key(tenant_id: uuid.UUID) -> Response:
    api_key = provisioning.rotate_api_key(_engine(), tenant_id, actor=_actor())
    _apply_here(EventKind.API_KEY_ROTATED, tenant_id)
    return _with_key(queries.get_tenant(_engine(), tenant_id), api_key)


@bp.post("/tenants/<uuid:tenant_id>/suspend")
def suspend_tenant(tenant_id: uuid.UUID) -> Response:
    info = provisioning.suspend_tenant(_clusters(), tenant_id, actor=_actor())
    return _changed(info, EventKind.SUSPENDED)


@bp.post("/tenants/<uuid:tenant_id>/resume")
def resume_tenant(tenant_id: uuid.UUID) -> Response:
    return _changed(
        provisioning.resume_tenant(_clusters(), tenant_id, actor=_actor()), EventKind.RESUMED
    )


@bp.delete("/tenants/<uuid:tenant_id>")
def delete_tenant(tenant_id: uuid.UUID) -> tuple[str, int]:
    provisioning.delete_tenant(_clusters(), tenant_id, actor=_actor())
    _apply_here(EventKind.DELETED, tenant_id)
    return "", 204


def _engine() -> sa.Engine:
    return tenancy_of(current_app).control_engine


def _clusters() -> Clusters:
    return tenancy_of(current_app).clusters


def _actor() -> str:
    return f"admin-api:{request.remote_addr or 'unknown'} request:{g.get('request_id')}"


def _apply_here(kind: EventKind, tenant_id: uuid.UUID) -> None:
    # Every worker acts on the change event when it arrives; this one need not wait for it.
    tenancy_of(current_app).on_event(TenantEvent(kind, tenant_id))


def _changed(info: TenantInfo, kind: EventKind) -> Response:
    _apply_here(kind, info.id)
    return jsonify(_TENANT.dump(info))


def _with_key(info: TenantInfo, api_key: str) -> Response:
    response = jsonify(_TENANT_WITH_KEY.dump({**dataclasses.asdict(info), "api_key": api_key}))
    response.headers["Cache-Control"] = "no-store"  # the key must not outlive this answer
    return response
