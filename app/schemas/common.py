"""Fields and schemas shared by every resource: safe strings and list queries."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema
from marshmallow.schema import SchemaMeta

MAX_OFFSET = 10_000
"""Rows a page may skip, ``(page - 1) * page_size``; deeper pages follow ``after=`` cursors."""
MAX_PAGE = MAX_OFFSET + 1
MAX_PAGE_SIZE = 100
MAX_CURSOR_LENGTH = 1024
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
        # Lengths count what was sent, as the OpenAPI maxLength says: trimming must not
        # let a longer input through.
        for validator in self.validators:
            if isinstance(validator, validate.Length) and len(text) > (validator.max or len(text)):
                raise ValidationError(f"Longer than maximum length {validator.max}.")
        return text.strip()


class Money(fields.Decimal):
    """A decimal amount with at most ``places`` decimals: more is refused, never rounded."""

    def __init__(self, places: int = 2, **kwargs: Any) -> None:
        super().__init__(places=places, **kwargs)
        self.decimals = places

    def _format_num(self, value: Any) -> decimal.Decimal:
        rounded: decimal.Decimal = super()._format_num(value)  # type: ignore[no-untyped-call]
        if rounded.is_finite() and rounded != decimal.Decimal(str(value)):
            raise ValidationError(f"must have at most {self.decimals} decimal places")
        return rounded


class JsonBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only.

    ``truthy={True}`` is not enough: 1 and 0 equal True and False, so they would pass.
    """

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class UtcDateTime(fields.AwareDateTime):
    """A date-time with an offset (UTC if none), converted to UTC.

    PostgreSQL refuses offsets beyond +/-15:59, Python allows up to +/-23:59, so the
    value reaches SQL in UTC; a moment that leaves Python's years 1..9999 is refused.
    """

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dt.datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(dt.UTC)
        except OverflowError:
            raise ValidationError("is out of range once converted to UTC") from None


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
        # Bounded before it is split: each choice at most once, with its comma.
        if len(value) > sum(len(choice) + 1 for choice in self.choices) + len(self.choices):
            raise ValidationError(f"names each of {', '.join(self.choices)} at most once")
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in self.choices]
        if not names or unknown:
            raise ValidationError(f"must be a comma-separated subset of: {', '.join(self.choices)}")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            # Refused rather than merged: each spelling would otherwise be a list shape of
            # its own (app/api/listing.py), and a column named twice is a client's mistake.
            raise ValidationError(f"names {', '.join(repeated)} more than once")
        return names


class _ListQueryMeta(SchemaMeta):
    """Gives each list query schema the fields its own whitelists call for.

    Made after marshmallow collected the class's fields, on the class's own field dict, so
    no schema changes its parent's or its siblings' fields.
    """

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> _ListQueryMeta:
        klass = super().__new__(mcs, name, bases, attrs)
        sortable: tuple[str, ...] = getattr(klass, "SORTABLE", ())
        searchable: tuple[str, ...] = getattr(klass, "SEARCHABLE", ())
        declared = klass._declared_fields
        declared["sort_column"] = fields.String(
            load_default="created_at", validate=validate.OneOf(sortable)
        )
        # No searchable column: no search parameter (nor in the OpenAPI document), so
        # ``search=`` is a 422, never a search that matches everything.
        declared.pop("search", None)
        declared.pop("search_columns", None)
        if searchable:
            declared["search"] = SafeString(validate=validate.Length(1, 100))
            declared["search_columns"] = ColumnList(searchable)
        return cast(_ListQueryMeta, klass)  # made by this metaclass, so it is one


