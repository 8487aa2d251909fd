"""Alembic environment: runs migrations as the owner role of the database being migrated.

The URL comes from ``config.attributes["url"]`` (set by ``flask db`` once per database: the
control plane, then each cluster of ``APP_CLUSTERS``; every one gets the same schema), else
from ``APP_DATABASE_URL``. Offline mode is not supported: role and policy DDL is run online.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from app.db import Base
from app.models import Gateway, Product, Tenant, TenantPlacement, User  # noqa: F401  (tables)
from config import load_settings

config = context.config
url = config.attributes.get("url") or load_settings().database_url
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
