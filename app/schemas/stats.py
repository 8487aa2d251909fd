"""The per-tenant view (``GET /v1/admin/tenants/<id>/stats``): its shape, for the OpenAPI
document and for dumping (only these fields leave the service)."""

from __future__ import annotations

from marshmallow import Schema, fields

_WAYS = ["dedicated", "shared"]


class _TenantRefSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    status = fields.String()
    cluster = fields.String()


class _ConnectionsSchema(Schema):
    dedicated_open = fields.Integer(
        metadata={"description": "Connections of its own engine's pool: in use and idle."}
    )
    dedicated_in_use = fields.Integer(metadata={"description": "Of those, checked out now."})
    shared_in_use = fields.Integer(
        metadata={"description": "Gateway connections its requests hold now."}
    )


class _RecentTotalsSchema(Schema):
    requests = fields.Integer()
    client_errors = fields.Integer(metadata={"description": "Answers 400-499."})
    server_errors = fields.Integer(metadata={"description": "Answers 500-599, or none."})
    dedicated = fields.Integer(metadata={"description": "Requests served on its own engine."})
    shared = fields.Integer(metadata={"description": "Requests served on gateway connections."})
    pool_wait_seconds = fields.Float(
        metadata={"description": "Time its requests waited for a connection, summed."}
    )


class _RecentSchema(_RecentTotalsSchema):
    since = fields.String(metadata={"description": "Start of the span counted (ISO 8601)."})


class _WorkerSchema(Schema):
    pid = fields.Integer()
    way = fields.String(
        metadata={"enum": _WAYS, "description": "How this worker serves it right now."}
    )
    engine = fields.Boolean(metadata={"description": "This worker holds an engine for it."})
    connections = fields.Nested(_ConnectionsSchema)
    in_flight = fields.Integer()
    last_request_at = fields.String(allow_none=True)
    last_login_at = fields.String(
        allow_none=True,
        metadata={"description": "Last new connection as its role in this worker."},
    )
    login_failures = fields.Integer(metadata={"description": "Rejected logins in a row."})
    login_retry_in = fields.Float(metadata={"description": "Seconds of login back-off left."})
    recent = fields.Nested(_RecentSchema)


class _TotalsSchema(Schema):
    workers = fields.Integer()
    engines = fields.Integer()
    in_flight = fields.Integer()
    connections = fields.Nested(_ConnectionsSchema)
    recent = fields.Nested(_RecentTotalsSchema)
    last_request_at = fields.String(allow_none=True)
    last_login_at = fields.String(allow_none=True)


class _BackendsSchema(Schema):
    pid = fields.Integer()
    connections = fields.Integer()


class _DatabaseSchema(Schema):
    cluster = fields.String()
    connections = fields.Integer(
        allow_none=True,
        metadata={"description": "Backends whose application_name names the tenant."},
    )
    by_worker = fields.List(fields.Nested(_BackendsSchema))
    note = fields.String(
        allow_none=True, metadata={"description": "Why the server could not be asked."}
    )


class TenantStatsSchema(Schema):
    """One tenant across the workers of the answering service, and on its database server."""

    tenant = fields.Nested(_TenantRefSchema)
    serving = fields.String(metadata={"enum": ["dedicated", "shared", "mix"]})
    as_of = fields.String()
    workers = fields.List(fields.Nested(_WorkerSchema))
    unanswered_workers = fields.List(
        fields.Integer(), metadata={"description": "Worker pids that did not answer in time."}
    )
    totals = fields.Nested(_TotalsSchema)
    database = fields.Nested(_DatabaseSchema)
