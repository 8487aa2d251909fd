"""Development and test tooling: a project-local PostgreSQL, PgBouncer, and ``make run``.

Not part of the product: no module outside ``app.dev`` imports it (tests/test_layout.py),
and the Docker image leaves it out (.dockerignore).
"""
