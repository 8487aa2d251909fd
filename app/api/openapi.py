"""``/openapi.json``: OpenAPI 3 generated from the marshmallow schemas by apispec."""

from __future__ import annotations

import decimal
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify
from marshmallow import fields

from app.api.openapi_parts import (
    ADMIN_ACTIONS,
    ADMIN_OPERATION,
    ADMIN_TENANT_OPERATION,
    CONSISTENCY_TOKEN,
    CONSISTENCY_TOKEN_PARAMETER,
    IDEMPOTENCY_KEY,
    NEXT_LINK,
    PROBLEM,
    PROBLEM_SCHEMA,
    RECORD_ID,
    TENANT_HEADERS,
    WRITE_HEADERS,
)
from app.api.resource import Resource
from app.schemas.common import ColumnList
from app.schemas.stats import TenantStatsSchema
from app.schemas.tenants import (
    TenantCreateSchema,
    TenantListQuerySchema,
    TenantPageSchema,
    TenantSchema,
    TenantWithKeySchema,
)


def build_spec(resources: list[tuple[Resource, str]]) -> dict[str, Any]:
    """The OpenAPI document of ``resources`` mounted at their URL prefixes."""
    spec = _new_spec()
    errors = _error_responses()
    seen: set[str] = set()
    for resource, prefix in resources:
        if resource.title not in seen:  # a resource mounted twice is described once
            _add_resource_schemas(spec, resource)
            seen.add(resource.title)
        _add_collection_path(spec, resource, prefix, errors)
        _add_item_path(spec, resource, prefix, errors)
    _add_admin_paths(spec, errors)
    _add_health_paths(spec)
    return spec.to_dict()


