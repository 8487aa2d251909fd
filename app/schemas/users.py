"""Users: input, output and list query."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.schemas.common import JsonBoolean, ListQuerySchema, PageSchema, SafeString

_NAME = validate.Length(1, 50)


class UserSchema(Schema):
    """A user as returned by the API."""

    id = fields.UUID(dump_only=True)
    first_name = fields.String(dump_only=True)
    last_name = fields.String(dump_only=True)
    email = fields.String(dump_only=True, allow_none=True)
    confirmed = fields.Boolean(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class UserCreateSchema(Schema):
    first_name = SafeString(required=True, validate=_NAME)
    last_name = SafeString(required=True, validate=_NAME)
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=254))
    confirmed = JsonBoolean(load_default=False)


class UserPatchSchema(Schema):
    first_name = SafeString(validate=_NAME)
    last_name = SafeString(validate=_NAME)
    email = fields.Email(allow_none=True, validate=validate.Length(max=254))
    confirmed = JsonBoolean()


class UserListQuerySchema(ListQuerySchema):
    SORTABLE = ("created_at", "updated_at", "first_name", "last_name", "email")
    SEARCHABLE = ("first_name", "last_name", "email")

    confirmed = fields.Boolean()


class UserPageSchema(PageSchema):
    records = fields.List(fields.Nested(UserSchema), required=True)
