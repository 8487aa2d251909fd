"""The fast dumper gives exactly what marshmallow's ``dump`` gives, field by field."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest
from marshmallow import Schema, fields

from app.models import User
from app.models.product import Product
from app.schemas.common import dumper
from app.schemas.products import ProductSchema
from app.schemas.users import UserSchema

NOW = dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize("email", ["ada@example.com", None])
def test_dumper_users_match_marshmallow(email: str | None) -> None:
    user = User(
        id=uuid.uuid4(),
        first_name="Ada",
        last_name="Lovelace",
        email=email,
        confirmed=True,
        created_at=NOW,
        updated_at=NOW + dt.timedelta(seconds=1),
    )
    assert dumper(UserSchema())(user) == UserSchema().dump(user)


@pytest.mark.parametrize("price", ["0", "1.5", "9999999999.99"])
def test_dumper_products_match_marshmallow(price: str) -> None:
    product = Product(
        id=uuid.uuid4(),
        name="Widget",
        description=None,
        price=decimal.Decimal(price),
        stock=3,
        created_at=NOW,
        updated_at=NOW,
    )
    assert dumper(ProductSchema())(product) == ProductSchema().dump(product)


def test_dumper_falls_back_to_marshmallow_for_other_fields() -> None:
    class Odd(Schema):
        when = fields.DateTime(format="%Y")
        amount = fields.Float()
        renamed = fields.String(data_key="name", attribute="label")

    class Row:
        when = NOW
        amount = 2
        label = "x"

    assert dumper(Odd())(Row()) == Odd().dump(Row()) == {"when": "2024", "amount": 2.0, "name": "x"}
