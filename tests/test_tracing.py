"""Optional OpenTelemetry traces: ids on the spans, no secret anywhere in them, nothing when off.

Spans are collected with the SDK's in-memory exporter, through the same provider, processors
and instrumentation as ``APP_TRACING`` sets up (app/telemetry.py), on a real database.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import create_app, telemetry
from app.tenancy import tenancy_of
from config import ConfigError, Settings, load_settings
from tests.support import REPO_ROOT, stored_password


@dataclasses.dataclass
class Traced:
    app: Flask
    spans: InMemorySpanExporter
    admin: dict[str, str]

    def collected(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


@pytest.fixture(scope="module", params=["dedicated", "shared"])
def traced(request: pytest.FixtureRequest, settings: Settings, migrated: None) -> Iterator[Traced]:
    """The app in one way of serving, traced as APP_TRACING does, into memory."""
    spans = InMemorySpanExporter()
    provider = telemetry.tracer_provider(spans, batch=False)
    telemetry.instrument_engines(provider)  # before the app's engines exist, as create_app does
    app = create_app(dataclasses.replace(settings, serving=request.param))
    telemetry.instrument_app(app, provider)
    assert settings.admin_token is not None
    yield Traced(app, spans, {"Authorization": f"Bearer {settings.admin_token}"})
    telemetry.uninstrument(app)
    tenancy_of(app).close()
    provider.shutdown()


def _new_tenant(traced: Traced) -> dict[str, Any]:
    client = traced.app.test_client()
    response = client.post(
        "/v1/admin/tenants", json={"name": f"traced-{uuid.uuid4().hex[:10]}"}, headers=traced.admin
    )
    assert response.status_code == 201
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def _headers(tenant: dict[str, Any], request_id: str) -> dict[str, str]:
    return {
        "X-Tenant-ID": tenant["id"],
        "Authorization": f"Bearer {tenant['api_key']}",
        "X-Request-ID": request_id,
    }


def test_tracing_spans_carry_the_tenant_and_the_request_id(
    traced: Traced, settings: Settings
) -> None:
    owner_role = sa.make_url(settings.database_url).username
    tenant = _new_tenant(traced)
    client = traced.app.test_client()
    traced.spans.clear()
    request_id = f"trace-{uuid.uuid4().hex[:12]}"

    created = client.post(
        "/v1/users",
        json={"first_name": "Ada", "last_name": "L"},
        headers=_headers(tenant, request_id),
    )

    assert created.status_code == 201
    [server] = [
        s
        for s in traced.collected()
        if s.kind is trace.SpanKind.SERVER
        and s.attributes.get("tenantpool.request_id") == request_id
    ]
    in_trace = [s for s in traced.collected() if s.context.trace_id == server.context.trace_id]
    statements = [s for s in in_trace if "db.statement" in s.attributes]
    # Statements on the tenant's connection (its role, or the gateway): after it authenticated.
    tenant_statements = [s for s in statements if s.attributes.get("db.user") != owner_role]
    assert server.attributes["tenantpool.tenant_id"] == tenant["id"]
    assert server.attributes["tenantpool.serving_way"] in ("dedicated", "shared")
    assert any("INSERT INTO users" in str(s.attributes["db.statement"]) for s in tenant_statements)
    for span in in_trace:
        assert span.attributes["tenantpool.request_id"] == request_id, span.name
    for statement in tenant_statements:
        assert statement.attributes["tenantpool.tenant_id"] == tenant["id"], statement.name


def _strings(span: ReadableSpan) -> Iterator[str]:
    """Everything of a span an exporter sends, as text."""
    yield span.name
    yield span.status.description or ""
    for attributes in [span.attributes, *(event.attributes for event in span.events)]:
        for key, value in (attributes or {}).items():
            yield key
            yield json.dumps(value) if not isinstance(value, str) else value


def test_tracing_puts_no_secret_in_any_span(traced: Traced, settings: Settings) -> None:
    """A session that handles every kind of secret: none reaches a span."""
    traced.spans.clear()
    tenant = _new_tenant(traced)  # CREATE ROLE with a SCRAM verifier, the API key returned
    client = traced.app.test_client()
    tenancy = tenancy_of(traced.app)
    assert client.get("/v1/products", headers=_headers(tenant, "secret-check-1")).status_code == 200
    wrong = {**_headers(tenant, "secret-check-2"), "Authorization": "Bearer tpk_not-the-key"}
    assert client.get("/v1/products", headers=wrong).status_code == 401
    rotated = client.post(
        f"/v1/admin/tenants/{tenant['id']}/rotate-credentials", headers=traced.admin
    )
    assert rotated.status_code == 200  # ALTER ROLE ... PASSWORD with a new verifier
    assert client.get("/v1/users", headers=_headers(tenant, "secret-check-3")).status_code == 200
    password = stored_password(tenancy.control_engine, tenancy.keyring, uuid.UUID(tenant["id"]))

    text = "\n".join(s for span in traced.collected() for s in _strings(span))

    assert "PASSWORD '?'" in text  # the verifiers' statements were traced, and blanked
    secrets = [tenant["api_key"], password, settings.admin_token, "tpk_not-the-key"]
    secrets += [key.hex() for key in settings.encryption_keys.values()]
    for secret in secrets:
        assert secret not in text
    assert "SCRAM-SHA-256$" not in text
    assert "tenant_sig" not in text  # the shared way's signed context never reaches a span
    assert not any(
        len(run) >= 40
        for run in "".join(c if c in "0123456789abcdef" else " " for c in text.lower()).split()
    )


def test_tracing_scrubs_what_instrumentation_could_capture() -> None:
    """Headers, URLs, statements, exceptions and status: each kind of secret is blanked."""
    spans = InMemorySpanExporter()
    provider = telemetry.tracer_provider(spans, batch=False)
    signature = "ab" * 32
    with provider.get_tracer(__name__).start_as_current_span("request") as span:
        span.set_attribute("http.request.header.authorization", ["Bearer tpk_secret"])
        span.set_attribute("db.statement", "ALTER ROLE \"t_1\" PASSWORD 'SCRAM-SHA-256$64:x$y:z'")
        span.set_attribute("url.full", "postgresql://owner:hunter2@db/tenantpool?key=tpk_abc")
        span.set_attribute("db.user", "t_0123456789abcdef0123456789abcdef")
        span.record_exception(
            RuntimeError(f"LINE 1: SELECT set_config('app.tenant_sig', '{signature}'")
        )
        span.set_status(trace.StatusCode.ERROR, f"failed with sig {signature}")

    [exported] = spans.get_finished_spans()
    text = "\n".join(_strings(exported))
    for secret in ("tpk_secret", "SCRAM-SHA-256", "hunter2", "tpk_abc", signature):
        assert secret not in text
    assert exported.attributes["db.user"] == "t_0123456789abcdef0123456789abcdef"  # not secret
    assert exported.attributes["http.request.header.authorization"] == telemetry.REDACTED


def test_tracing_off_loads_nothing_of_opentelemetry(
    app_env: dict[str, str], migrated: None
) -> None:
    """The default: the app is built without importing OpenTelemetry, so nothing wraps it."""
    code = (
        "import sys, flask, sqlalchemy; from app import create_app; app = create_app(); "
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry')); "
        "print(loaded, hasattr(app, '_original_wsgi_app'), "
        "type(sqlalchemy.create_engine).__name__)"
    )
    env = {**os.environ, **app_env}
    env.pop("APP_TRACING", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.strip() == "[] False function"  # not a wrapt wrapper


def test_tracing_setting_is_checked(app_env: dict[str, str]) -> None:
    assert load_settings(app_env).tracing == "off"
    assert load_settings({**app_env, "APP_TRACING": "otlp"}).tracing == "otlp"
    with pytest.raises(ConfigError, match="APP_TRACING"):
        load_settings({**app_env, "APP_TRACING": "jaeger"})


def test_tracing_exporters_by_mode() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    assert isinstance(telemetry.exporter("console"), ConsoleSpanExporter)
    assert isinstance(telemetry.exporter("otlp"), OTLPSpanExporter)
