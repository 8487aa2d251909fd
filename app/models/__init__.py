"""Models: the control-plane ``Tenant`` and the tenant-scoped resources."""

from app.models.product import Product
from app.models.tenant import Tenant, TenantStatus
from app.models.user import User

__all__ = ["Product", "Tenant", "TenantStatus", "User"]
