"""The fast dumper gives exactly what marshmallow's ``dump`` gives, field by field."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest
import sqlalchemy as sa
from marshmallow import Schema, fields

from app.models import User
from app.models.product import Product
from app.schemas.common import dumper, row_dumper
from app.schemas.products import ProductSchema
from app.schemas.users import UserSchema
from config import Settings

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


def test_row_dumper_takes_values_by_position_as_dumper_takes_them_by_name(
    settings: Settings,
) -> None:
    """A page's rows lead with the output's columns, then carry more (the list's total)."""
    engine = sa.create_engine(settings.database_url)
    columns = {
        "id": sa.literal(str(uuid.uuid4())).label("id"),
        "name": sa.literal("Widget").label("name"),
        "description": sa.null().label("description"),
        "price": sa.literal(decimal.Decimal("1.5"), sa.Numeric(12, 2)).label("price"),
        "stock": sa.literal(3).label("stock"),
        "created_at": sa.literal(NOW, sa.DateTime(timezone=True)).label("created_at"),
        "updated_at": sa.literal(NOW, sa.DateTime(timezone=True)).label("updated_at"),
    }
    selected = [columns[name] for name in ProductSchema().dump_fields]
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.select(*selected, sa.literal(7).label("_total"))).one()
    finally:
        engine.dispose()
    dumped = row_dumper(ProductSchema())(row)
    assert dumped == dumper(ProductSchema())(row)
    assert dumped["price"] == "1.50"
    assert dumped["description"] is None
    assert dumped["created_at"] == NOW.isoformat()