class ListQuerySchema(Schema, metaclass=_ListQueryMeta):
    """Query string of a list endpoint; subclasses name their sortable and searchable columns."""

    SORTABLE: ClassVar[tuple[str, ...]] = ("created_at",)
    SEARCHABLE: ClassVar[tuple[str, ...]] = ()

    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE))
    page_size = fields.Integer(load_default=10, validate=validate.Range(1, MAX_PAGE_SIZE))
    sort_direction = fields.String(
        load_default="ascending", validate=validate.OneOf(SORT_DIRECTIONS)
    )
    date_after = UtcDateTime(default_timezone=dt.UTC)
    date_before = UtcDateTime(default_timezone=dt.UTC)
    after = fields.String(validate=validate.Length(1, MAX_CURSOR_LENGTH))

    @pre_load
    def _nothing_to_search(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if not self.SEARCHABLE and ("search" in data or "search_columns" in data):
            raise ValidationError("this resource has no searchable columns", "search")
        return data

    @validates_schema
    def _search_columns_need_search(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "search_columns" in data and "search" not in data:
            raise ValidationError("search_columns needs search", "search_columns")

    @validates_schema
    def _offset_within_bound(self, data: dict[str, Any], **kwargs: Any) -> None:
        page, size = data.get("page", 1), data.get("page_size", 10)
        if "after" in data and page != 1:
            raise ValidationError("after continues a list from a cursor: leave page out", "page")
        if (page - 1) * size > MAX_OFFSET:
            raise ValidationError(
                f"pages may start at most {MAX_OFFSET} rows in; follow the Link rel=next "
                "cursor (after=) of the previous page to go deeper",
                "page",
            )


class PageSchema(Schema):
    """The list response shape of the Rust template, kept for its clients.

    ``total_capped`` appears (true) only when ``total`` is a lower bound: counted up to a cap,
    or among the rows a search examined (app/api/listing.py).
    """

    page = fields.Integer(required=True)
    page_size = fields.Integer(required=True)
    total = fields.Integer(required=True)
    total_pages = fields.Integer(required=True)
    total_capped = fields.Boolean()


Dumper = Callable[[Any], dict[str, Any]]


def _as_str(value: Any) -> Any:
    return None if value is None else str(value)


def _as_iso(value: Any) -> Any:
    return None if value is None else value.isoformat()


def _as_is(value: Any) -> Any:
    return value


def _converter(field: fields.Field[Any]) -> Callable[[Any], Any] | None:
    """A plain function doing what ``field`` does to a database value; None if unsure.

    Each of them is also what orjson does to the value by itself (``row_dumper`` relies on it).
    """
    if type(field) is fields.UUID:
        return _as_str
    if type(field) is fields.DateTime and field.format in (None, "iso"):
        return _as_iso
    # The database already returns these as str, bool and int.
    if type(field) in (fields.String, fields.Boolean, fields.Integer):
        return _as_is
    return None


def _plan(schema: Schema) -> list[tuple[str, str, Callable[[Any], Any] | None, fields.Field[Any]]]:
    """Per dump field, in order: its key, its attribute, its plain converter, the field."""
    return [
        (field.data_key or name, field.attribute or name, _converter(field), field)
        for name, field in schema.dump_fields.items()
    ]


def dumper(schema: Schema) -> Dumper:
    """A function giving ``schema.dump(obj)`` for one row or record, without its overhead.

    Marshmallow spends most of a list request's serialisation time on per-field dispatch;
    this resolves each field once. Fields it has no plain equivalent for (a Decimal as a
    string, say) still go through marshmallow's own ``serialize``; tests check that both
    give the same output.
    """
    plan = _plan(schema)

    def dump(obj: Any) -> dict[str, Any]:
        out = {}
        for key, attribute, convert, field in plan:
            if convert is None:
                out[key] = field.serialize(attribute, obj)
            else:
                out[key] = convert(getattr(obj, attribute))
        return out

    return dump


def row_dumper(schema: Schema) -> Dumper:
    """:func:`dumper` for a list page's rows, whose leading columns are the schema's dump
    fields in their order (``app/api/listing.py``), on their way to ``jsonify``.

    It takes each value by its position (a SQLAlchemy row looks a name up on every access by
    name) and leaves UUIDs and ISO datetimes as they are: the JSON provider (orjson,
    ``app/json_provider.py``) writes them as ``str()`` and ``isoformat()`` would, in C. A
    page of users is then one ``dict(zip(...))`` per row, not eight calls to Python. Tests check
    that both dumps encode to the same JSON.
    """
    plan = _plan(schema)
    keys = [key for key, *_ in plan]
    # The fields with no plain converter (a Decimal as a string, say): orjson does the rest.
    serialized = [
        (key, attribute, field) for key, attribute, convert, field in plan if convert is None
    ]

    def dump(row: Any) -> dict[str, Any]:
        # zip stops at the keys: the row's further columns (the list's total) are not output.
        out = dict(zip(keys, row, strict=False))
        for key, attribute, field in serialized:
            out[key] = field.serialize(attribute, row)
        return out

    return dump
