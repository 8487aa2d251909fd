"""Models: the control-plane ``Tenant``, each cluster's placements, the tenant-scoped resources."""

from app.models.placement import TenantPlacement
from app.models.product import Product
from app.models.tenant import Tenant, TenantStatus
from app.models.user import User

__all__ = ["Product", "Tenant", "TenantPlacement", "TenantStatus", "User"]
