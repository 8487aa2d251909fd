"""``make run``'s stand-in identity provider: a signing key under var/, its JWKS, demo tokens.

Development only. The key (EC P-256, ES256) is made once into ``var/dev-jwt-key.pem``
(mode 0600) and kept; its public half is served as a JWKS on 127.0.0.1 from the ``make
run`` process for as long as it runs, and the service is pointed at it
(``APP_JWT_JWKS_URL``, ``APP_JWT_ISSUER``, ``APP_JWT_AUDIENCE``). Each demo tenant gets two
tokens, printed at start and written to ``var/demo-tokens.json`` (mode 0600) for the
README's examples: an end user with the admin role (sees all of the tenant's orders) and
one without (sees only their own). They name this run's issuer: a restart makes new ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

AUDIENCE = "tenantpool"
KID = "dev-1"
TOKEN_HOURS = 12


class DevIdentityProvider:
    """The key, a JWKS endpoint on 127.0.0.1 (a daemon thread), and demo tokens."""

    def __init__(self, var: Path) -> None:
        self._key = _load_or_make_key(var / "dev-jwt-key.pem")
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        body = json.dumps({"keys": [{**public, "kid": KID, "alg": "ES256", "use": "sig"}]})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(body.encode()))
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        """The service's ``APP_JWT_*`` for this provider."""
        return {
            "APP_JWT_JWKS_URL": f"{self.issuer}jwks.json",
            "APP_JWT_ISSUER": self.issuer,
            "APP_JWT_AUDIENCE": AUDIENCE,
        }

    def token(self, tenant_id: str, subject: str, roles: list[str]) -> str:
        """A token for ``subject`` of ``tenant_id`` with ``roles``, valid TOKEN_HOURS hours."""
        now = int(time.time())
        claims: Mapping[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + TOKEN_HOURS * 3600,
            "tenant_id": tenant_id,
            "roles": roles,
        }
        return jwt.encode(dict(claims), self._key, algorithm="ES256", headers={"kid": KID})

    def write_demo_tokens(self, tenants: list[dict[str, str]], path: Path) -> list[dict[str, str]]:
        """Each tenant's ``admin`` and ``member`` tokens, also written to ``path`` (0600)."""
        tokens = [
            {
                "tenant": tenant["id"],
                "name": tenant["name"],
                "admin": self.token(tenant["id"], "demo-admin", ["admin"]),
                "member": self.token(tenant["id"], "demo-user-1", ["member"]),
            }
            for tenant in tenants
        ]
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(tokens, indent=2) + "\n")
        return tokens

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _load_or_make_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(pem)
    return key


def _handler(body: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/jwks.json"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet: the service fetches this now and then."""

    return Handler