def _new_spec() -> APISpec:
    """An empty document whose marshmallow plugin knows our fields, with the shared components."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="tenantpool",
        version="1",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Multi-tenant REST API; every tenant isolated by PostgreSQL RLS."},
    )
    # apispec ships these methods untyped; they map our custom field to a plain string and
    # describe what apispec cannot see by itself.
    plugin.map_to_openapi_type(ColumnList, "string", None)  # type: ignore[no-untyped-call]
    if plugin.converter is None:  # pragma: no cover - APISpec() initialised the plugin
        raise RuntimeError("the marshmallow plugin has no converter; register it first")
    plugin.converter.add_attribute_function(_exact_property)  # type: ignore[no-untyped-call]
    spec.components.security_scheme(
        "apiKey",
        {"type": "http", "scheme": "bearer", "description": "The tenant's API key (tpk_...)."},
    )
    spec.components.security_scheme(
        "endUserJwt",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An end user's token from the identity provider (APP_JWT_*): the "
            "tenant in its tenant claim, the user in sub, their roles in the roles claim.",
        },
    )
    spec.components.schema("Problem", PROBLEM_SCHEMA)
    spec.components.parameter("ConsistencyToken", "header", CONSISTENCY_TOKEN_PARAMETER)
    return spec


def _error_responses() -> dict[str, Any]:
    """The error responses every operation may give, by status code."""
    errors: dict[str, Any] = {
        str(code): {"description": "problem", "content": PROBLEM}
        for code in (400, 401, 403, 404, 413, 415, 422, 429, 503)
    }
    # Refused by gunicorn before the app sees the request, so with gunicorn's HTML body.
    errors["414"] = {"description": "request line too long (gunicorn limit_request_line)"}
    errors["431"] = {"description": "header fields too large (gunicorn limit_request_field*)"}
    return errors


def _write_errors(errors: dict[str, Any]) -> dict[str, Any]:
    """The error responses of a tenant write: ``errors``, and those of ``Idempotency-Key``."""
    return {
        **errors,
        "409": {
            "description": "problem: a record with these values exists already (conflict), or "
            "the first request with this Idempotency-Key is still running "
            "(idempotency_key_in_use: retry once it has answered)",
            "content": PROBLEM,
        },
        "422": {
            "description": "problem: invalid fields (validation_failed), or this "
            "Idempotency-Key was used with another request (idempotency_key_reused)",
            "content": PROBLEM,
        },
    }


def _add_resource_schemas(spec: APISpec, resource: Resource) -> None:
    title = resource.title
    spec.components.schema(title, schema=type(resource.output))
    spec.components.schema(f"{title}Create", schema=type(resource.create))
    spec.components.schema(f"{title}Patch", schema=type(resource.patch))
    spec.components.schema(f"{title}Page", schema=resource.page)


def _add_collection_path(
    spec: APISpec, resource: Resource, prefix: str, errors: dict[str, Any]
) -> None:
    """``prefix``: list a page of records, create one."""
    title, common = resource.title, _tenant_operation(resource)
    spec.path(
        path=prefix,
        operations={
            "get": {
                **common,
                "operationId": f"list_{resource.name}{_suffix(prefix)}",
                "parameters": [*TENANT_HEADERS, {"in": "query", "schema": type(resource.query)}],
                "responses": {
                    "200": {
                        "description": "a page",
                        "headers": {"Link": NEXT_LINK},
                        **_json(f"{title}Page"),
                    },
                    **errors,
                },
            },
            "post": {
                **common,
                "operationId": f"create_{resource.name}{_suffix(prefix)}",
                "parameters": [*TENANT_HEADERS, IDEMPOTENCY_KEY],
                "requestBody": {"required": True, **_json(f"{title}Create")},
                "responses": {
                    "201": {"description": "created", "headers": WRITE_HEADERS, **_json(title)},
                    **_write_errors(errors),
                },
            },
        },
    )


def _add_item_path(spec: APISpec, resource: Resource, prefix: str, errors: dict[str, Any]) -> None:
    """``prefix/{record_id}``: get, patch and delete one record."""
    title = resource.title
    item = {**_tenant_operation(resource), "parameters": [*TENANT_HEADERS, RECORD_ID]}
    write = {**item, "parameters": [*TENANT_HEADERS, RECORD_ID, IDEMPOTENCY_KEY]}
    spec.path(
        path=f"{prefix}/{{record_id}}",
        operations={
            "get": {
                **item,
                "operationId": f"get_{resource.name}{_suffix(prefix)}",
                "responses": {"200": {"description": "found", **_json(title)}, **errors},
            },
            "patch": {
                **write,
                "operationId": f"patch_{resource.name}{_suffix(prefix)}",
                "requestBody": {"required": True, **_json(f"{title}Patch")},
                "responses": {
                    "200": {"description": "updated", "headers": WRITE_HEADERS, **_json(title)},
                    **_write_errors(errors),
                },
            },
            "delete": {
                **write,
                "operationId": f"delete_{resource.name}{_suffix(prefix)}",
                "responses": {
                    "204": {"description": "deleted", "headers": WRITE_HEADERS},
                    **_write_errors(errors),
                },
            },
        },
    )


def _tenant_operation(resource: Resource) -> dict[str, Any]:
    """What every operation on a tenant's resource shares: its tag, credentials, tenant header."""
    return {
        "tags": [resource.name],
        "security": [{"apiKey": []}, {"endUserJwt": []}],
        "parameters": TENANT_HEADERS,
    }


def _add_admin_paths(spec: APISpec, errors: dict[str, Any]) -> None:
    """``/v1/admin/tenants``: admin token instead of tenant headers; see app/api/admin.py."""
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Tenant", schema=TenantSchema)
    spec.components.schema("TenantWithKey", schema=TenantWithKeySchema)
    spec.components.schema("TenantCreate", schema=TenantCreateSchema)
    spec.components.schema("TenantPage", schema=TenantPageSchema)
    spec.components.schema("TenantStats", schema=TenantStatsSchema)
    _add_admin_collection_path(spec, errors)
    _add_admin_tenant_path(spec, errors)
    _add_admin_action_paths(spec, errors)
    spec.path(
        path="/v1/admin/tenants/{tenant_id}/stats",
        operations={
            "get": {
                **ADMIN_TENANT_OPERATION,
                **_ok("200", "TenantStats", "the tenant across the workers", errors),
                "summary": "Its engines, connections, requests and logins in every worker",
                "operationId": "admin_tenant_stats",
            }
        },
    )


