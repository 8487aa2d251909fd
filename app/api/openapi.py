"""``/openapi.json``: OpenAPI 3 generated from the marshmallow schemas by apispec."""

from __future__ import annotations

import decimal
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify
from marshmallow import fields

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

_UUID = {"type": "string", "format": "uuid"}
_TENANT_HEADERS = [
    {
        "in": "header",
        "name": "X-Tenant-ID",
        "required": False,
        "schema": _UUID,
        "description": "The tenant the request is for. Required with an API key (whose "
        "tenant it must be); optional with an end user's JWT, whose tenant claim it must "
        "then equal.",
    }
]
# Read-your-writes, as a reusable parameter (components.parameters.ConsistencyToken) that
# every read accepts: declared there rather than on each operation, because schemathesis
# then counts the fuzz tests' real Authorization header as generated ("ignored auth").
_CONSISTENCY_TOKEN_PARAMETER = {
    "name": "X-Consistency-Token",
    "required": False,
    "schema": {"type": "string", "pattern": r"^1\.[0-9a-f]{16}\.[0-9a-f]{8}$"},
    "description": "Read-your-writes: the X-Consistency-Token of a write's response, "
    "sent back as-is on a read, which is then answered only by a server that has that "
    "write (a caught-up read replica, else the primary). Opaque; a malformed one is a "
    "400. Without it a read may be served by a replica behind by at most "
    "APP_REPLICA_MAX_LAG seconds.",
}
_CONSISTENCY_TOKEN = {
    "X-Consistency-Token": {
        "description": "The position of what this write committed; send it back on reads "
        "that must see it (opaque)",
        "schema": {"type": "string"},
    }
}
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
_RECORD_ID = {"in": "path", "name": "record_id", "required": True, "schema": _UUID}
_NEXT_LINK = {
    "description": '`<same list, after=<cursor>>; rel="next"` when more rows may follow',
    "schema": {"type": "string"},
}
_TENANT_ID = {"in": "path", "name": "tenant_id", "required": True, "schema": _UUID}
_IDEMPOTENCY_KEY = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Makes a retry safe (IETF httpapi-idempotency-key-header): the same key "
    "with the same request within APP_IDEMPOTENCY_TTL (default 24 h) gets the first answer "
    "again, with Idempotent-Replayed: true, and changes nothing. 1 to 255 printable ASCII "
    "characters other than double quote, backslash and comma (the draft's quoted form, "
    '"<key>", is the same key); per tenant and end user; 409 while the first request with '
    "it runs, 422 when it was used with another request. "
    "Only successful answers are kept: a failed write may be retried with its key.",
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
_WRITE_HEADERS = {**_REPLAYED, **_CONSISTENCY_TOKEN}
_ADMIN_OPERATION = {"tags": ["admin"], "security": [{"adminToken": []}]}
_ADMIN_TENANT_OPERATION = {**_ADMIN_OPERATION, "parameters": [_TENANT_ID]}
# POST /v1/admin/tenants/{tenant_id}/<action>: (response schema, summary).
_ADMIN_ACTIONS = {
    "rotate-credentials": ("Tenant", "New database password, online"),
    "rotate-api-key": ("TenantWithKey", "New API key, in this response only"),
    "suspend": ("Tenant", "Refuse its requests (403); keep its data"),
    "resume": ("Tenant", "Serve it again"),
}


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
    spec.components.schema("Problem", _PROBLEM_SCHEMA)
    spec.components.parameter("ConsistencyToken", "header", _CONSISTENCY_TOKEN_PARAMETER)
    return spec


def _error_responses() -> dict[str, Any]:
    """The error responses every operation may give, by status code."""
    errors: dict[str, Any] = {
        str(code): {"description": "problem", "content": _PROBLEM}
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
            "content": _PROBLEM,
        },
        "422": {
            "description": "problem: invalid fields (validation_failed), or this "
            "Idempotency-Key was used with another request (idempotency_key_reused)",
            "content": _PROBLEM,
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
                "parameters": [*_TENANT_HEADERS, {"in": "query", "schema": type(resource.query)}],
                "responses": {
                    "200": {
                        "description": "a page",
                        "headers": {"Link": _NEXT_LINK},
                        **_json(f"{title}Page"),
                    },
                    **errors,
                },
            },
            "post": {
                **common,
                "operationId": f"create_{resource.name}{_suffix(prefix)}",
                "parameters": [*_TENANT_HEADERS, _IDEMPOTENCY_KEY],
                "requestBody": {"required": True, **_json(f"{title}Create")},
                "responses": {
                    "201": {"description": "created", "headers": _WRITE_HEADERS, **_json(title)},
                    **_write_errors(errors),
                },
            },
        },
    )


def _add_item_path(spec: APISpec, resource: Resource, prefix: str, errors: dict[str, Any]) -> None:
    """``prefix/{record_id}``: get, patch and delete one record."""
    title = resource.title
    item = {**_tenant_operation(resource), "parameters": [*_TENANT_HEADERS, _RECORD_ID]}
    write = {**item, "parameters": [*_TENANT_HEADERS, _RECORD_ID, _IDEMPOTENCY_KEY]}
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
                    "200": {"description": "updated", "headers": _WRITE_HEADERS, **_json(title)},
                    **_write_errors(errors),
                },
            },
            "delete": {
                **write,
                "operationId": f"delete_{resource.name}{_suffix(prefix)}",
                "responses": {
                    "204": {"description": "deleted", "headers": _WRITE_HEADERS},
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
        "parameters": _TENANT_HEADERS,
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
                **_ADMIN_TENANT_OPERATION,
                **_ok("200", "TenantStats", "the tenant across the workers", errors),
                "summary": "Its engines, connections, requests and logins in every worker",
                "operationId": "admin_tenant_stats",
            }
        },
    )


def _add_admin_collection_path(spec: APISpec, errors: dict[str, Any]) -> None:
    """``/v1/admin/tenants``: list tenants, create one (409 when it exists)."""
    admin_errors = {**errors, "409": {"description": "problem", "content": _PROBLEM}}
    spec.path(
        path="/v1/admin/tenants",
        operations={
            "get": {
                **_ADMIN_OPERATION,
                **_ok("200", "TenantPage", "a page of tenants, oldest first", errors),
                "operationId": "admin_list_tenants",
                "parameters": [{"in": "query", "schema": TenantListQuerySchema}],
            },
            "post": {
                **_ADMIN_OPERATION,
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
                **_ADMIN_TENANT_OPERATION,
                **_ok("200", "Tenant", "the tenant", errors),
                "operationId": "admin_get_tenant",
            },
            "delete": {
                **_ADMIN_TENANT_OPERATION,
                "operationId": "admin_delete_tenant",
                "summary": "End its sessions, drop its role, delete its rows and secret",
                "responses": {
                    "204": {"description": "deleted", "headers": _CONSISTENCY_TOKEN},
                    **errors,
                },
            },
        },
    )


def _add_admin_action_paths(spec: APISpec, errors: dict[str, Any]) -> None:
    """``/v1/admin/tenants/{tenant_id}/<action>``: one POST per lifecycle action."""
    for action, (schema, summary) in _ADMIN_ACTIONS.items():
        spec.path(
            path=f"/v1/admin/tenants/{{tenant_id}}/{action}",
            operations={
                "post": {
                    **_ADMIN_TENANT_OPERATION,
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
                        "503": {"description": "not ready", "content": _PROBLEM},
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
