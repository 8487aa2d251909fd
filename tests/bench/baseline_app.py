"""The bare baseline: the same list query and JSON shape as ``GET /v1/users``, no tenancy.

Written apart from the service on purpose (no shared code), so that the benchmark compares
the service with what a plain app would do.

One engine (one pool, one role), no authentication, no per-tenant roles, no RLS: what a
plain Flask + SQLAlchemy app answering the same request would do. ``X-Tenant-ID`` only
picks the rows (a plain ``WHERE tenant_id = ...`` on an indexed column), so both apps read
the same amount of data. Served by gunicorn with the service's settings
(``tests/bench/baseline_gunicorn.py``); ``BASELINE_DATABASE_URL`` names the database.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, jsonify, request

metadata = sa.MetaData()
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.func.gen_random_uuid()),
    sa.Column("tenant_id", sa.Uuid, nullable=False),
    sa.Column("first_name", sa.String(50), nullable=False),
    sa.Column("last_name", sa.String(50), nullable=False),
    sa.Column("email", sa.String(254)),
    sa.Column("confirmed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Index("ix_users_tenant_id_created_at", "tenant_id", "created_at"),
)
FIELDS = ("id", "first_name", "last_name", "email", "confirmed", "created_at", "updated_at")


def _record(row: sa.Row) -> dict[str, object]:
    # Flask's JSON provider writes datetimes as HTTP dates; the service writes ISO 8601.
    return {
        "id": str(row.id),
        "first_name": row.first_name,
        "last_name": row.last_name,
        "email": row.email,
        "confirmed": row.confirmed,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def create_app(database_url: str | None = None) -> Flask:
    """The baseline app on ``database_url`` (default: ``BASELINE_DATABASE_URL``)."""
    engine = sa.create_engine(
        database_url or os.environ["BASELINE_DATABASE_URL"],
        pool_size=int(os.environ.get("APP_THREADS", "4")),
        pool_pre_ping=True,
        connect_args={"application_name": f"baseline:{os.getpid()}"},
    )
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/v1/users")
    def list_users() -> Response:
        tenant_id = uuid.UUID(request.headers["X-Tenant-ID"])
        page = request.args.get("page", 1, type=int)
        size = request.args.get("page_size", 10, type=int)
        mine = users.c.tenant_id == tenant_id
        # The service's query: the page and a window count in one statement.
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(*(users.c[name] for name in FIELDS), sa.func.count().over())
                .where(mine)
                .order_by(users.c.created_at, users.c.id)
                .limit(size)
                .offset((page - 1) * size)
            ).all()
            if rows or page == 1:
                total = rows[0][-1] if rows else 0
            else:
                total = connection.scalar(sa.select(sa.func.count()).select_from(users).where(mine))
        return jsonify(
            records=[_record(row) for row in rows],
            page=page,
            page_size=size,
            total=total,
            total_pages=math.ceil(total / size),
        )

    @app.post("/v1/users")
    def create_user() -> tuple[Response, int]:
        body = request.get_json()
        values = {
            "tenant_id": uuid.UUID(request.headers["X-Tenant-ID"]),
            "first_name": body["first_name"],
            "last_name": body["last_name"],
            "email": body.get("email"),
            "confirmed": bool(body.get("confirmed", False)),
        }
        with engine.begin() as connection:
            row = connection.execute(
                sa.insert(users).values(**values).returning(*(users.c[name] for name in FIELDS))
            ).one()
        return jsonify(_record(row)), 201

    return app


def setup_schema(connection: sa.Connection) -> None:
    """Create the baseline table (idempotent)."""
    metadata.create_all(connection)


def insert_users(connection: sa.Connection, records: dict[str, list[dict[str, Any]]]) -> None:
    """Insert records as ``GET /v1/users`` answers them, by tenant id, ids and times kept."""
    rows = [
        {
            **{name: record[name] for name in FIELDS},
            "tenant_id": uuid.UUID(tenant_id),
            "id": uuid.UUID(record["id"]),
            "created_at": dt.datetime.fromisoformat(record["created_at"]),
            "updated_at": dt.datetime.fromisoformat(record["updated_at"]),
        }
        for tenant_id, tenant_records in records.items()
        for record in tenant_records
    ]
    if rows:
        connection.execute(sa.insert(users), rows)
