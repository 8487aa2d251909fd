"""Models: the control plane (``Tenant``, ``Gateway``), placements, tenant-scoped resources."""

from app.models.gateway import Gateway
from app.models.placement import TenantPlacement
from app.models.product import Product
from app.models.tenant import Tenant, TenantStatus
from app.models.user import User

__all__ = ["Gateway", "Product", "Tenant", "TenantPlacement", "TenantStatus", "User"]
