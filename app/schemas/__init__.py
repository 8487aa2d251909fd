"""Marshmallow schemas per resource: input validation, output shape, OpenAPI source."""
