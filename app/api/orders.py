"""``/v1/orders``: a user of the tenant orders a quantity of one of its products."""

from app.api.resource import Resource
from app.models.order import Order
from app.schemas.orders import (
    OrderCreateSchema,
    OrderListQuerySchema,
    OrderPageSchema,
    OrderPatchSchema,
    OrderSchema,
)

ORDERS = Resource(
    name="orders",
    title="Order",
    model=Order,
    output=OrderSchema(),
    create=OrderCreateSchema(),
    patch=OrderPatchSchema(),
    query=OrderListQuerySchema(),
    page=OrderPageSchema,
    filters=("user_id", "product_id", "status"),
)
