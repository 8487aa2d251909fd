"""Tenants, as the admin API shows and takes them: never a password, ciphertext or key hash."""

from __future__ import annotations

import unicodedata
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from app.models.tenant import TenantStatus
from app.schemas.common import MAX_PAGE, MAX_PAGE_SIZE, PageSchema, SafeString

STATUSES = tuple(status.value for status in TenantStatus)


class TenantName(SafeString):
    """A tenant name: 1-100 characters, no control characters (names go to logs and lists)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=validate.Length(1, 100), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if any(unicodedata.category(char) == "Cc" for char in text):
            raise ValidationError("must not contain control characters")
        return text


class TenantSchema(Schema):
    """A tenant as returned by the admin API."""

    id = fields.UUID(dump_only=True)
    name = fields.String(dump_only=True)
    status = fields.String(dump_only=True, metadata={"enum": list(STATUSES)})
    cluster = fields.String(dump_only=True)
    db_role = fields.String(dump_only=True, attribute="db_user")
    encryption_key_id = fields.String(
        dump_only=True,
        attribute="key_id",
        metadata={"description": "The keyring key its database password is encrypted under."},
    )
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class TenantWithKeySchema(TenantSchema):
    """A tenant and its new API key: shown in this response only, never stored."""

    api_key = fields.String(dump_only=True)


class TenantCreateSchema(Schema):
    name = TenantName(required=True)
    cluster = fields.String(
        validate=validate.Regexp(r"^[a-z][a-z0-9_-]{0,62}$"),
        metadata={"description": "The cluster to hold its rows (APP_CLUSTERS); default: default."},
    )


class TenantListQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE))
    page_size = fields.Integer(load_default=10, validate=validate.Range(1, MAX_PAGE_SIZE))
    status = fields.String(validate=validate.OneOf(STATUSES))


class TenantPageSchema(PageSchema):
    records = fields.List(fields.Nested(TenantSchema), required=True)
