"""``GET /metrics``: Prometheus exposition of every worker of this service."""

from __future__ import annotations

from flask import Blueprint, Response

from app import metrics as app_metrics
from app.api.health import control_plane_ready

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Counters and histograms summed over the workers; no tenant-identifying label.

    Each scrape also checks the control plane (as ``/readyz`` does), so that
    ``tenantpool_control_plane_up`` is as fresh as the scrape.
    """
    control_plane_ready()
    body, content_type = app_metrics.render()
    return Response(body, content_type=content_type)
