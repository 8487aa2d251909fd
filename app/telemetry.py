"""OpenTelemetry wiring for ``APP_TRACING`` (imported only when tracing is on: app/tracing.py).

Spans: one per request (opentelemetry-instrumentation-flask; not for ``/metrics`` and the
probes) and one per statement and connect (opentelemetry-instrumentation-sqlalchemy, without
SQL comments). Each span started inside a request carries ``tenantpool.request_id`` and, once
the tenant has authenticated, ``tenantpool.tenant_id``; the request's span gets both, and the
way it was served (``tenantpool.serving_way``), when it is answered.

Never a secret: every span goes through :class:`ScrubbingSpanProcessor` before any exporter
sees it, which blanks attributes named like a secret (authorization, password, token, key,
signature, cookie) and, in every string (attributes, event attributes such as exception
messages, the status description), SQL string literals, bearer tokens, API keys, URL
passwords and long hex runs (HMAC signatures, keys). The statement text SQLAlchemy traces is
the one the application wrote: a shared connection's signed tenant context is put in front
of it later, by the dialect, so it never reaches a span; a control-plane statement that
carries a role's SCRAM verifier as a literal is blanked by the literal rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, Response, g, has_request_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Status
from opentelemetry.util.types import AttributeValue

__all__ = [
    "ScrubbingSpanProcessor",
    "exporter",
    "instrument_app",
    "instrument_engines",
    "scrub_text",
    "tracer_provider",
]

EXCLUDED_URLS = "/metrics,/healthz,/readyz,/health_check"
"""Not traced: scrapes and probes, the most frequent requests and the least interesting."""
REDACTED = "[redacted]"

_SECRET_NAME = re.compile(
    r"authorization|password|passwd|secret|token|api[_.-]?key|cookie|signature|_sig\b", re.I
)
_SECRET_TEXT = [
    (re.compile(r"'(?:[^']|'')*'"), "'?'"),  # SQL string literals: verifiers, signatures
    (re.compile(r"(?i)\bbearer\s+\S+"), f"Bearer {REDACTED}"),
    (re.compile(r"\btpk_[A-Za-z0-9_-]+"), REDACTED),  # tenant API keys
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.I), rf"\1{REDACTED}@"),
    (re.compile(r"SCRAM-SHA-256\$\S+"), REDACTED),
    (re.compile(r"\b[0-9a-fA-F]{40,}\b"), REDACTED),  # HMAC signatures, keys (not UUIDs)
]


def exporter(mode: str) -> SpanExporter:
    """The exporter of ``APP_TRACING``: OTLP over HTTP (``OTEL_EXPORTER_OTLP_*``) or stdout."""
    if mode == "console":
        return ConsoleSpanExporter()
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"unknown tracing mode {mode!r}")


def tracer_provider(span_exporter: SpanExporter, *, batch: bool = True) -> TracerProvider:
    """A provider whose spans are annotated, scrubbed, then exported (in batches)."""
    service = os.environ.get("OTEL_SERVICE_NAME") or "tenantpool"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(RequestContextProcessor())
    if batch:
        inner: SpanProcessor = BatchSpanProcessor(span_exporter)
    else:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        inner = SimpleSpanProcessor(span_exporter)
    provider.add_span_processor(ScrubbingSpanProcessor(inner))
    return provider


def instrument_engines(provider: TracerProvider) -> None:
    """Trace every engine created from now on (``create_engine`` is wrapped).

    The instrumentation declares SQLAlchemy < 2.1 and would do nothing on our 2.1: the
    engine events it listens to are unchanged in 2.1, and tests/test_tracing.py checks its
    spans on this version, so its dependency check is skipped.
    """
    SQLAlchemyInstrumentor().instrument(
        tracer_provider=provider, enable_commenter=False, skip_dep_check=True
    )


def instrument_app(app: Flask, provider: TracerProvider) -> None:
    """Trace ``app``'s requests; the request span gets the tenant and request ids."""
    # The instrumentation package ships no type information for instrument_app.
    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
        app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS
    )
    app.after_request(_annotate_request_span)


def uninstrument(app: Flask) -> None:
    """Undo both (tests)."""
    FlaskInstrumentor().uninstrument_app(app)  # type: ignore[no-untyped-call]  # untyped too
    SQLAlchemyInstrumentor().uninstrument()


def _annotate_request_span(response: Response) -> Response:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(_request_ids())
        session = g.get("tenant_session")
        if session is not None and "way" in session.info:
            span.set_attribute("tenantpool.serving_way", session.info["way"])
    return response


def _request_ids() -> dict[str, str]:
    ids = {}
    if (request_id := g.get("request_id")) is not None:
        ids["tenantpool.request_id"] = str(request_id)
    if (tenant_id := g.get("tenant_id")) is not None:
        ids["tenantpool.tenant_id"] = str(tenant_id)
    return ids


class RequestContextProcessor(SpanProcessor):
    """Puts the request's ids on every span started while it is served (statements too)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if has_request_context():
            span.set_attributes(_request_ids())


class ScrubbingSpanProcessor(SpanProcessor):
    """Hands ``inner`` a copy of each ended span with every secret blanked."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._inner.on_end(scrubbed(span))

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """A copy of ``span`` without secrets in its attributes, events and status."""
    status = span.status
    if status.description:
        status = Status(status.status_code, scrub_text(status.description))
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_scrub_attributes(span.attributes),
        events=[
            Event(event.name, _scrub_attributes(event.attributes), event.timestamp)
            for event in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _scrub_attributes(attributes: Mapping[str, AttributeValue] | None) -> dict[str, Any]:
    return {key: _scrub_value(key, value) for key, value in (attributes or {}).items()}


def _scrub_value(key: str, value: AttributeValue) -> AttributeValue:
    if _SECRET_NAME.search(key):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Sequence) and value and isinstance(value[0], str):
        return [scrub_text(str(item)) for item in value]
    return value


def scrub_text(text: str) -> str:
    """``text`` with SQL literals, bearer tokens, API keys, URL passwords and hex keys blanked."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text
