"""One tenant-scoped REST resource: list, create, get, patch, delete.

Users and products differ only in their model and schemas, so both are made here. The
views never filter by tenant: RLS does, on the tenant's own connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, url_for
from marshmallow import Schema

from app.api.body import json_object, page_response, query_args
from app.errors import NotFound
from app.hooks import require_tenant, tenant_session
from app.models.scoped import TenantScoped
from app.schemas.common import ListQuerySchema, PageSchema, dumper

_TOTAL = "_total"


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
        # Reads and creates return plain rows of the output's columns: no ORM object to build.
        self._output_columns = [self._table.c[name] for name in resource.output.dump_fields]
        self._statements = ListStatements(self._table, self._output_columns)

    def list_records(self) -> Response:
        params = query_args(self._resource.query)
        page, size = params["page"], params["page_size"]
        shape = ListShape.of(self._resource, params)
        values = shape.values(params, limit=size, offset=(page - 1) * size)
        session = tenant_session()
        rows = session.execute(self._statements.page(shape), values).all()
        if rows:
            total = rows[0][-1]
        elif page == 1:
            total = 0
        else:  # past the end: no row carries the total, so count
            total = session.scalar(self._statements.count(shape), values)
        records = [self._dump(row) for row in rows]
        return page_response(records, page=page, page_size=size, total=total or 0)

    def create_record(self) -> tuple[Response, int, dict[str, str]]:
        values = self._resource.create.load(json_object())
        session = tenant_session()
        insert = sa.insert(self._table).values(**values).returning(*self._output_columns)
        record = session.execute(insert).one()
        session.commit()
        location = url_for(".get_record", record_id=record.id)
        return jsonify(self._dump(record)), 201, {"Location": location}

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
        session.commit()
        return jsonify(self._dump(record))

    def delete_record(self, record_id: uuid.UUID) -> tuple[str, int]:
        session = tenant_session()
        result = session.execute(sa.delete(self._model).where(self._model.id == record_id))
        if getattr(result, "rowcount", 0) != 1:
            raise self._not_found()
        session.commit()
        return "", 204

    def _not_found(self) -> NotFound:
        return NotFound(f"no such {self._resource.title.lower()}")


_LIKE_ESCAPE = "/"


@dataclass(frozen=True)
class ListShape:
    """What a list query's SQL depends on; its values travel as bound parameters.

    A handful of shapes serve every request, so each shape's statement is built (and its
    SQLAlchemy cache key computed) once per worker, not once per request.
    """

    sort_column: str
    descending: bool
    search_columns: tuple[str, ...]  # empty: no search
    date_after: bool
    date_before: bool
    filters: tuple[str, ...]

    @classmethod
    def of(cls, resource: Resource, params: dict[str, Any]) -> ListShape:
        """The shape of already validated, whitelisted ``params``."""
        searched: tuple[str, ...] = ()
        if "search" in params:
            searched = tuple(params.get("search_columns") or resource.query.SEARCHABLE)
        return cls(
            sort_column=params["sort_column"],
            descending=params["sort_direction"] in ("descending", "desc"),
            search_columns=searched,
            date_after="date_after" in params,
            date_before="date_before" in params,
            filters=tuple(name for name in resource.filters if name in params),
        )

    def values(self, params: dict[str, Any], *, limit: int, offset: int) -> dict[str, Any]:
        """The bound parameters of this shape's statements."""
        values: dict[str, Any] = {"limit": limit, "offset": offset}
        if self.search_columns:
            # %, _ and the escape character in the search text match literally.
            text = params["search"]
            for char in (_LIKE_ESCAPE, "%", "_"):
                text = text.replace(char, _LIKE_ESCAPE + char)
            values["search"] = text
        for name in ("date_after", "date_before", *self.filters):
            if name in params:
                values[name] = params[name]
        return values


class ListStatements:
    """The page and count statements of one table, per :class:`ListShape`, built once."""

    def __init__(self, table: sa.Table, output_columns: list[sa.Column[Any]]) -> None:
        self._table = table
        self._output = output_columns
        self._pages: dict[ListShape, sa.Select[Any]] = {}
        self._counts: dict[ListShape, sa.Select[int]] = {}

    def page(self, shape: ListShape) -> sa.Select[Any]:
        """One page of rows, each carrying the total (a window count): one query, not two."""
        statement = self._pages.get(shape)
        if statement is None:
            columns = self._table.c
            sort = columns[shape.sort_column]
            # The id breaks ties, so pages never overlap or skip rows with equal sort keys.
            if shape.descending:
                order = [sort.desc(), columns.id.desc()]
            else:
                order = [sort.asc(), columns.id.asc()]
            selected: list[sa.ColumnElement[Any]] = [
                *self._output,
                sa.func.count().over().label(_TOTAL),
            ]
            statement = (
                sa.select(*selected)
                .where(*self._conditions(shape))
                .order_by(*order)
                .limit(sa.bindparam("limit", type_=sa.Integer))
                .offset(sa.bindparam("offset", type_=sa.Integer))
            )
            self._pages[shape] = statement  # a race builds the same statement twice
        return statement

    def count(self, shape: ListShape) -> sa.Select[int]:
        """The number of rows matching the shape's conditions."""
        statement = self._counts.get(shape)
        if statement is None:
            statement = (
                sa.select(sa.func.count()).select_from(self._table).where(*self._conditions(shape))
            )
            self._counts[shape] = statement
        return statement

    def _conditions(self, shape: ListShape) -> list[sa.ColumnElement[bool]]:
        """WHERE conditions of whitelisted columns; every value is a bound parameter."""
        columns = self._table.c
        conditions: list[sa.ColumnElement[bool]] = []
        if shape.search_columns:
            search = sa.bindparam("search", type_=sa.String)
            conditions.append(
                sa.or_(
                    *(
                        columns[name].icontains(search, escape=_LIKE_ESCAPE)
                        for name in shape.search_columns
                    )
                )
            )
        if shape.date_after:
            conditions.append(
                columns.created_at > sa.bindparam("date_after", type_=columns.created_at.type)
            )
        if shape.date_before:
            conditions.append(
                columns.created_at < sa.bindparam("date_before", type_=columns.created_at.type)
            )
        conditions.extend(
            columns[name] == sa.bindparam(name, type_=columns[name].type) for name in shape.filters
        )
        return conditions
