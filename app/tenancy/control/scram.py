"""Client-side SCRAM-SHA-256 verifiers for tenant roles (DESIGN section 6).

We hand PostgreSQL a verifier instead of a password so the password never appears in a
server statement log. The iteration count is low on purpose: PBKDF2 iterations only slow
down guessing of weak passwords, and ours are 256-bit random strings, so a high count would
only add cost to every new tenant connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Final

__all__ = ["generate_password", "is_scram_verifier", "scram_sha256_verifier"]

DEFAULT_ITERATIONS: Final = 64
# PostgreSQL's own default salt length (SCRAM_DEFAULT_SALT_LEN).
DEFAULT_SALT_BYTES: Final = 16
_KEY_BYTES: Final = hashlib.sha256().digest_size

_B64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
# A verifier is embedded in a CREATE ROLE statement, so this admits nothing but the
# base64 alphabet, digits and the separators: no quote can get through.
_VERIFIER = re.compile(
    rf"SCRAM-SHA-256\$(?P<iterations>[1-9][0-9]{{0,9}}):(?P<salt>{_B64})"
    rf"\$(?P<stored>{_B64}):(?P<server>{_B64})",
    re.ASCII,
)


def generate_password() -> str:
    """A fresh random tenant password: 32 random bytes (256 bits), urlsafe base64 text."""
    return secrets.token_urlsafe(32)


def scram_sha256_verifier(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    Returns ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` in standard
    padded base64, exactly as PostgreSQL writes it. ``salt`` defaults to 16 random bytes.

    Raises ValueError for a password that is empty or not printable ASCII. The RFC
    requires SASLprep (RFC 4013) on the password first; for printable ASCII SASLprep is
    the identity, and our passwords come from :func:`generate_password`, so we refuse
    anything else rather than implement SASLprep and risk a verifier that does not match
    what PostgreSQL computes at login.
    """
    if not password:
        raise ValueError("password must not be empty")
    if not (password.isascii() and password.isprintable()):
        raise ValueError(
            "password must be printable ASCII (SASLprep is not implemented); "
            "use generate_password()"
        )
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if salt is None:
        salt = secrets.token_bytes(DEFAULT_SALT_BYTES)
    elif not salt:
        raise ValueError("salt must not be empty")

    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def is_scram_verifier(text: str) -> bool:
    """Whether ``text`` is a well-formed SCRAM-SHA-256 verifier, checked strictly.

    Used before a verifier is embedded in a CREATE ROLE statement: only the exact format
    with canonical base64, a non-empty salt and 32-byte keys passes.
    """
    match = _VERIFIER.fullmatch(text)
    if match is None:
        return False
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        stored = base64.b64decode(match["stored"], validate=True)
        server = base64.b64decode(match["server"], validate=True)
    except binascii.Error:
        return False
    return (
        len(salt) > 0
        and len(stored) == _KEY_BYTES
        and len(server) == _KEY_BYTES
        # Canonical encodings only, so the text PostgreSQL stores is the text we checked.
        and (_b64(salt), _b64(stored), _b64(server))
        == (match["salt"], match["stored"], match["server"])
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
