"""Every failure becomes an RFC 9457 ``application/problem+json`` response.

Views raise; this module alone turns exceptions into responses, each with a stable
``code`` and the request id. No stack trace, SQL text or database message ever reaches a
client: those go to the log, which never holds secrets either.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
from flask import Flask, Response, g, json, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app import metrics, models
from app.dbfailover import READ_ONLY_SQLSTATE
from app.tenancy.errors import (
    AuthenticationFailed,
    CapacityExhausted,
    InvalidConsistencyToken,
    InvalidTenantHeader,
    ReadOnlyToken,
    TenantNameTaken,
    TenantNotFound,
    TenantOverShare,
    TenantSuspended,
    TenantUnavailable,
    TooManyAuthFailures,
)

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error with a status, a stable code and a human title; ``detail`` is safe to show."""

    status = 500
    code = "internal_error"
    title = "Internal server error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class BadRequest(ApiError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(ApiError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(ApiError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(ApiError):
    status, code, title = 404, "not_found", "Not found"


class UnsupportedMediaType(ApiError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ValidationFailed(ApiError):
    """422 with ``errors``: field name -> list of messages."""

    status, code, title = 422, "validation_failed", "Validation failed"

    def __init__(self, errors: dict[str, Any], detail: str | None = None) -> None:
        super().__init__(detail or "the request has invalid fields", errors=errors)


class ServiceUnavailable(ApiError):
    status, code, title = 503, "database_unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1, code: str = "") -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        if code:
            self.code = code


_TENANCY_ERRORS: dict[type[Exception], tuple[int, str, str]] = {
    InvalidTenantHeader: (400, "invalid_tenant_header", "Invalid X-Tenant-ID header"),
    InvalidConsistencyToken: (
        400,
        "invalid_consistency_token",
        "Invalid X-Consistency-Token header",
    ),
    AuthenticationFailed: (401, "unauthorized", "Unauthorized"),
    TenantSuspended: (403, "tenant_suspended", "Tenant suspended"),
    ReadOnlyToken: (403, "read_only_token", "Forbidden"),
    TenantNotFound: (404, "not_found", "Not found"),
    TenantNameTaken: (409, "conflict", "Conflict"),
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build a problem+json response; the only place error bodies are made."""
    body: dict[str, Any] = {
        "type": f"urn:tenantpool:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": g.get("request_id"),
        **extra,
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="tenantpool"'
    return response


def _api_error(error: ApiError) -> Response:
    headers = {}
    if isinstance(error, ServiceUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    return problem(error.status, error.code, error.title, error.detail, headers, **error.extra)


def _validation_error(error: ValidationError) -> Response:
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return _api_error(ValidationFailed(messages))


def _tenancy_error(error: Exception) -> Response:
    status, code, title = _TENANCY_ERRORS[type(error)]
    # 401s all read the same, whatever the cause and the credential (API key or JWT): no
    # tenant-existence oracle.
    detail = "missing or invalid credentials for this tenant" if status == 401 else str(error)
    return problem(status, code, title, detail)


def _tenant_unavailable(error: TenantUnavailable) -> Response:
    log.warning("tenant unavailable: %s", error.code)
    return problem(
        503,
        error.code,
        "Service unavailable",
        "the tenant's database is unavailable; retry later",
        {"Retry-After": str(error.retry_after)},
    )


def _too_many(error: TenantOverShare | TooManyAuthFailures) -> Response:
    # 429s are counted by outcome in the metrics (fair share, auth throttle), never by tenant.
    if isinstance(error, TenantOverShare):
        code, detail = "tenant_busy", "this tenant's requests hold their share of the service"
    else:
        metrics.count_auth_throttled()
        code, detail = "too_many_auth_failures", "too many failed authentications; retry later"
    return problem(429, code, "Too many requests", detail, {"Retry-After": str(error.retry_after)})


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_")
    headers = dict(error.get_headers()) if status == 405 else {}
    headers.pop("Content-Type", None)
    return problem(status, code, error.name or "Error", error.description or "", headers)


def _capacity(error: sqlalchemy.exc.TimeoutError | CapacityExhausted) -> Response:
    # A tenant's own pool (TimeoutError) or the worker's connection budget is used up.
    log.warning("connection pool exhausted: %s", type(error).__name__)
    metrics.count_capacity_rejection()
    retry_after = error.retry_after if isinstance(error, CapacityExhausted) else 1
    return problem(
        503,
        "capacity",
        "Service unavailable",
        "all database connections are busy; retry later",
        {"Retry-After": str(retry_after)},
    )


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A write cut off by a failover may have committed or not (docs/operations.md, Failover).
_LOST_WRITE = (
    "the database connection was lost (a failover?) and this write may or may not have been "
    "made; retry it with the same Idempotency-Key"
)


def _database_error(error: sqlalchemy.exc.DBAPIError) -> Response:
    pgcode = getattr(error.orig, "pgcode", None)
    if pgcode == "57014":  # query_canceled: the role's statement_timeout
        return problem(
            503,
            "statement_timeout",
            "Service unavailable",
            "the query took too long; retry later",
            {"Retry-After": "1"},
        )
    if error.connection_invalidated or pgcode == READ_ONLY_SQLSTATE:
        # A lost connection, or a server that stopped taking writes (a failover: app/dbfailover.py);
        # the pool was dropped and the retry connects to the server that takes writes now.
        log.warning("database connection lost: %s (sqlstate %s)", type(error.orig).__name__, pgcode)
        return problem(
            503,
            "database_unavailable",
            "Service unavailable",
            _LOST_WRITE if request.method in _WRITES else "the database connection was lost; retry",
            {"Retry-After": "1"},
        )
    if isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        log.warning("database unavailable: %s (sqlstate %s)", type(error.orig).__name__, pgcode)
        return problem(
            503,
            "database_unavailable",
            "Service unavailable",
            "the database is unavailable; retry later",
            {"Retry-After": "1"},
        )
    if pgcode is not None and pgcode.startswith("23"):
        return _integrity_error(
            pgcode, getattr(getattr(error.orig, "diag", None), "constraint_name", None)
        )
    if pgcode is not None and pgcode.startswith("22"):
        # Data exception: input that validation should have refused. Still the client's
        # input, so a 400, but logged as the validation gap it is.
        log.error("data exception sqlstate=%s slipped past validation", pgcode)
        return problem(400, "invalid_value", "Bad request", "a value is out of range or malformed")
    log.error("database error sqlstate=%s type=%s", pgcode, type(error.orig).__name__)
    return _unexpected(error)


def _integrity_error(pgcode: str, constraint: str | None) -> Response:
    """A constraint refused the request's values: a 4xx naming the fields when known.

    A reference to a missing row and to another tenant's row fail alike (the tenant's
    composite reference finds neither), so the answer is the same: no existence oracle.
    The constraint's name (app/db.py's naming convention) says which fields it covers.
    """
    fields = _constraint_fields().get(constraint or "", ())
    if pgcode == "23503" and request.method == "DELETE":
        # Deleting a row that others still reference (ON DELETE RESTRICT).
        return problem(
            409, "referenced", "Conflict", "other records refer to this one; remove them first"
        )
    if pgcode == "23503":
        message = "refers to a record that does not exist"
        raise_as = ValidationFailed({name: [message] for name in fields} or {"_schema": [message]})
        return _api_error(raise_as)
    if pgcode == "23505":
        detail = "a record with these values exists already"
        if fields:
            errors = {name: ["already exists"] for name in fields}
            return problem(409, "conflict", "Conflict", detail, errors=errors)
        return problem(409, "conflict", "Conflict", detail)
    # not null, check, exclusion: input that validation should have refused.
    log.error("integrity error sqlstate=%s slipped past validation", pgcode)
    return _api_error(ValidationFailed({"_schema": ["breaks a rule of the stored records"]}))


@functools.cache
def _constraint_fields() -> dict[str, tuple[str, ...]]:
    """Constraint name -> the request fields it covers, for the models' references and keys.

    ``tenant_id`` is never a field: the database fills it from the connected role.
    """
    found: dict[str, tuple[str, ...]] = {}
    for table in models.metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, sa.ForeignKeyConstraint | sa.UniqueConstraint) and isinstance(
                constraint.name, str
            ):
                names = tuple(c.name for c in constraint.columns if c.name != "tenant_id")
                found[constraint.name] = names
    return found


def _unexpected(error: Exception) -> Response:
    log.error("unhandled %s", type(error).__name__, exc_info=error)
    return problem(500, "internal_error", "Internal server error", "an unexpected error occurred")


def init_app(app: Flask) -> None:
    """Register the handlers; the most specific exception type wins."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(ValidationError, _validation_error)
    for error_type in _TENANCY_ERRORS:
        app.register_error_handler(error_type, _tenancy_error)
    app.register_error_handler(TenantUnavailable, _tenant_unavailable)
    app.register_error_handler(TenantOverShare, _too_many)
    app.register_error_handler(TooManyAuthFailures, _too_many)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(sqlalchemy.exc.TimeoutError, _capacity)
    app.register_error_handler(CapacityExhausted, _capacity)
    app.register_error_handler(sqlalchemy.exc.DBAPIError, _database_error)
    app.register_error_handler(Exception, _unexpected)
