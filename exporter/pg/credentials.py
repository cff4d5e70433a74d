"""The password of each new connection, for servers whose passwords expire or rotate: a command, a file, or a cloud
token provider (Microsoft Entra ID, RDS IAM, Cloud SQL IAM) through its vendor's library, an optional extra.

A token is the password of a NEW connection only: an open session outlives its token, so a source is asked once per
connection attempt, never per statement. What each source caches:

- a command that prints plain text, a file, and aws: nothing; asked again for every connection (an RDS IAM token is
  signed locally, at no cost);
- a command that prints a JSON object with a token and its expiry, azure and gcp: the token, until EXPIRY_MARGIN
  before it expires, and never longer than MAX_REUSE.

`forget()` drops a cached token: after the server refused a credential, the next attempt fetches a fresh one.
Every failure is a `CredentialUnavailable` whose message names the source but never holds what it printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from exporter.core.settings import DEFAULT_COMMAND_TIMEOUT, PasswordSource
from exporter.errors import CredentialUnavailable
from exporter.pg.dsn import parse_dsn, scrub

MAX_REUSE = 86400.0
"""The longest a token is reused, whatever expiry it came with."""
MILLISECONDS = 1e11
"""An epoch expiry above this is in milliseconds (as seconds it would be after the year 5000)."""
EXPIRY_MARGIN = 60.0
"""A cached token is fetched again this many seconds before it expires: a connection attempt (DNS, TCP, TLS, the
authentication exchange) then never presents a token that expires on the way, even with a minute of clock skew."""

AZURE_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
"""The scope of Microsoft Entra ID tokens for Azure Database for PostgreSQL."""
GCP_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"
"""The scope of the OAuth 2.0 tokens of Cloud SQL IAM database logins."""

EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "azure": ("azure-identity", ("azure.identity",)),
    "aws": ("boto3", ("boto3",)),
    "gcp": ("google-auth", ("google.auth", "requests")),
}
"""Each provider's extra: the package named in the error, and the modules it needs."""

_TOKEN_KEYS = ("accessToken", "token", "password")
_EXPIRY_KEYS = ("expires_on", "expiresOn", "expires_at", "expiry")
"""az account get-access-token prints accessToken, expires_on (epoch seconds) and expiresOn (local time); other tools
say token or password, expires_at or expiry."""


def missing_extra(provider: str) -> str | None:
    """Why `provider` cannot run here ("azure needs azure-identity: pip install 'pgparent[azure]'"), None if it can."""
    package, modules = EXTRAS[provider]
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{provider} needs {package}: pip install 'pgparent[{provider}]'"
    return None


def _unavailable(what: str, provider: str) -> CredentialUnavailable:
    reason = missing_extra(provider) or f"{provider}'s package failed to import"
    return CredentialUnavailable(f"{what}: {reason}")


def _vendor(what: str, provider: str, *modules: str) -> list[Any]:
    """The vendor library's `modules`, imported when a source first needs them (the extra is optional); the error
    naming the extra to install when one is missing."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError:
        raise _unavailable(what, provider) from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@dataclass(frozen=True, slots=True)
class Token:
    """A password and, where its issuer says, when it expires (Unix time)."""

    value: str
    expires_at: float | None = None


class CredentialSource(Protocol):
    """Gives the password of the next connection attempt."""

    what: str
    """How errors and logs name the source: "password command az", never a secret."""

    def password(self) -> str:
        """The password to connect with now; CredentialUnavailable when there is none."""
        ...

    def forget(self) -> None:
        """Drop any cached token, so the next `password()` fetches a fresh one."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """What to scrub from messages: the tokens this source has given out."""
        ...


class _Source:
    """What every source shares: its name in errors, the secrets it gave out (to scrub from messages), and any error
    turned into CredentialUnavailable, so that a vendor library's surprise is an outage of the source, with its
    backoff, never a crashed poll; subclasses `_get`."""

    what = "password source"

    def __init__(self) -> None:
        self._given = ""

    def _get(self) -> str:
        raise NotImplementedError

    def password(self) -> str:
        try:
            value = self._get()
        except CredentialUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge of a vendor library: whatever it raises, say so
            detail = scrub(_first_line(str(exc)), "", *self.secrets())
            raise CredentialUnavailable(f"{self.what}: {type(exc).__name__}: {detail}") from None
        self._given = value
        return value

    def forget(self) -> None:
        """Nothing cached by default: each connection asks anew."""

    def secrets(self) -> tuple[str, ...]:
        return (self._given,) if self._given else ()


class _Caching(_Source):
    """A source whose tokens are reused until EXPIRY_MARGIN before they expire, and never for more than MAX_REUSE
    (an expiry a day or more away is more likely misread than meant); subclasses `_fetch`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._cached: Token | None = None

    def _fetch(self) -> Token:
        raise NotImplementedError

    def _get(self) -> str:
        cached, now = self._cached, self._clock()
        if cached is None or cached.expires_at is None or now >= cached.expires_at - EXPIRY_MARGIN:
            cached = self._fetch()
            if not cached.value:
                raise CredentialUnavailable(f"{self.what}: the token is empty")
            if cached.expires_at is not None:
                cached = Token(cached.value, min(cached.expires_at, now + MAX_REUSE))
            self._cached = cached if cached.expires_at is not None else None
        return cached.value

    def forget(self) -> None:
        self._cached = None


