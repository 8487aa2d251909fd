"""What a list statement depends on: its shape, of a finite set, and the values it binds.

What a list statement's SQL depends on is a :class:`ListShape`: whitelisted names and flags
only, the search columns de-duplicated (the schema refuses a repeated name) and in the
resource's own order. So the shapes of a resource are a finite set that
:meth:`ListShape.space` enumerates, and ``app/api/listing.py``'s ``ListStatements`` builds
and keeps at most one statement per shape: its caches can never hold more than
``len(space)`` entries, whatever clients send. Values (search text, dates, cursor) are bound
parameters, and the bounds below are among them (see ``listing.py`` for what they bound).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from app.api.cursor import Cursor
from app.schemas.common import ListQuerySchema

COUNT_CAP = 10_000
"""Rows a total is counted up to."""
SEARCH_SCAN = 10_000
"""Rows one search request examines at most."""
STRETCH = 250
"""Rows a first page reads to count its list on its own (see ``ListStatements.page``)."""

DATE_COLUMN = "created_at"
"""The column ``date_after`` and ``date_before`` compare."""
LIKE_ESCAPE = "/"
"""The escape character of search patterns (``%`` and ``_`` are matched as themselves)."""


class Listable(Protocol):
    """What a shape needs of a resource (``app.api.resource.Resource``)."""

    @property
    def query(self) -> ListQuerySchema: ...

    @property
    def filters(self) -> tuple[str, ...]: ...


class Keyset(enum.Enum):
    """Whether the page starts after a cursor, and whether that cursor's sort value is NULL."""

    NONE = "none"
    VALUE = "value"
    NULL = "null"


@dataclass(frozen=True)
class ListShape:
    """What a list query's SQL depends on; its values travel as bound parameters.

    A handful of shapes serve every request, so each shape's statement is built (and its
    SQLAlchemy cache key computed) once per worker, not once per request.
    """

    sort_column: str
    descending: bool
    search_columns: tuple[str, ...]  # empty: no search; else in the resource's order
    date_after: bool
    date_before: bool
    filters: tuple[str, ...]
    keyset: Keyset = Keyset.NONE

    @classmethod
    def of(
        cls, resource: Listable, params: dict[str, Any], cursor: Cursor | None = None
    ) -> ListShape:
        """The shape of already validated, whitelisted ``params`` (and decoded ``after``)."""
        searched: tuple[str, ...] = ()
        if "search" in params:
            chosen = set(params.get("search_columns") or resource.query.SEARCHABLE)
            # One canonical order: "email,first_name" and "first_name,email" are one shape.
            searched = tuple(name for name in resource.query.SEARCHABLE if name in chosen)
        keyset = Keyset.NONE
        if cursor is not None:
            keyset = Keyset.NULL if cursor.value is None else Keyset.VALUE
        return cls(
            sort_column=params["sort_column"],
            descending=params["sort_direction"] in ("descending", "desc"),
            search_columns=searched,
            date_after="date_after" in params,
            date_before="date_before" in params,
            filters=tuple(name for name in resource.filters if name in params),
            keyset=keyset,
        )

    @property
    def windowed(self) -> bool:
        """Whether a condition cannot narrow the sort index's range, so rows are examined.

        The ``(tenant_id, <sort column>, id)`` index serves the order and, when sorting by
        ``created_at``, a date range. A search, an equality filter or a date range on
        another order would be checked row by row, through as many rows as the tenant
        has: such a shape examines a bounded stretch (``SEARCH_SCAN``) instead.
        """
        dated = (self.date_after or self.date_before) and self.sort_column != DATE_COLUMN
        return bool(self.search_columns or self.filters or dated)

    @property
    def stretched(self) -> bool:
        """Whether the page counts its list itself, up to a stretch of rows (not windowed, no
        cursor: a cursor's page does not say how many rows came before it)."""
        return not self.windowed and self.keyset is Keyset.NONE

    @classmethod
    def space(cls, resource: Listable) -> Iterator[ListShape]:
        """Every shape a request to ``resource`` can have: a finite set."""
        for sort, descending, searched, after, before, filters, keyset in itertools.product(
            resource.query.SORTABLE,
            (False, True),
            _subsets(resource.query.SEARCHABLE),
            (False, True),
            (False, True),
            _subsets(resource.filters),
            Keyset,
        ):
            yield cls(sort, descending, searched, after, before, filters, keyset)

    def values(
        self, params: dict[str, Any], *, limit: int, offset: int, cursor: Cursor | None = None
    ) -> dict[str, Any]:
        """The bound parameters of this shape's statements.

        ``limit`` rows of the page are asked for plus one, which tells whether there is more.
        """
        values: dict[str, Any] = {"limit": limit + 1, "offset": offset}
        if self.windowed:
            values["scan"] = SEARCH_SCAN
        else:
            values["cap"] = COUNT_CAP + 1
        if self.stretched:
            values["stretch"] = max(STRETCH, offset + limit + 1)
        if self.search_columns:
            # %, _ and the escape character in the search text match literally.
            text = params["search"]
            for char in (LIKE_ESCAPE, "%", "_"):
                text = text.replace(char, LIKE_ESCAPE + char)
            values["search"] = text
        for name in ("date_after", "date_before", *self.filters):
            if name in params:
                values[name] = params[name]
        if cursor is not None:
            values["after_id"] = cursor.id
            if cursor.value is not None:
                values["after_value"] = cursor.value
        return values


def _subsets(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every subset of ``names``, each in their order, the empty one first."""
    return [
        combination
        for size in range(len(names) + 1)
        for combination in itertools.combinations(names, size)
    ]
