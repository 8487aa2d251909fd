"""The WSGI application (gunicorn, ``flask --app wsgi``); a bad setting is one line."""

from app import create_app
from config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    raise SystemExit(f"tenantpool: configuration error: {error}") from None
