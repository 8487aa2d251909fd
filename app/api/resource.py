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
from sqlalchemy.sql.base import ReadOnlyColumnCollection

from app.api.body import json_object, page_response, query_args
from app.errors import NotFound
from app.hooks import require_tenant, tenant_session
from app.models.scoped import TenantScoped
from app.schemas.common import ListQuerySchema, PageSchema, dumper

_TOTAL = "_total"


@dataclass(frozen=True)
class Resource:
    """A model and its schemas; ``filters`` are query fields compared for equality."""

    name: str
    model: type[TenantScoped]
    output: Schema
    create: Schema
    patch: Schema
    query: ListQuerySchema
    page: type[PageSchema]
    filters: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.name.capitalize().rstrip("s")


def make_blueprint(resource: Resource) -> Blueprint:
    """The blueprint of ``resource``; every view runs for an authenticated tenant."""
    bp = Blueprint(resource.name, __name__)
    require_tenant(bp)
    model = resource.model
    table = sa.inspect(model).local_table
    id_column = model.id
    dump = dumper(resource.output)
    # Listing reads plain rows of the output's columns: no ORM objects to build per row.
    output_columns = [table.c[name] for name in resource.output.dump_fields]

    @bp.get("")
    def list_records() -> Response:
        params = query_args(resource.query)
        conditions = _conditions(table.c, resource, params)
        session = tenant_session()
        sort = table.c[params["sort_column"]]
        descending = params["sort_direction"] in ("descending", "desc")
        # The id breaks ties, so pages never overlap or skip rows with equal sort keys.
        order = [sort.desc(), id_column.desc()] if descending else [sort.asc(), id_column.asc()]
        page, size = params["page"], params["page_size"]
        # The total rides on every row (a window count): one query instead of COUNT + SELECT.
        rows = session.execute(
            sa.select(*output_columns, sa.func.count().over().label(_TOTAL))
            .where(*conditions)
            .order_by(*order)
            .limit(size)
            .offset((page - 1) * size)
        ).all()
        if rows:
            total = rows[0][-1]
        elif page == 1:
            total = 0
        else:  # past the end: no row carries the total, so count
            total = session.scalar(sa.select(sa.func.count()).select_from(table).where(*conditions))
        records = [dump(row) for row in rows]
        return page_response(records, page=page, page_size=size, total=total or 0)

    @bp.post("")
    def create_record() -> tuple[Response, int, dict[str, str]]:
        values = resource.create.load(json_object())
        session = tenant_session()
        record = session.scalars(sa.insert(model).values(**values).returning(model)).one()
        session.commit()
        location = url_for(".get_record", record_id=record.id)
        return jsonify(dump(record)), 201, {"Location": location}

    @bp.get("/<uuid:record_id>")
    def get_record(record_id: uuid.UUID) -> Response:
        record = tenant_session().get(model, record_id)
        if record is None:
            raise NotFound(f"no such {resource.title.lower()}")
        return jsonify(dump(record))

    @bp.patch("/<uuid:record_id>")
    def patch_record(record_id: uuid.UUID) -> Response:
        values = resource.patch.load(json_object(), partial=True)
        session = tenant_session()
        if values:
            statement = (
                sa.update(model)
                .where(id_column == record_id)
                .values(**values, updated_at=sa.func.now())
                .returning(model)
            )
            record = session.scalars(statement).one_or_none()
        else:
            record = session.get(model, record_id)
        if record is None:
            raise NotFound(f"no such {resource.title.lower()}")
        session.commit()
        return jsonify(dump(record))

    @bp.delete("/<uuid:record_id>")
    def delete_record(record_id: uuid.UUID) -> tuple[str, int]:
        session = tenant_session()
        result = session.execute(sa.delete(model).where(id_column == record_id))
        if getattr(result, "rowcount", 0) != 1:
            raise NotFound(f"no such {resource.title.lower()}")
        session.commit()
        return "", 204

    return bp


def _conditions(
    columns: ReadOnlyColumnCollection[str, Any], resource: Resource, params: dict[str, Any]
) -> list[sa.ColumnElement[bool]]:
    """WHERE conditions from whitelisted, already validated parameters; all bound."""
    conditions: list[sa.ColumnElement[bool]] = []
    if "search" in params:
        searched = params.get("search_columns") or resource.query.SEARCHABLE
        # autoescape: %, _ and \ in the search text match literally.
        conditions.append(
            sa.or_(
                *(columns[name].icontains(params["search"], autoescape=True) for name in searched)
            )
        )
    if "date_after" in params:
        conditions.append(columns.created_at > params["date_after"])
    if "date_before" in params:
        conditions.append(columns.created_at < params["date_before"])
    conditions.extend(columns[name] == params[name] for name in resource.filters if name in params)
    return conditions
