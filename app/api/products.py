"""``/v1/products``: tenant-scoped, unlike the template's global dummy."""

from app.api.resource import Resource
from app.models import Product
from app.schemas.products import (
    ProductCreateSchema,
    ProductListQuerySchema,
    ProductPageSchema,
    ProductPatchSchema,
    ProductSchema,
)

PRODUCTS = Resource(
    name="products",
    title="Product",
    model=Product,
    output=ProductSchema(),
    create=ProductCreateSchema(),
    patch=ProductPatchSchema(),
    query=ProductListQuerySchema(),
    page=ProductPageSchema,
)
