"""Optional OpenTelemetry traces: ``APP_TRACING=otlp|console``; ``off`` (the default) costs nothing.

Off, this module returns before importing anything of OpenTelemetry: no WSGI wrapper, no
request hook, no engine listener is added, so the request path is exactly what it is without
tracing (the benchmark's default runs measure it so). On, ``app.telemetry`` traces each
request (Flask) and each statement (SQLAlchemy) with the tenant id and request id on them,
and scrubs secrets from every span before it is exported; see that module.

``init_app`` must run before any engine is created (``create_app`` calls it before building
the tenancy): SQLAlchemy is instrumented by wrapping ``create_engine``.
"""

from __future__ import annotations

from flask import Flask

from config import Settings


def init_app(app: Flask, settings: Settings) -> None:
    """Trace ``app`` as ``APP_TRACING`` says; nothing at all when it is ``off``."""
    if settings.tracing == "off":
        return
    # Imported here so that a service with tracing off never loads OpenTelemetry.
    from app import telemetry

    provider = telemetry.tracer_provider(telemetry.exporter(settings.tracing))
    telemetry.instrument_engines(provider)
    telemetry.instrument_app(app, provider)
