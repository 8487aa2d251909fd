"""What the local PostgreSQL tooling raises; each message is one line for the operator.

Apart from the cluster so that the modules below it (binaries, the server account) can
raise them without importing the cluster.
"""


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries of a supported version; the message says how to install."""


class ClusterError(RuntimeError):
    """The local cluster cannot be set up or started; the message is one line for the operator."""
