"""``GET /metrics``: Prometheus exposition of every worker of this service."""

from __future__ import annotations

from flask import Blueprint, Response

from app import metrics as app_metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Counters and histograms summed over the workers; no tenant-identifying label."""
    body, content_type = app_metrics.render()
    return Response(body, content_type=content_type)
