"""``/openapi.json``: OpenAPI 3 generated from the marshmallow schemas by apispec."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from app.api.resource import Resource
from app.schemas.common import ColumnList

_TENANT_HEADERS = [
    {
        "in": "header",
        "name": "X-Tenant-ID",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
        "description": "The tenant the request is for; must match the API key.",
    }
]
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string", "nullable": True},
        "errors": {"type": "object"},
    },
}


def build_spec(resources: list[tuple[Resource, str]]) -> dict[str, Any]:
    """The OpenAPI document of ``resources`` mounted at their URL prefixes."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="tenantpool",
        version="1",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Multi-tenant REST API; every tenant isolated by PostgreSQL RLS."},
    )
    # apispec ships this method untyped; it maps our custom field to a plain string.
    plugin.map_to_openapi_type(ColumnList, "string", None)  # type: ignore[no-untyped-call]
    spec.components.security_scheme("apiKey", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Problem", _PROBLEM_SCHEMA)
    errors = {
        str(code): {"description": "problem", "content": _PROBLEM}
        for code in (400, 401, 403, 404, 415, 422, 503)
    }
    seen: set[str] = set()
    for resource, prefix in resources:
        title = resource.title
        if title not in seen:
            spec.components.schema(title, schema=type(resource.output))
            spec.components.schema(f"{title}Create", schema=type(resource.create))
            spec.components.schema(f"{title}Patch", schema=type(resource.patch))
            spec.components.schema(f"{title}Page", schema=resource.page)
            seen.add(title)
        common = {
            "tags": [resource.name],
            "security": [{"apiKey": []}],
            "parameters": _TENANT_HEADERS,
        }
        one = {"content": {"application/json": {"schema": title}}}
        spec.path(
            path=prefix,
            operations={
                "get": {
                    **common,
                    "operationId": f"list_{resource.name}{_suffix(prefix)}",
                    "parameters": [
                        *_TENANT_HEADERS,
                        {"in": "query", "schema": type(resource.query)},
                    ],
                    "responses": {
                        "200": {
                            "description": "a page",
                            "content": {"application/json": {"schema": f"{title}Page"}},
                        },
                        **errors,
                    },
                },
                "post": {
                    **common,
                    "operationId": f"create_{resource.name}{_suffix(prefix)}",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": f"{title}Create"}},
                    },
                    "responses": {"201": {"description": "created", **one}, **errors},
                },
            },
        )
        id_param = {
            "in": "path",
            "name": "record_id",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
        item = {**common, "parameters": [*_TENANT_HEADERS, id_param]}
        spec.path(
            path=f"{prefix}/{{record_id}}",
            operations={
                "get": {
                    **item,
                    "operationId": f"get_{resource.name}{_suffix(prefix)}",
                    "responses": {"200": {"description": "found", **one}, **errors},
                },
                "patch": {
                    **item,
                    "operationId": f"patch_{resource.name}{_suffix(prefix)}",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": f"{title}Patch"}},
                    },
                    "responses": {"200": {"description": "updated", **one}, **errors},
                },
                "delete": {
                    **item,
                    "operationId": f"delete_{resource.name}{_suffix(prefix)}",
                    "responses": {"204": {"description": "deleted"}, **errors},
                },
            },
        )
    for path, summary in (
        ("/healthz", "alive"),
        ("/readyz", "control plane reachable"),
        ("/health_check", "template health check"),
    ):
        spec.path(
            path=path,
            operations={
                "get": {
                    "summary": summary,
                    "responses": {
                        "200": {"description": "ok"},
                        "503": {"description": "not ready", "content": _PROBLEM},
                    },
                }
            },
        )
    return spec.to_dict()


def _suffix(prefix: str) -> str:
    return "_internal" if "/internal/" in prefix else ""


def make_blueprint(resources: list[tuple[Resource, str]]) -> Blueprint:
    bp = Blueprint("openapi", __name__)
    document = build_spec(resources)

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)

    return bp
