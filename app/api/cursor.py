"""The ``after=`` cursor of list pages: where the last page ended, opaque to clients.

A cursor is the sort column, the direction, the last row's sort value and its id, as
base64url of a JSON array. It is not signed: nothing secret is in it and every value
reaches SQL as a typed bound parameter under the tenant's own RLS, so a forged cursor can
at most start a page somewhere else in the tenant's own rows. It is validated strictly
all the same (size, alphabet, shape, the column's type and bounds), and a cursor made for
another sort is refused: each failure is a 422 naming ``after``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.errors import ValidationFailed
from app.schemas.common import MAX_CURSOR_LENGTH

_ALPHABET = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_INT32 = 2**31


@dataclass(frozen=True)
class Cursor:
    """The position after which a page starts: a row's sort value (None: NULL) and id."""

    sort_column: str
    descending: bool
    value: Any
    id: uuid.UUID

    def encode(self, column: sa.Column[Any]) -> str:
        """The opaque text form of this cursor; ``column`` is the sort column."""
        payload = [self.sort_column, "desc" if self.descending else "asc"]
        payload += [_to_json(self.value, column.type), str(self.id)]
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, table: sa.Table, *, sort_column: str, descending: bool) -> Cursor:
        """The cursor ``text`` stands for; raises ValidationFailed (422) for anything else.

        It must have been made for this sort (``sort_column`` and direction): a cursor of
        another order would start the page at a meaningless place.
        """
        payload = _payload(text)
        name, direction, value, ident = payload
        if name != sort_column or direction != ("desc" if descending else "asc"):
            raise _invalid("was made for another sort_column or sort_direction")
        column = table.c[sort_column]
        return cls(sort_column, descending, _from_json(value, column), _uuid(ident))


def _payload(text: str) -> list[Any]:
    if len(text) > MAX_CURSOR_LENGTH or not _ALPHABET.match(text):
        raise _invalid("is not a cursor this list gave out")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        payload = json.loads(raw, parse_constant=_reject)
    except (binascii.Error, ValueError, RecursionError):
        raise _invalid("is not a cursor this list gave out") from None
    if not (isinstance(payload, list) and len(payload) == 4 and isinstance(payload[0], str)):
        raise _invalid("is not a cursor this list gave out")
    return payload


def _reject(name: str) -> Any:
    raise ValueError(name)


def _uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str) or len(value) != 36:
        raise _invalid("names no row")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _invalid("names no row") from None


def _to_json(value: Any, kind: sa.types.TypeEngine[Any]) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"no cursor form for {type(value).__name__} ({kind})")


def _from_json(value: Any, column: sa.Column[Any]) -> Any:
    """``value`` as the sort column's Python type, within its bounds."""
    if value is None:
        if not column.nullable:
            raise _invalid("holds no value for a column that always has one")
        return None
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return _datetime(value)
    if isinstance(kind, sa.Numeric):
        return _decimal(value, kind)
    if isinstance(kind, sa.Integer):
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= _INT32:
            raise _invalid("holds a value out of range")
        return value
    if isinstance(kind, sa.String):
        if not isinstance(value, str) or "\x00" in value or len(value) > (kind.length or 10_000):
            raise _invalid("holds a value out of range")
        return value
    raise _invalid("cannot be used with this sort_column")  # pragma: no cover - no such column


def _datetime(value: Any) -> dt.datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise _invalid("holds a value out of range")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _invalid("holds a value out of range") from None
    if moment.tzinfo is None:
        raise _invalid("holds a value out of range")
    return moment


def _decimal(value: Any, kind: sa.Numeric[Any]) -> decimal.Decimal:
    if not isinstance(value, str) or len(value) > 40:
        raise _invalid("holds a value out of range")
    try:
        number = decimal.Decimal(value)
    except decimal.InvalidOperation:
        raise _invalid("holds a value out of range") from None
    scale = kind.scale or 0
    limit = decimal.Decimal(10) ** ((kind.precision or 38) - scale)
    try:
        fits = abs(number) < limit and number == number.quantize(decimal.Decimal(1).scaleb(-scale))
    except decimal.InvalidOperation:  # NaN, infinities, or too many digits to quantize
        fits = False
    if not fits:
        raise _invalid("holds a value out of range")
    return number


def _invalid(reason: str) -> ValidationFailed:
    return ValidationFailed({"after": [f"the cursor {reason}"]})
