"""The fast dumper gives exactly what marshmallow's ``dump`` gives, field by field."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from marshmallow import Schema, fields

from app.json_provider import OrjsonProvider
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


@pytest.mark.parametrize("model", [User, Product])
@pytest.mark.parametrize("time_zone", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("when", [NOW, NOW.replace(microsecond=0)])
def test_row_dumper_writes_the_json_that_marshmallow_dump_writes(
    settings: Settings, model: Any, time_zone: str, when: dt.datetime
) -> None:
    """A page's rows, as PostgreSQL returns them (UUIDs, timestamps in the session's zone, a
    Decimal, a NULL), lead with the output's columns, then carry more (the list's total)."""
    schema = {User: UserSchema, Product: ProductSchema}[model]()
    values = {
        "id": uuid.uuid4(),
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": None,
        "confirmed": True,
        "name": "Widget",
        "description": None,
        "price": decimal.Decimal("1.5"),
        "stock": 3,
        "created_at": when,
        "updated_at": when + dt.timedelta(seconds=1),
    }
    table = model.__table__
    selected = [
        sa.literal(values[name], table.c[name].type).label(name) for name in schema.dump_fields
    ]
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            zone = sa.text("SELECT set_config('TimeZone', :zone, false)")
            connection.execute(zone, {"zone": time_zone})
            row = connection.execute(sa.select(*selected, sa.literal(7).label("_total"))).one()
    finally:
        engine.dispose()
    json = OrjsonProvider(Flask(__name__))
    written = json.dumps(row_dumper(schema)(row))
    assert written == json.dumps(schema.dump(row)) == json.dumps(dumper(schema)(row))
    assert ('"price":"1.50"' in written) is (model is Product)
    assert f'"created_at":"{row.created_at.isoformat()}"' in written
