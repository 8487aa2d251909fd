"""The control plane: what an operator runs now and then, never on a request's hot path.

Provisioning, credential rotation and re-keying, moves between clusters, cluster
placement, the isolation check, the DDL of tenant tables, audit lines and SCRAM verifiers.
May import ``app.tenancy.serving`` and ``app.tenancy.errors``; the data path never
imports this package.
"""
