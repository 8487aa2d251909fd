"""Alembic environment: runs migrations as the owner role of the database being migrated.

The URL comes from ``config.attributes["url"]`` (set by ``flask db`` once per database: the
control plane, then each cluster of ``APP_CLUSTERS``; every one gets the same schema), else
from ``APP_DATABASE_URL``. Offline mode is not supported: role and policy DDL is run online.

``flask db revision --autogenerate`` compares ``app.models.metadata`` (every model) with the
database and writes tenant tables through the tenancy helpers
(``app/tenancy/control/autogen.py``).
"""

from alembic import context
from sqlalchemy import create_engine, pool

from app.dbwait import keepalive_args
from app.models import metadata
from app.tenancy.control.autogen import include_object, tenancy_directives
from config import load_settings

config = context.config
url = config.attributes.get("url") or load_settings().database_url
# Keepalives: a migration on a server that dies (a failover) fails in seconds, not hours.
engine = create_engine(url, poolclass=pool.NullPool, connect_args=keepalive_args(10))
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transaction_per_migration=True,
        include_object=include_object,
        process_revision_directives=tenancy_directives,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
