"""Request ids and one JSON access-log line per request (never a secret)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from app import metrics

_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{8,128}\Z")
access_log = logging.getLogger("tenantpool.access")


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    g.request_started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    # A client's id is kept only when it is plainly safe to echo and log.
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _finish(response: Response) -> Response:
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers["X-Request-ID"] = request_id
    started = g.get("request_started")
    seconds = None if started is None else time.perf_counter() - started
    duration_ms = None if seconds is None else round(seconds * 1000, 2)
    route = request.url_rule.rule if request.url_rule else None
    metrics.observe_request(request.method, route, response.status_code, seconds or 0.0)
    tenant_id = g.get("tenant_id")
    access_log.info(
        "request",
        extra={
            "request_id": request_id,
            "tenant_id": None if tenant_id is None else str(tenant_id),
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "duration_ms": duration_ms,
        },
    )
    return response
