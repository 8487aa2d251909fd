"""tenantpool: the application factory.

``create_app`` loads settings and calls each part's ``init_app`` in dependency order; it
opens no connection and starts no thread (engines connect lazily; the reaper starts with
the first tenant request, or in gunicorn's ``post_fork``), so it is safe before a fork and
cheap for a one-shot ``flask`` command.
"""

from __future__ import annotations

from flask import Flask

from app import api, cli, errors, hooks, logs, request_log, tracing
from app.json_provider import OrjsonProvider
from app.wiring import build_tenancy
from config import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; ``settings`` default to the ``APP_*`` environment."""
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TESTING=settings.env == "testing",
    )
    errors.init_app(app)
    request_log.init_app(app)
    tracing.init_app(app, settings)  # before any engine exists: it wraps create_engine
    hooks.init_app(app, build_tenancy(settings))
    api.init_app(app)
    cli.init_app(app)
    return app
