"""One tenant-scoped REST resource: list, create, get, patch, delete.

Users and products differ only in their model and schemas, so both are made here. The
views never filter by tenant: RLS does, on the tenant's own connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request, url_for
from marshmallow import Schema

from app.api.body import json_object, page_response, query_args
from app.api.cursor import Cursor
from app.api.list_shapes import ListShape
from app.api.listing import ListStatements
from app.errors import NotFound
from app.hooks import require_tenant, tenant_session
from app.idempotency import acknowledge
from app.models.scoped import TenantScoped
from app.schemas.common import ListQuerySchema, PageSchema, dumper, row_dumper

__all__ = ["ListShape", "ListStatements", "Resource", "make_blueprint"]


@dataclass(frozen=True)
class Resource:
    """A model and its schemas; ``filters`` are query fields compared for equality.

    ``name`` is the plural of the URL (``/v1/<name>``) and the OpenAPI tag, ``title`` the
    singular of the OpenAPI schema names (``<title>``, ``<title>Create``...) and of the
    messages ("no such user"). Declared, never derived: "status" is not a plural.
    app/api mounts every Resource declared in one of its modules (app/api/__init__.py).
    """

    name: str
    title: str
    model: type[TenantScoped]
    output: Schema
    create: Schema
    patch: Schema
    query: ListQuerySchema
    page: type[PageSchema]
    filters: tuple[str, ...] = ()


def make_blueprint(resource: Resource) -> Blueprint:
    """The blueprint of ``resource``; every view runs for an authenticated tenant."""
    bp = Blueprint(resource.name, __name__)
    require_tenant(bp)
    views = _ResourceViews(resource)
    # Endpoints are the method names: url_for(".get_record") builds a Location header.
    bp.add_url_rule("", view_func=views.list_records, methods=["GET"])
    bp.add_url_rule("", view_func=views.create_record, methods=["POST"])
    bp.add_url_rule("/<uuid:record_id>", view_func=views.get_record, methods=["GET"])
    bp.add_url_rule("/<uuid:record_id>", view_func=views.patch_record, methods=["PATCH"])
    bp.add_url_rule("/<uuid:record_id>", view_func=views.delete_record, methods=["DELETE"])
    return bp


class _ResourceViews:
    """The five views of one resource, with what they share built once per blueprint."""

    def __init__(self, resource: Resource) -> None:
        self._resource = resource
        self._model = resource.model
        self._table = sa.inspect(resource.model).local_table
        self._dump = dumper(resource.output)
        self._dump_row = row_dumper(resource.output)  # a page's rows lead with the output
        # Reads and creates return plain rows of the output's columns: no ORM object to build.
        self._output_columns = [self._table.c[name] for name in resource.output.dump_fields]
        self._statements = ListStatements(self._table, self._output_columns)

    def list_records(self) -> Response:
        """A page of records; its cost is bounded whatever the query (app/api/listing.py)."""
        params = query_args(self._resource.query)
        page, size = params["page"], params["page_size"]
        cursor = self._cursor(params)
        shape = ListShape.of(self._resource, params, cursor)
        values = shape.values(params, limit=size, offset=(page - 1) * size, cursor=cursor)
        session = tenant_session()
        read = self._statements.read(session, shape, values)
        rows, total, capped = read.rows, read.total, read.capped
        after = None
        if len(rows) > size:  # one row more than the page: there is a next page
            rows = rows[:size]
            after = (getattr(rows[-1], shape.sort_column), rows[-1].id)
        elif shape.windowed and capped:  # the next stretch of rows to examine
            after = session.execute(self._statements.window_end(shape), values).one_or_none()
        response = page_response(
            [self._dump_row(row) for row in rows],
            page=page,
            page_size=size,
            total=total,
            total_capped=capped,
        )
        if after is not None:
            response.headers["Link"] = self._next_link(shape, after[0], after[1])
        return response

    def create_record(self) -> Response:
        values = self._resource.create.load(json_object())
        session = tenant_session()
        insert = sa.insert(self._table).values(**values).returning(*self._output_columns)
        record = session.execute(insert).one()
        location = url_for(".get_record", record_id=record.id)
        return acknowledge(session, (jsonify(self._dump(record)), 201, {"Location": location}))

    def get_record(self, record_id: uuid.UUID) -> Response:
        record = tenant_session().get(self._model, record_id)
        if record is None:
            raise self._not_found()
        return jsonify(self._dump(record))

    def patch_record(self, record_id: uuid.UUID) -> Response:
        values = self._resource.patch.load(json_object(), partial=True)
        session = tenant_session()
        if values:
            statement = (
                sa.update(self._model)
                .where(self._model.id == record_id)
                .values(**values, updated_at=sa.func.now())
                .returning(self._model)
            )
            record = session.scalars(statement).one_or_none()
        else:
            record = session.get(self._model, record_id)
        if record is None:
            raise self._not_found()
        return acknowledge(session, jsonify(self._dump(record)))

    def delete_record(self, record_id: uuid.UUID) -> Response:
        session = tenant_session()
        result = session.execute(sa.delete(self._model).where(self._model.id == record_id))
        if getattr(result, "rowcount", 0) != 1:
            raise self._not_found()
        return acknowledge(session, ("", 204))

    def _cursor(self, params: dict[str, Any]) -> Cursor | None:
        if "after" not in params:
            return None
        descending = params["sort_direction"] in ("descending", "desc")
        return Cursor.decode(
            params["after"], self._table, sort_column=params["sort_column"], descending=descending
        )

    def _next_link(self, shape: ListShape, value: Any, record_id: uuid.UUID) -> str:
        """``Link: <same list, after=<cursor of the last row>>; rel="next"`` (RFC 8288)."""
        cursor = Cursor(shape.sort_column, shape.descending, value, record_id)
        args = {key: value for key, value in request.args.items() if key not in ("page", "after")}
        args["after"] = cursor.encode(self._table.c[shape.sort_column])
        return f'<{request.script_root}{request.path}?{urlencode(args)}>; rel="next"'

    def _not_found(self) -> NotFound:
        return NotFound(f"no such {self._resource.title.lower()}")
