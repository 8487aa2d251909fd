"""Settings of tenantpool, read once from ``APP_*`` environment variables.

``load_settings()`` is the only place that reads the environment. Every value is coerced
and validated there; a bad one raises :class:`ConfigError` whose message is one line
naming the variable and what is wrong, so start-up stops with that line.
"""

from config.reader import ConfigError
from config.settings import Settings, load_settings, psycopg2_url

__all__ = ["ConfigError", "Settings", "load_settings", "psycopg2_url"]
