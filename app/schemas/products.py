"""Products: input, output and list query."""

from __future__ import annotations

import decimal

from marshmallow import Schema, fields, validate

from app.schemas.common import ListQuerySchema, Money, PageSchema, SafeString

MAX_PRICE = decimal.Decimal("9999999999.99")  # numeric(12, 2)
MAX_STOCK = 2_147_483_647  # integer
_PRICE = validate.Range(decimal.Decimal(0), MAX_PRICE)
_STOCK = validate.Range(0, MAX_STOCK)


class ProductSchema(Schema):
    """A product as returned by the API; the price is a decimal string, never a float."""

    id = fields.UUID(dump_only=True)
    name = fields.String(dump_only=True)
    description = fields.String(dump_only=True)
    price = fields.Decimal(places=2, as_string=True, dump_only=True)
    stock = fields.Integer(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class ProductCreateSchema(Schema):
    name = SafeString(required=True, validate=validate.Length(1, 100))
    description = SafeString(load_default="", validate=validate.Length(max=2000))
    price = Money(required=True, validate=_PRICE)
    stock = fields.Integer(load_default=0, strict=True, validate=_STOCK)


class ProductPatchSchema(Schema):
    name = SafeString(validate=validate.Length(1, 100))
    description = SafeString(validate=validate.Length(max=2000))
    price = Money(validate=_PRICE)
    stock = fields.Integer(strict=True, validate=_STOCK)


class ProductListQuerySchema(ListQuerySchema):
    SORTABLE = ("created_at", "updated_at", "name", "price", "stock")
    SEARCHABLE = ("name", "description")


class ProductPageSchema(PageSchema):
    records = fields.List(fields.Nested(ProductSchema), required=True)
