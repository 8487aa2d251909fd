"""Liveness, readiness and the Rust template's health check."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify

from app import metrics
from app.errors import ServiceUnavailable
from app.tenancy import tenancy_of

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and serving; touches nothing else."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """The control-plane database answers, so tenant requests can be authenticated."""
    if not control_plane_ready():
        raise ServiceUnavailable("the control-plane database is unreachable")
    return jsonify(status="ready")


def control_plane_ready() -> bool:
    """Whether the control-plane database answers now; recorded as a metric either way."""
    try:
        with tenancy_of(current_app).control_engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        ready = False
    else:
        ready = True
    metrics.set_control_plane_up(ready)
    return ready


@bp.get("/health_check")
def health_check() -> tuple[str, int]:
    """Kept for clients of the Rust template: 200 with an empty body."""
    return "", 200