def _epoch(value: object) -> float | None:
    """Unix time from epoch seconds (a number or digits) or ISO 8601 (naive: local time, as az prints expiresOn);
    None when it is neither, or not a finite moment (a NaN expiry would otherwise keep a token forever)."""
    if isinstance(value, bool):
        return None
    seconds: float | None = None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except (ValueError, OverflowError, OSError):
                return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return seconds / 1000 if seconds > MILLISECONDS else seconds


def parse_output(text: str) -> Token:
    """What a password command printed (stripped): a JSON object with a token and an expiry, else the password.

    A JSON object without a token is an error; one whose expiry is missing or unreadable gives a token used once
    (the command runs again for the next connection: slower, never wrong)."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # a password may begin with a brace
        if isinstance(data, dict):
            token = next((v for k in _TOKEN_KEYS if isinstance(v := data.get(k), str) and v), None)
            if token is None:
                raise ValueError(f"printed a JSON object with none of {', '.join(_TOKEN_KEYS)}")
            expiry = next((e for k in _EXPIRY_KEYS if k in data and (e := _epoch(data[k])) is not None), None)
            return Token(token, expiry)
    return Token(text)


class CommandSource(_Caching):
    """Runs `argv` (no shell) for each new connection, within `timeout` seconds; its stdout is the password, or a
    JSON object with a token reused until shortly before its expiry."""

    def __init__(self, argv: tuple[str, ...], timeout: float = DEFAULT_COMMAND_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.argv, self.timeout = argv, timeout
        self.what = f"password command {argv[0]}"

    def _fetch(self) -> Token:
        try:
            # A session of its own, so that a timeout kills the whole process group: a shell's children would
            # otherwise keep the pipes open and the wait would never end.
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise CredentialUnavailable(f"{self.what}: cannot run it: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=1.0)
            raise CredentialUnavailable(f"{self.what}: timed out after {self.timeout:g}s") from None
        text = out.decode("utf-8", errors="replace").strip()
        if proc.returncode != 0:
            status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                      else f"exit status {proc.returncode}")
            raise CredentialUnavailable(f"{self.what}: {status}{self._stderr(err, text)}")
        if not text:
            raise CredentialUnavailable(f"{self.what}: printed nothing on stdout{self._stderr(err, text)}")
        try:
            return parse_output(text)
        except ValueError as exc:
            raise CredentialUnavailable(f"{self.what}: {exc}") from None

    def _stderr(self, err: bytes, out: str) -> str:
        """The first line of stderr, with anything the command printed on stdout (and any token given out) masked."""
        line = _first_line(err.decode("utf-8", errors="replace"))
        if not line:
            return ""
        masks = [*out.splitlines(), *self.secrets()]
        with contextlib.suppress(ValueError):  # the token of a JSON object printed over several lines
            masks.append(parse_output(out).value)
        return ": " + scrub(line, "", *masks)


class FileSource(_Source):
    """The first line of a file, read again for each new connection (a rotated secret mounted from a vault)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.what = f"password file {path}"

    def _get(self) -> str:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CredentialUnavailable(f"{self.what}: cannot read it: {reason}") from None
        value = _first_line(text)
        if not value:
            raise CredentialUnavailable(f"{self.what}: the file is empty")
        return value


class TokenCredential(Protocol):
    """azure-core's TokenCredential, as far as this module uses it (DefaultAzureCredential is one)."""

    def get_token(self, *scopes: str) -> Any: ...


