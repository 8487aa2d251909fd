"""The only bridge from Flask to tenancy: authenticate, bind a tenant session, close it.

``require_tenant(bp)`` makes every view of a blueprint a tenant request (DESIGN section 4).
Views get their session from :func:`tenant_session`; they commit what they acknowledge, and
the teardown rolls back whatever is left and returns the connection to the tenant's pool.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from flask import Blueprint, Flask, Response, current_app, g, request

from app import idempotency
from app.headers import header_values
from app.tenancy import Tenancy, attach, tenancy_of
from app.tenancy.errors import AuthenticationFailed, ReadOnlyToken
from app.tenancy.serving.consistency import HEADER as CONSISTENCY_TOKEN
from app.tenancy.serving.consistency import parse_token
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.resolve import parse_bearer, parse_tenant_id
from app.tenancy.serving.session import TenantSession
from app.tenancy.serving.tokens import looks_like_jwt

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
log = logging.getLogger(__name__)


def init_app(app: Flask, tenancy: Tenancy) -> None:
    """Attach the worker's tenancy to ``app``; refuse a second one."""
    attach(app, tenancy)
    app.after_request(_answered)
    app.after_request(_consistency_token)
    # Teardowns run last registered first: the connection goes back, then the share.
    app.teardown_request(_leave_share)
    app.teardown_request(_close_session)


def require_tenant(bp: Blueprint) -> None:
    """Make every request of ``bp`` authenticate its tenant and open its session."""
    bp.before_request(_bind_tenant)
    bp.before_request(_claim_idempotency_key)


def tenant_session() -> TenantSession:
    """The current request's tenant session; only inside a ``require_tenant`` blueprint."""
    session: TenantSession | None = g.get("tenant_session")
    if session is None:
        raise RuntimeError("no tenant session: is this view's blueprint require_tenant()-ed?")
    return session


def _bind_tenant() -> None:
    tenancy = tenancy_of(current_app)
    tenancy.start_background()
    tenant_id, context = _authenticate(tenancy)
    # Before anything is held: a malformed token is the client's 400.
    token = parse_token(header_values(CONSISTENCY_TOKEN))
    g.tenant_id = tenant_id
    # Before a connection is taken: a request waiting for its tenant's share holds none.
    tenancy.fair_share.enter(tenant_id)
    g.fair_share_tenant = tenant_id
    # In flight from here until answered (the per-tenant view, app/tenancy/serving/activity).
    tenancy.activity.started(tenant_id)
    g.tenant_activity = tenancy.activity
    # Safe methods must not write: their statements run as read-only transactions of one
    # round trip each, with no COMMIT or ROLLBACK to send.
    g.tenant_session = tenancy.open_session(
        tenant_id, read_only=request.method in SAFE_METHODS, context=context, token=token
    )


def _claim_idempotency_key() -> Response | None:
    """A keyed write (``Idempotency-Key``) replays its first answer, or goes on claimed."""
    if request.method in SAFE_METHODS:
        return None
    ttl = dt.timedelta(seconds=current_app.config["SETTINGS"].idempotency_ttl)
    return idempotency.begin(tenant_session(), ttl)


def _consistency_token(response: Response) -> Response:
    """A write's answer carries the WAL position of what it committed (read-your-writes)."""
    session: TenantSession | None = g.get("tenant_session")
    if session is not None and request.method not in SAFE_METHODS and response.status_code < 300:
        token = session.consistency_token()  # no I/O: never raises
        if token is not None:
            response.headers[CONSISTENCY_TOKEN] = token
    return response


def _answered(response: Response) -> Response:
    _end_activity(response.status_code)
    return response


def _end_activity(status: int | None) -> None:
    """The tenant's request is answered with ``status`` (None: it ended without one)."""
    activity = g.pop("tenant_activity", None)
    if activity is None:
        return
    session: TenantSession | None = g.get("tenant_session")
    activity.finished(g.tenant_id, status, None if session is None else session.info.get("way"))


def _authenticate(tenancy: Tenancy) -> tuple[uuid.UUID, TenantContext | None]:
    """The request's tenant and, for an end user's JWT, the context it runs in.

    An API key needs ``X-Tenant-ID`` (400 without a valid one) and speaks for the tenant
    itself; a JWT names its tenant in a claim, and ``X-Tenant-ID``, if sent, must agree. A
    client that failed too often lately gets 429 before any lookup.
    """
    client = client_address()
    tenancy.auth_throttle.check(client)
    authorization = header_values("Authorization")
    claimed = header_values("X-Tenant-ID")
    token = _bearer_jwt(authorization) if tenancy.tokens is not None else None
    try:
        if token is None:
            tenant_id = parse_tenant_id(claimed)
            tenancy.authenticate(tenant_id, parse_bearer(authorization))
            return tenant_id, None
        context, can_write = tenancy.authenticate_token(
            token, parse_tenant_id(claimed) if claimed else None
        )
    except AuthenticationFailed:
        tenancy.auth_throttle.failed(client)
        raise
    if not can_write and request.method not in SAFE_METHODS:
        raise ReadOnlyToken("this token's scopes do not allow writes")
    return uuid.UUID(context.tenant_id), context


def _bearer_jwt(authorization: list[str]) -> str | None:
    """The JWT of exactly one ``Authorization: Bearer`` header, if it carries one."""
    if len(authorization) != 1 or not authorization[0].startswith("Bearer "):
        return None
    credential = authorization[0][len("Bearer ") :]
    return credential if looks_like_jwt(credential) else None


def client_address() -> str:
    """The client's address: the peer's, or the one trusted proxies forwarded (ProxyFix)."""
    return request.remote_addr or ""


def _leave_share(error: BaseException | None) -> None:
    tenant_id: uuid.UUID | None = g.pop("fair_share_tenant", None)
    if tenant_id is not None:
        tenancy_of(current_app).fair_share.leave(tenant_id)


def _close_session(error: BaseException | None) -> None:
    _end_activity(None)  # if no answer was made (an after_request hook failed)
    session: TenantSession | None = g.pop("tenant_session", None)
    if session is None:
        return
    # close() rolls back whatever the view left open and returns the connection.
    try:
        session.close()
    except Exception:  # the connection may be gone; the pool has discarded it then
        log.warning("closing the tenant session failed at teardown", exc_info=True)
