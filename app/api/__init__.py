"""HTTP API v1: one blueprint per resource, health endpoints and the OpenAPI document.

Every :class:`Resource` declared at the top level of a module of this package is mounted at
``/v1/<name>`` and described in ``/openapi.json``: adding a resource is one module with its
declaration (docs/extending.md), nothing to register here.
"""

from __future__ import annotations

import importlib
import pkgutil

from flask import Flask

from app.api import admin, health, metrics, openapi
from app.api.resource import Resource, make_blueprint

# The Rust template's path of users, kept for its clients.
_ALSO_AT = {"users": ("/v1/internal/users",)}


def declared_resources() -> list[Resource]:
    """Every Resource declared in a module of this package, by name; a name is used once."""
    found: dict[str, Resource] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if not isinstance(value, Resource) or found.get(value.name) is value:
                continue
            if value.name in found:
                raise RuntimeError(f"two resources are named {value.name!r}; rename one")
            found[value.name] = value
    return [found[name] for name in sorted(found)]


# (resource, URL prefix), for the blueprints and the OpenAPI document.
MOUNTS: list[tuple[Resource, str]] = [
    (resource, prefix)
    for resource in declared_resources()
    for prefix in (f"/v1/{resource.name}", *_ALSO_AT.get(resource.name, ()))
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
