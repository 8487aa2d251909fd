"""Models: the control plane (``Tenant``, ``Gateway``), placements, tenant-scoped resources.

Every module of this package is imported here, so ``metadata`` holds every table as soon as
``app.models`` is imported (by the app, by ``migrations/env.py`` for autogenerate, by the
error handlers that name a violated constraint's fields): a new model is one new module.
"""

import importlib
import pkgutil

from app.db import Base
from app.models.gateway import Gateway
from app.models.placement import TenantPlacement
from app.models.product import Product
from app.models.tenant import Tenant, TenantStatus
from app.models.user import User

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

metadata = Base.metadata
"""Every table of every model."""

__all__ = ["Gateway", "Product", "Tenant", "TenantPlacement", "TenantStatus", "User", "metadata"]
