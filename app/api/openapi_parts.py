"""The pieces of the OpenAPI document that every path shares: headers, parameters, problems.

Kept apart from ``openapi.py``, which assembles the document from them and the schemas.
"""

from __future__ import annotations

UUID = {"type": "string", "format": "uuid"}
TENANT_HEADERS = [
    {
        "in": "header",
        "name": "X-Tenant-ID",
        "required": False,
        "schema": UUID,
        "description": "The tenant the request is for. Required with an API key (whose "
        "tenant it must be); optional with an end user's JWT, whose tenant claim it must "
        "then equal.",
    }
]
# Read-your-writes, as a reusable parameter (components.parameters.ConsistencyToken) that
# every read accepts: declared there rather than on each operation, because schemathesis
# then counts the fuzz tests' real Authorization header as generated ("ignored auth").
CONSISTENCY_TOKEN_PARAMETER = {
    "name": "X-Consistency-Token",
    "required": False,
    "schema": {"type": "string", "pattern": r"^1\.[0-9a-f]{16}\.[0-9a-f]{8}$"},
    "description": "Read-your-writes: the X-Consistency-Token of a write's response, "
    "sent back as-is on a read, which is then answered only by a server that has that "
    "write (a caught-up read replica, else the primary). Opaque; a malformed one is a "
    "400. Without it a read may be served by a replica behind by at most "
    "APP_REPLICA_MAX_LAG seconds.",
}
CONSISTENCY_TOKEN = {
    "X-Consistency-Token": {
        "description": "The position of what this write committed; send it back on reads "
        "that must see it (opaque)",
        "schema": {"type": "string"},
    }
}
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
PROBLEM_SCHEMA = {
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
RECORD_ID = {"in": "path", "name": "record_id", "required": True, "schema": UUID}
NEXT_LINK = {
    "description": '`<same list, after=<cursor>>; rel="next"` when more rows may follow',
    "schema": {"type": "string"},
}
TENANT_ID = {"in": "path", "name": "tenant_id", "required": True, "schema": UUID}
IDEMPOTENCY_KEY = {
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
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
WRITE_HEADERS = {**REPLAYED, **CONSISTENCY_TOKEN}
ADMIN_OPERATION = {"tags": ["admin"], "security": [{"adminToken": []}]}
ADMIN_TENANT_OPERATION = {**ADMIN_OPERATION, "parameters": [TENANT_ID]}
# POST /v1/admin/tenants/{tenant_id}/<action>: (response schema, summary).
ADMIN_ACTIONS = {
    "rotate-credentials": ("Tenant", "New database password, online"),
    "rotate-api-key": ("TenantWithKey", "New API key, in this response only"),
    "suspend": ("Tenant", "Refuse its requests (403); keep its data"),
    "resume": ("Tenant", "Serve it again"),
}