class AzureSource(_Caching):
    """Microsoft Entra ID tokens from azure-identity's DefaultAzureCredential (managed identity, workload identity,
    environment, Azure CLI, ...), or from the `credential` given."""

    what = "password provider azure"

    def __init__(self, client_id: str | None = None, scope: str | None = None,
                 credential: TokenCredential | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.client_id, self.scope = client_id, scope or AZURE_SCOPE
        self._credential = credential
        self._made = False

    def _fetch(self) -> Token:
        (errors,) = _vendor(self.what, "azure", "azure.core.exceptions")
        try:
            credential = self._credential or self._default()
            token = credential.get_token(self.scope)
        except errors.AzureError as exc:
            raise CredentialUnavailable(f"{self.what}: {_first_line(exc.message or str(exc))}") from None
        return Token(str(token.token), float(token.expires_on))

    def _default(self) -> TokenCredential:
        (identity,) = _vendor(self.what, "azure", "azure.identity")
        # Made once: it caches tokens itself and keeps its chain's HTTP sessions.
        ids = {"managed_identity_client_id": self.client_id, "workload_identity_client_id": self.client_id}
        self._credential = identity.DefaultAzureCredential(**(ids if self.client_id else {}))
        self._made = True
        return self._credential

    def forget(self) -> None:
        """Drop the token and the DefaultAzureCredential made for it, whose own cache would hand the refused token
        out again; a credential given stays (its owner decides what it caches)."""
        super().forget()
        if self._made:
            self._credential, self._made = None, False


class AwsSource(_Source):
    """RDS IAM tokens from boto3's `generate_db_auth_token`, for the DSN's host, port and user: signed locally (no
    request), so one is made for every connection; they last 15 minutes."""

    what = "password provider aws"

    def __init__(self, host: str, port: int, user: str, region: str | None = None, client: Any = None) -> None:
        super().__init__()
        self.host, self.port, self.user, self.region = host, port, user, region
        self._client = client

    def _get(self) -> str:
        (errors,) = _vendor(self.what, "aws", "botocore.exceptions")
        try:
            client = self._client or self._make_client()
            region = self.region or client.meta.region_name
            if not region:
                raise CredentialUnavailable(f"{self.what}: no region: set password.region (--password.region), "
                                            "AWS_REGION or a region in ~/.aws/config")
            token = str(client.generate_db_auth_token(DBHostname=self.host, Port=self.port, DBUsername=self.user,
                                                      Region=region))
        except (errors.BotoCoreError, errors.ClientError) as exc:  # ClientError: a chain that asks STS (a role)
            raise CredentialUnavailable(f"{self.what}: {_first_line(str(exc))}") from None
        return token

    def _make_client(self) -> Any:
        (session,) = _vendor(self.what, "aws", "boto3.session")
        # Made once: it holds the credential chain's resolved credentials (refreshed by botocore as they expire). A
        # session of its own rather than boto3's default one, which is not safe to share between targets' threads.
        # AWS_REGION (what ECS, Lambda and EKS set) before boto3's own chain, which reads AWS_DEFAULT_REGION only.
        region = self.region or os.environ.get("AWS_REGION") or None
        self._client = session.Session().client("rds", region_name=region)
        return self._client


class GcpSource(_Caching):
    """Cloud SQL IAM tokens from google-auth's application default credentials (a service account key, workload
    identity, the metadata server, gcloud's login), or from the `credentials` given, refreshed over HTTP."""

    what = "password provider gcp"

    def __init__(self, credentials: Any = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._credentials = credentials

    def _fetch(self) -> Token:
        auth, errors, transport = _vendor(self.what, "gcp", "google.auth", "google.auth.exceptions",
                                          "google.auth.transport.requests")
        try:
            if self._credentials is None:
                self._credentials, _ = auth.default(scopes=[GCP_SCOPE])
            credentials = self._credentials
            credentials.refresh(transport.Request())
        except errors.GoogleAuthError as exc:
            raise CredentialUnavailable(f"{self.what}: {_first_line(str(exc))}") from None
        expiry = credentials.expiry  # naive UTC, as google-auth keeps it
        expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry is not None else None
        return Token(str(credentials.token or ""), expires_at)


def problems(spec: PasswordSource, dsn: str | None) -> list[tuple[str, str]]:
    """What keeps `spec` from giving passwords for `dsn` (None: not known yet), as (field, message) pairs: a
    provider whose extra is not installed, a DSN that carries a password of its own, or lacks what aws signs for."""
    out: list[tuple[str, str]] = []
    if spec.provider is not None and (missing := missing_extra(spec.provider)) is not None:
        out.append(("provider", missing))
    if dsn is None:
        return out
    params = parse_dsn(dsn)
    if params.get("password"):
        # Refused rather than one of them preferred: a static password left in a DSN beside a source is a secret
        # lying around that no longer works, or the one an operator believes is used.
        out.append(("", "the DSN also carries a password: remove it, since each connection's password comes from "
                        "this source"))
    if spec.provider == "aws":
        host, port, user = (str(params.get(k) or "") for k in ("host", "port", "user"))
        if not host or host.startswith("/") or "," in host:
            out.append(("provider", "aws signs a token for one host: the DSN needs host=HOST (one, not a socket "
                                    "directory)"))
        if not user:
            out.append(("provider", "aws signs a token for one user: the DSN needs user=NAME"))
        if port and not port.isdigit():
            out.append(("provider", "aws signs a token for one port: the DSN's port must be one number"))
    return out


def credential_source(spec: PasswordSource, dsn: str) -> CredentialSource:
    """The source `spec` describes, for connections to `dsn` (`problems` found nothing in it)."""
    if spec.command is not None:
        return CommandSource(spec.command, spec.command_timeout)
    if spec.file is not None:
        return FileSource(spec.file)
    if spec.provider == "azure":
        return AzureSource(spec.client_id, spec.scope)
    if spec.provider == "aws":
        params = parse_dsn(dsn)
        return AwsSource(str(params["host"]), int(params.get("port") or 5432), str(params["user"]), spec.region)
    return GcpSource()
