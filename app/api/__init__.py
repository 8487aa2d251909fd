"""HTTP API v1: one blueprint per resource, health endpoints and the OpenAPI document."""

from __future__ import annotations

from flask import Flask

from app.api import admin, health, metrics, openapi
from app.api.products import PRODUCTS
from app.api.resource import Resource, make_blueprint
from app.api.users import USERS

# (resource, URL prefix); /v1/internal/users is the Rust template's path, kept for its clients.
MOUNTS: list[tuple[Resource, str]] = [
    (USERS, "/v1/users"),
    (USERS, "/v1/internal/users"),
    (PRODUCTS, "/v1/products"),
]


def init_app(app: Flask) -> None:
    blueprints = {resource.name: make_blueprint(resource) for resource, _ in MOUNTS}
    for resource, prefix in MOUNTS:
        name = resource.name + ("_internal" if "/internal/" in prefix else "")
        app.register_blueprint(blueprints[resource.name], url_prefix=prefix, name=name)
    admin.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.make_blueprint(MOUNTS))
