"""``/v1/users`` (and the Rust template's ``/v1/internal/users``)."""

from app.api.resource import Resource
from app.models import User
from app.schemas.users import (
    UserCreateSchema,
    UserListQuerySchema,
    UserPageSchema,
    UserPatchSchema,
    UserSchema,
)

USERS = Resource(
    name="users",
    title="User",
    model=User,
    output=UserSchema(),
    create=UserCreateSchema(),
    patch=UserPatchSchema(),
    query=UserListQuerySchema(),
    page=UserPageSchema,
    filters=("confirmed",),
)
