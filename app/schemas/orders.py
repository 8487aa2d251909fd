"""Orders: input, output and list query."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.models.order import ORDER_STATUSES
from app.schemas.common import ListQuerySchema, PageSchema

MAX_QUANTITY = 2_147_483_647  # integer
_QUANTITY = validate.Range(1, MAX_QUANTITY)
_STATUS = validate.OneOf(ORDER_STATUSES)


class OrderSchema(Schema):
    """An order as returned by the API."""

    id = fields.UUID(dump_only=True)
    user_id = fields.UUID(dump_only=True)
    product_id = fields.UUID(dump_only=True)
    quantity = fields.Integer(dump_only=True)
    status = fields.String(dump_only=True)
    # The end user (a JWT's sub) who created it; null when an API key did.
    created_by = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class OrderCreateSchema(Schema):
    # References: a missing user or product, or another tenant's, is a 422 naming the field.
    user_id = fields.UUID(required=True)
    product_id = fields.UUID(required=True)
    quantity = fields.Integer(load_default=1, strict=True, validate=_QUANTITY)
    status = fields.String(load_default=ORDER_STATUSES[0], validate=_STATUS)


class OrderPatchSchema(Schema):
    quantity = fields.Integer(strict=True, validate=_QUANTITY)
    status = fields.String(validate=_STATUS)


class OrderListQuerySchema(ListQuerySchema):
    SORTABLE = ("created_at", "updated_at", "quantity", "status")
    # No SEARCHABLE: nothing to search in (search= is a 422); filter instead.

    user_id = fields.UUID()
    product_id = fields.UUID()
    status = fields.String(validate=_STATUS)


class OrderPageSchema(PageSchema):
    records = fields.List(fields.Nested(OrderSchema), required=True)
