"""List queries of bounded shape and bounded cost: the statements behind ``GET /v1/<resource>``.

Shapes. ``ListStatements`` builds and keeps one statement per :class:`ListShape`
(``app/api/list_shapes.py``, with the bounds below), a finite set, so its caches are bounded
whatever clients send.

Cost. One request does a bounded amount of work (docs/operations.md, "Cost of a request"):

- the total is counted up to ``COUNT_CAP`` rows; beyond, ``total`` says ``COUNT_CAP`` and the
  response adds ``"total_capped": true``;
- an offset (``page``) reaches at most ``MAX_OFFSET`` rows (``app/schemas/common.py``);
  deeper pages are read with the ``after=`` cursor every full page hands out (``Link:
  <...>; rel="next"``), which the ``(tenant_id, <sort column>, id)`` indexes turn into an
  index range scan;
- a search, an equality filter, or a date range the order's index cannot serve (a
  "windowed" shape) examines at most ``SEARCH_SCAN`` rows (in the requested order, from the
  cursor), because such a condition is checked row by row: an ``ILIKE '%text%'`` cannot use
  an index under row level security (the operator is not leakproof, so PostgreSQL may not
  evaluate it inside the index scan that the policy restricts). Its ``total`` counts the
  matches among the rows examined, and when rows were left unexamined the response says
  ``total_capped`` and links to the next stretch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from app.api.list_shapes import COUNT_CAP, DATE_COLUMN, LIKE_ESCAPE, SEARCH_SCAN, Keyset, ListShape

TOTAL = "_total"
SCANNED = "_scanned"


@dataclass(frozen=True)
class ListPage:
    """What a list statement read: the page's rows (one more than asked for if there are
    more), and the list's total, capped at ``COUNT_CAP`` (or, windowed, among the rows
    examined, ``capped`` when rows were left unexamined)."""

    rows: Sequence[sa.Row[Any]]
    total: int
    capped: bool


class ListStatements:
    """The statements of one table, per :class:`ListShape`, built once.

    Bounded: at most one page, one count and one window-end statement per shape of the
    finite space (:meth:`ListShape.space`). A race builds the same statement twice; the
    dict operations themselves are atomic.
    """

    def __init__(self, table: sa.Table, output_columns: list[sa.Column[Any]]) -> None:
        self._table = table
        self._output = output_columns
        self._pages: dict[ListShape, sa.Select[Any]] = {}
        self._counts: dict[ListShape, sa.Select[int]] = {}
        self._window_ends: dict[ListShape, sa.Select[Any, uuid.UUID]] = {}

    def __len__(self) -> int:
        """Statements held (for tests of the bound)."""
        return len(self._pages) + len(self._counts) + len(self._window_ends)

    def shapes(self) -> frozenset[ListShape]:
        """The shapes a page statement was built for."""
        return frozenset(self._pages)

    def read(self, session: orm.Session, shape: ListShape, values: dict[str, Any]) -> ListPage:
        """Run the shape's page statement, and its count when the page cannot tell the total.

        A stretched shape's page (no search, no cursor) reads the first ``stretch`` rows of
        the list, at least ``STRETCH``, in one scan of the table and counts them: a list
        that ends within them is counted exactly, at no further cost. That is one scan and
        one set of the policy's checks, not two, for every list of up to ``STRETCH`` rows.
        A longer list (or a page past the end of one) takes a second statement, the capped
        count, which an index-only scan answers. Other shapes read their page and its total
        in one statement, the page outer-joined to the total so that an empty page still
        gives one row, with NULL record columns.

        The statements select plain columns, so they run on the session's connection (its
        transaction, its tenant context): the ORM's execute layer would add only its own
        calls to every list request.
        """
        connection = session.connection()
        rows = connection.execute(self.page(shape), values).all()
        if shape.stretched:
            total = rows[0]._mapping[TOTAL] if rows else 0
            if total >= values["stretch"] or (not rows and values["offset"]):
                total = connection.execute(self.count(shape), values).scalar_one()
            return ListPage(rows, min(total, COUNT_CAP), total > COUNT_CAP)
        total, scanned = rows[0]._mapping[TOTAL], rows[0]._mapping[SCANNED]
        rows = [row for row in rows if row.id is not None]
        if shape.windowed:
            return ListPage(rows, total, scanned >= SEARCH_SCAN)
        return ListPage(rows, min(total, COUNT_CAP), total > COUNT_CAP)

    def page(self, shape: ListShape) -> sa.Select[Any]:
        """The statement of one page of rows, each carrying the list's total (see ``read``).

        Its first columns are the output columns, in their order: the page is serialised
        by position (``schemas.common.row_dumper``).
        """
        statement = self._pages.get(shape)
        if statement is None:
            statement = self._build_page(shape)
            self._pages[shape] = statement
        return statement

    def count(self, shape: ListShape) -> sa.Select[int]:
        """The shape's rows counted up to ``cap`` (``COUNT_CAP + 1``)."""
        statement = self._counts.get(shape)
        if statement is None:
            statement = sa.select(sa.func.count()).select_from(self._capped(shape))
            self._counts[shape] = statement
        return statement

    def window_end(self, shape: ListShape) -> sa.Select[Any, uuid.UUID]:
        """The sort value and id of the last row a windowed shape examined."""
        cached = self._window_ends.get(shape)
        if cached is not None:
            return cached
        statement = (
            sa.select(self._table.c[shape.sort_column], self._table.c.id)
            .where(*self._narrowing(shape), *self._keyset(shape))
            .order_by(*self._order(shape))
            .offset(sa.bindparam("scan", type_=sa.Integer) - 1)
            .limit(1)
        )
        self._window_ends[shape] = statement
        return statement

    def _build_page(self, shape: ListShape) -> sa.Select[Any]:
        limit = sa.bindparam("limit", type_=sa.Integer)
        offset = sa.bindparam("offset", type_=sa.Integer)
        rows = sa.select(*self._selected(shape)).where(
            *self._narrowing(shape), *self._keyset(shape)
        )
        if shape.stretched:
            stretch = (
                rows.order_by(*self._order(shape))
                .limit(sa.bindparam("stretch", type_=sa.Integer))
                .subquery("stretch")
            )
            return (
                sa.select(*_answered(stretch.c), sa.func.count().over().label(TOTAL))
                .order_by(*self._order(shape, stretch.c))
                .limit(limit)
                .offset(offset)
            )
        if shape.windowed:
            # The rows examined: a stretch of at most SEARCH_SCAN, in order, from the cursor.
            scan = sa.bindparam("scan", type_=sa.Integer)
            window = rows.order_by(*self._order(shape)).limit(scan).subquery()
            matching = sa.and_(*self._filtering(shape, window.c))
            page = sa.select(*window.c).where(matching).order_by(*self._order(shape, window.c))
            total = sa.select(
                sa.func.count().filter(matching).label(TOTAL), sa.func.count().label(SCANNED)
            ).subquery("total")
        else:
            page = rows.order_by(*self._order(shape))
            total = (
                sa.select(sa.func.count().label(TOTAL), sa.null().label(SCANNED))
                .select_from(self._capped(shape))
                .subquery("total")
            )
        page_rows = page.limit(limit).offset(offset).subquery("page")
        return (
            sa.select(*_answered(page_rows.c), total.c[TOTAL], total.c[SCANNED])
            .select_from(total.outerjoin(page_rows, sa.true()))
            .order_by(*self._order(shape, page_rows.c))
        )

    def _capped(self, shape: ListShape) -> sa.Subquery:
        """The shape's rows (the cursor aside), at most ``cap`` of them, as bare ``1``s."""
        return (
            sa.select(sa.literal_column("1"))
            .select_from(self._table)
            .where(*self._narrowing(shape))
            .limit(sa.bindparam("cap", type_=sa.Integer))
            .subquery()
        )

    def _selected(self, shape: ListShape) -> list[sa.Column[Any]]:
        """The output columns, and those the statement orders or filters by if not among them."""
        names = {column.name for column in self._output}
        wanted = ["id", shape.sort_column, *shape.search_columns, *shape.filters]
        if shape.windowed and (shape.date_after or shape.date_before):
            wanted.append(DATE_COLUMN)
        extra = [self._table.c[name] for name in dict.fromkeys(wanted) if name not in names]
        return [*self._output, *extra]

    def _order(
        self, shape: ListShape, columns: sa.ColumnCollection[str, Any] | None = None
    ) -> list[sa.ColumnElement[Any]]:
        # The id breaks ties, so pages never overlap or skip rows with equal sort keys.
        columns = self._table.c if columns is None else columns
        sort, ident = columns[shape.sort_column], columns["id"]
        if shape.descending:
            return [sort.desc(), ident.desc()]
        return [sort.asc(), ident.asc()]

    def _keyset(self, shape: ListShape) -> list[sa.ColumnElement[bool]]:
        """Rows after the cursor in the shape's order (PostgreSQL: NULLs last ascending)."""
        if shape.keyset is Keyset.NONE:
            return []
        sort, ident = self._table.c[shape.sort_column], self._table.c.id
        after_id = sa.bindparam("after_id", type_=ident.type)
        if shape.keyset is Keyset.NULL:  # within the NULLs, which end (or open) the order
            if shape.descending:
                return [sa.or_(sa.and_(sort.is_(None), ident < after_id), sort.is_not(None))]
            return [sa.and_(sort.is_(None), ident > after_id)]
        after = sa.tuple_(sa.bindparam("after_value", type_=sort.type), after_id)
        if shape.descending:
            return [sa.tuple_(sort, ident) < after]
        beyond = sa.tuple_(sort, ident) > after
        return [sa.or_(beyond, sort.is_(None))] if sort.nullable else [beyond]

    def _narrowing(self, shape: ListShape) -> list[sa.ColumnElement[bool]]:
        """Conditions the sort index serves as a range: dates, when sorting by them."""
        if shape.sort_column != DATE_COLUMN:
            return []
        return self._dates(shape, self._table.c)

    def _filtering(
        self, shape: ListShape, columns: sa.ColumnCollection[str, Any]
    ) -> list[sa.ColumnElement[bool]]:
        """Conditions checked row by row, on the examined rows; values are bound parameters."""
        conditions: list[sa.ColumnElement[bool]] = []
        if shape.search_columns:
            search = sa.bindparam("search", type_=sa.String)
            conditions.append(
                sa.or_(
                    *(
                        columns[name].icontains(search, escape=LIKE_ESCAPE)
                        for name in shape.search_columns
                    )
                )
            )
        if shape.sort_column != DATE_COLUMN:
            conditions += self._dates(shape, columns)
        conditions.extend(
            columns[name] == sa.bindparam(name, type_=self._table.c[name].type)
            for name in shape.filters
        )
        return conditions

    def _dates(
        self, shape: ListShape, columns: sa.ColumnCollection[str, Any]
    ) -> list[sa.ColumnElement[bool]]:
        created, kind = columns[DATE_COLUMN], self._table.c[DATE_COLUMN].type
        conditions = []
        if shape.date_after:
            conditions.append(created > sa.bindparam("date_after", type_=kind))
        if shape.date_before:
            conditions.append(created < sa.bindparam("date_before", type_=kind))
        return conditions


def _answered(columns: sa.ColumnCollection[str, Any]) -> list[sa.ColumnElement[Any]]:
    """A page's select list: UUIDs as the text the answer spells them in.

    psycopg2 would build a ``uuid.UUID`` of each, which the dump turns back into that same
    text: about 1.4 µs per value, some 30 µs for a page of 20 rows. The order and the
    cursor's conditions still compare the UUIDs themselves.
    """
    return [
        sa.cast(column, sa.Text).label(column.key) if isinstance(column.type, sa.Uuid) else column
        for column in columns
    ]
