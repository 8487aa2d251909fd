"""A JSON schema for docker/compose.yaml: the part of the Compose file format this repo uses.

Written here from the Compose Specification's documented fields (no copy of its schema):
the top-level keys, each service key this project uses with its type, the ``depends_on``
conditions and ``restart`` policies compose accepts. An unknown or misspelt key, or a value
of the wrong type, fails the check; `docker compose config` (where a v2 CLI exists) is the
full check.
"""

from __future__ import annotations

from typing import Any

_STRING_LIST = {"type": "array", "items": {"type": "string"}}
_DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(us|ms|s|m|h)$"}
_INTEGER_OR_VARIABLE = {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": r"^\$\{"}]}

_SERVICE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "image": {"type": "string"},
        "build": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
        },
        "command": {"oneOf": [{"type": "string"}, _STRING_LIST]},
        "entrypoint": {"oneOf": [{"type": "string"}, _STRING_LIST]},
        "environment": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
        "volumes": _STRING_LIST,
        # Published on the loopback interface only: the host's firewall is not ours to trust.
        "ports": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^127\.0\.0\.1:.+:[0-9]+$"},
        },
        "depends_on": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["condition"],
                "properties": {
                    "condition": {
                        "enum": [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully",
                        ]
                    }
                },
            },
        },
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "required": ["test"],
            "properties": {
                "test": _STRING_LIST,
                "interval": _DURATION,
                "timeout": _DURATION,
                "start_period": _DURATION,
                "retries": {"type": "integer"},
            },
        },
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "profiles": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9_-]+$"}},
        "user": {"type": "string"},
        "deploy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"replicas": _INTEGER_OR_VARIABLE},
        },
    },
}

COMPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {"type": "object", "additionalProperties": _SERVICE},
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    },
}
