"""Fields and schemas shared by every resource: safe strings and list queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

MAX_PAGE = 100_000
MAX_PAGE_SIZE = 100
SORT_DIRECTIONS = ("ascending", "descending", "asc", "desc")


class SafeString(fields.String):
    """A string PostgreSQL can store: no NUL, no lone surrogate, no leading/trailing space."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("must not contain NUL characters")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("must be valid Unicode (no lone surrogates)") from None
        return text.strip()


class ColumnList(fields.Field[list[str]]):
    """A comma-separated list of column names, each from a whitelist."""

    def __init__(self, choices: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices = choices

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[str]:
        if not isinstance(value, str):
            raise ValidationError("must be a comma-separated list of column names")
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in self.choices]
        if not names or unknown:
            raise ValidationError(f"must be a comma-separated subset of: {', '.join(self.choices)}")
        return names


class ListQuerySchema(Schema):
    """Query string of a list endpoint; subclasses name their sortable and searchable columns."""

    SORTABLE: ClassVar[tuple[str, ...]] = ("created_at",)
    SEARCHABLE: ClassVar[tuple[str, ...]] = ()

    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE))
    page_size = fields.Integer(load_default=10, validate=validate.Range(1, MAX_PAGE_SIZE))
    search = SafeString(validate=validate.Length(1, 100))
    sort_column = fields.String(load_default="created_at")
    sort_direction = fields.String(
        load_default="ascending", validate=validate.OneOf(SORT_DIRECTIONS)
    )
    date_after = fields.AwareDateTime(default_timezone=dt.UTC)
    date_before = fields.AwareDateTime(default_timezone=dt.UTC)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Whitelists are per resource, so the fields that use them are made per subclass.
        cls._declared_fields["sort_column"] = fields.String(
            load_default="created_at", validate=validate.OneOf(cls.SORTABLE)
        )
        cls._declared_fields["search_columns"] = ColumnList(cls.SEARCHABLE)

    @validates_schema
    def _search_columns_need_search(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "search_columns" in data and "search" not in data:
            raise ValidationError("search_columns needs search", "search_columns")


class PageSchema(Schema):
    """The list response shape of the Rust template, kept for its clients."""

    page = fields.Integer(required=True)
    page_size = fields.Integer(required=True)
    total = fields.Integer(required=True)
    total_pages = fields.Integer(required=True)