def _add_admin_collection_path(spec: APISpec, errors: dict[str, Any]) -> None:
    """``/v1/admin/tenants``: list tenants, create one (409 when it exists)."""
    admin_errors = {**errors, "409": {"description": "problem", "content": PROBLEM}}
    spec.path(
        path="/v1/admin/tenants",
        operations={
            "get": {
                **ADMIN_OPERATION,
                **_ok("200", "TenantPage", "a page of tenants, oldest first", errors),
                "operationId": "admin_list_tenants",
                "parameters": [{"in": "query", "schema": TenantListQuerySchema}],
            },
            "post": {
                **ADMIN_OPERATION,
                "operationId": "admin_create_tenant",
                "summary": "Create a tenant; its API key is in this response only",
                "requestBody": {"required": True, **_json("TenantCreate")},
                "responses": {
                    "201": {"description": "created", **_json("TenantWithKey")},
                    **admin_errors,
                },
            },
        },
    )


def _add_admin_tenant_path(spec: APISpec, errors: dict[str, Any]) -> None:
    """``/v1/admin/tenants/{tenant_id}``: get one tenant, delete it."""
    spec.path(
        path="/v1/admin/tenants/{tenant_id}",
        operations={
            "get": {
                **ADMIN_TENANT_OPERATION,
                **_ok("200", "Tenant", "the tenant", errors),
                "operationId": "admin_get_tenant",
            },
            "delete": {
                **ADMIN_TENANT_OPERATION,
                "operationId": "admin_delete_tenant",
                "summary": "End its sessions, drop its role, delete its rows and secret",
                "responses": {
                    "204": {"description": "deleted", "headers": CONSISTENCY_TOKEN},
                    **errors,
                },
            },
        },
    )


def _add_admin_action_paths(spec: APISpec, errors: dict[str, Any]) -> None:
    """``/v1/admin/tenants/{tenant_id}/<action>``: one POST per lifecycle action."""
    for action, (schema, summary) in ADMIN_ACTIONS.items():
        spec.path(
            path=f"/v1/admin/tenants/{{tenant_id}}/{action}",
            operations={
                "post": {
                    **ADMIN_TENANT_OPERATION,
                    **_ok("200", schema, "done", errors),
                    "summary": summary,
                    "operationId": f"admin_{action.replace('-', '_')}",
                }
            },
        )


def _add_health_paths(spec: APISpec) -> None:
    """The probes: no tenant, no token; 503 with a problem body when not ready."""
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
                        "503": {"description": "not ready", "content": PROBLEM},
                    },
                }
            },
        )


def _ok(status: str, schema: str, description: str, errors: dict[str, Any]) -> dict[str, Any]:
    """The ``responses`` of an operation answering ``schema`` as JSON, or one of ``errors``."""
    return {"responses": {status: {"description": description, **_json(schema)}, **errors}}


def _json(schema: str) -> dict[str, Any]:
    """A ``content`` of ``schema`` (a component name) as JSON, for a body or a response."""
    return {"content": {"application/json": {"schema": schema}}}


def _exact_property(converter: object, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """What apispec gets wrong or leaves out for some fields (an apispec attribute function).

    Decimal bounds become JSON numbers (apispec passes Decimal objects through, which the
    JSON encoder turns into strings, an invalid schema); a decimal dumped as a string is a
    string; a column list names its columns.
    """
    ret: dict[str, Any] = kwargs["ret"]
    extra: dict[str, Any] = {
        key: float(value)
        for key, value in ret.items()
        if isinstance(value, decimal.Decimal) and key in ("minimum", "maximum")
    }
    if isinstance(field, fields.Decimal) and field.as_string:
        extra.update(type="string", pattern=r"^-?[0-9]+(\.[0-9]+)?$")
    if isinstance(field, ColumnList):
        names = "|".join(field.choices)
        extra["pattern"] = f"^({names})(,({names}))*$"
    return extra


def _suffix(prefix: str) -> str:
    return "_internal" if "/internal/" in prefix else ""


def make_blueprint(resources: list[tuple[Resource, str]]) -> Blueprint:
    bp = Blueprint("openapi", __name__)
    document = build_spec(resources)

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)

    return bp
