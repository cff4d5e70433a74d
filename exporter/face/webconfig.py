"""`--web.config.file`: TLS and basic auth for the HTTP face, in the Prometheus exporter-toolkit format.

```yaml
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_ca_file: ca.crt              # optional: verify client certificates against it
  client_auth_type: RequireAndVerifyClientCert
  min_version: TLS12
basic_auth_users:
  prometheus: $2b$12$...              # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\n')
http_server_config:
  headers: {X-Frame-Options: deny}
```
Relative file names are taken from the config file's folder, as exporter-toolkit does.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
from pathlib import Path
from typing import Literal

import h11
from pydantic import Field, field_validator, model_validator

from exporter.config import load_yaml
from exporter.core.settings import StrictModel, parse_model
from exporter.errors import ConfigInvalid

ClientAuth = Literal[
    "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
]
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
MAX_PASSWORD_BYTES = 72
"""bcrypt reads at most this much of a password; bcrypt 5 raises for longer ones instead of truncating them."""
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


class TLSServerConfig(StrictModel):
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_type: ClientAuth = "NoClientCert"
    min_version: TLSVersion = "TLS12"
    max_version: TLSVersion = "TLS13"

    @model_validator(mode="after")
    def _ca_for_client_certs(self) -> TLSServerConfig:
        if self.client_auth_type != "NoClientCert" and not self.client_ca_file:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file to verify against")
        return self


class HTTPServerConfig(StrictModel):
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every response. h11 writes the responses and refuses a header it finds invalid, so each is checked
    here, where it is a config error, instead of failing every request."""

    @field_validator("headers")
    @classmethod
    def _sendable(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if name.lower() in _FRAMING:
                raise ValueError(f"{name}: set by pgparent for each response (how its body is framed)")
            try:
                h11.Response(status_code=200, headers=[(name, value)])
            except h11.LocalProtocolError as exc:
                raise ValueError(f"{name!r}: not a valid HTTP header ({exc})") from None
        return headers


class WebConfig(StrictModel):
    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    http_server_config: HTTPServerConfig = HTTPServerConfig()

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if not _BCRYPT.fullmatch(hashed):
                raise ValueError(f"user {user!r}: expected a bcrypt hash ($2y$..., 60 characters)")
        return users


def load_web_config(path: str | Path) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Parse and validate the file, and build its TLS context (so unreadable keys are config errors, exit 2)."""
    source = str(path)
    web = parse_model(WebConfig, load_yaml(path), source)
    tls = web.tls_server_config
    if tls is None:
        return web, None
    base = Path(path).parent

    def resolve(name: str) -> str:
        return str(base / name) if not Path(name).is_absolute() else name

    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[tls.min_version]
        context.maximum_version = _VERSIONS[tls.max_version]
        context.load_cert_chain(resolve(tls.cert_file), resolve(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigInvalid([f"{source}: tls_server_config: cannot load cert_file/key_file: {exc}"]) from None
    if tls.client_ca_file:
        try:
            context.load_verify_locations(resolve(tls.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigInvalid([f"{source}: tls_server_config.client_ca_file: cannot load: {exc}"]) from None
        # Python's ssl verifies whatever client certificate it accepts: "Request"/"Any" behave as "VerifyIfGiven"/
        # "RequireAndVerify" against client_ca_file.
        optional = tls.client_auth_type in ("RequestClientCert", "VerifyClientCertIfGiven")
        context.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
    return web, context


class BasicAuth:
    """Checks `Authorization: Basic` credentials against bcrypt hashes.

    `check` costs one bcrypt computation whatever the user name: an unknown user is checked against the costliest
    configured hash and refused whatever the outcome, so timing cannot tell user names apart (exporter-toolkit checks
    unknown users against a dummy hash for the same reason). A password longer than bcrypt's 72 bytes is refused
    without hashing: no bcrypt tool makes a hash for one, and truncating it would accept a different password.
    Credentials that passed are remembered (a sha256 of user, password and hash), so `passed` answers the scrapes that
    follow without bcrypt's deliberate cost (exporter-toolkit caches the same way).
    """

    def __init__(self, users: dict[str, str]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self._users = {u: h.encode() for u, h in users.items()}
        self._dummy = max(self._users.values(), key=lambda h: int(h[4:6]))  # the cost: "$2b$12$..."
        self._passed: set[bytes] = set()
        self._lock = threading.Lock()

    def knows(self, user: str) -> bool:
        return user in self._users

    @staticmethod
    def _digest(user: str, password: str, hashed: bytes) -> bytes:
        return hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).digest()

    def passed(self, user: str, password: str) -> bool:
        """True if these exact credentials passed `check` before: a set lookup, no bcrypt."""
        hashed = self._users.get(user)
        if hashed is None:
            return False
        digest = self._digest(user, password, hashed)
        with self._lock:
            return digest in self._passed

    def check(self, user: str, password: str) -> bool:
        """The bcrypt check (deliberately slow: about 0.3 s at cost 12); remembers credentials that pass."""
        import bcrypt  # here, not at the top: a daemon without basic auth never loads it

        secret = password.encode()
        if len(secret) > MAX_PASSWORD_BYTES:
            return False
        hashed = self._users.get(user)
        if hashed is None:
            bcrypt.checkpw(secret, self._dummy)  # the cost of a known user's wrong password, result ignored
            return False
        if not bcrypt.checkpw(secret, hashed):
            return False
        with self._lock:
            self._passed.add(self._digest(user, password, hashed))
        return True
