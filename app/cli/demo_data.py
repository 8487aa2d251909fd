"""The rows ``flask seed-tenants`` writes: varied, deterministic, recognisable.

Each row is a pure function of the tenant's position among the seeded tenants and the row's
number, so seeding again gives the same names, and a top-up continues where the last run
stopped. Written through the tenant's own session, like any request (the owner never
writes tenant rows).
"""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from app.models import Product, User
from app.models.order import ORDER_STATUSES, Order

# 12 and 11 names: coprime, so a tenant's first 132 users are 132 different people.
FIRST_NAMES = (
    *("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald"),
    *("Frances", "Ken", "Margaret", "Dennis", "Radia", "John"),
)
LAST_NAMES = (
    *("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth"),
    *("Allen", "Thompson", "Hamilton", "Ritchie", "Perlman"),
)
_PEOPLE = len(FIRST_NAMES) * len(LAST_NAMES)
PRODUCTS = (
    ("Notebook", "A5, dotted, 96 pages", "4.50"),
    ("Fountain pen", "Steel nib, blue ink", "24.00"),
    ("Desk lamp", "LED, warm white", "39.90"),
    ("Mechanical keyboard", "Tenkeyless, brown switches", "89.00"),
    ("Coffee mug", "Stoneware, 350 ml", "12.00"),
    ("Backpack", "20 l, water resistant", "64.50"),
    ("Headphones", "Closed back, wired", "79.00"),
    ("Plant pot", "Terracotta, 14 cm", "8.90"),
)
_TENANT_STRIDE = 5  # tenants start at different people and products


def user_row(tenant: int, number: int, domain: str) -> dict[str, Any]:
    """User ``number`` of the ``tenant``-th seeded tenant; emails at ``domain``."""
    at = number + _TENANT_STRIDE * tenant
    first, last = FIRST_NAMES[at % len(FIRST_NAMES)], LAST_NAMES[at % len(LAST_NAMES)]
    again = number // _PEOPLE  # past 132 users, names repeat and emails get a number
    suffix = str(again + 1) if again else ""
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{first.lower()}.{last.lower()}{suffix}@{domain}",
        "confirmed": at % 3 != 0,
    }


def product_row(tenant: int, number: int) -> dict[str, Any]:
    """Product ``number`` of the ``tenant``-th seeded tenant."""
    name, description, price = PRODUCTS[(number + _TENANT_STRIDE * tenant) % len(PRODUCTS)]
    again = number // len(PRODUCTS)
    return {
        "name": f"{name} ({again + 1})" if again else name,
        "description": description,
        "price": decimal.Decimal(price),
        "stock": (7 * number + tenant) % 50,
    }


def order_row(
    tenant: int, number: int, users: list[uuid.UUID], products: list[uuid.UUID]
) -> dict[str, Any]:
    """Order ``number``: one of ``users`` orders one of ``products`` (both non-empty)."""
    at = number + tenant
    return {
        "user_id": users[(2 * number + tenant) % len(users)],
        "product_id": products[at % len(products)],
        "quantity": 1 + at % 4,
        "status": ORDER_STATUSES[at % len(ORDER_STATUSES)],
    }


def top_up(
    session: orm.Session, tenant: int, domain: str, *, users: int, products: int, orders: int
) -> None:
    """Give the tenant at least that many users, products and orders (none removed)."""
    _top_up(session, User, users, lambda n: user_row(tenant, n, domain))
    if products:
        _top_up(session, Product, products, lambda n: product_row(tenant, n))
    if orders:
        order = sa.select(User.id).order_by(User.created_at, User.id)
        user_ids = list(session.scalars(order))
        by_age = sa.select(Product.id).order_by(Product.created_at, Product.id)
        product_ids = list(session.scalars(by_age))
        if user_ids and product_ids:
            _top_up(session, Order, orders, lambda n: order_row(tenant, n, user_ids, product_ids))


def _top_up(
    session: orm.Session, model: type[Any], wanted: int, row: Callable[[int], dict[str, Any]]
) -> None:
    have = session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    rows = [row(number) for number in range(have, wanted)]
    if rows:
        session.execute(sa.insert(model), rows)
