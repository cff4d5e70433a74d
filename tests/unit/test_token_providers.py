"""The cloud token providers against their vendors' own libraries, offline: azure-core's token protocol, botocore's
real signer with static credentials, google-auth's service-account flow against a token endpoint on 127.0.0.1.

No test here reaches beyond loopback: no instance metadata service is asked (AWS_EC2_METADATA_DISABLED, explicit
credentials), and no credential chain that would probe one (DefaultAzureCredential, google.auth's metadata check)
runs unreplaced."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from exporter.core.settings import PasswordSource
from exporter.errors import CredentialUnavailable
from exporter.pg.credentials import (
    AZURE_SCOPE,
    EXPIRY_MARGIN,
    GCP_SCOPE,
    AwsSource,
    AzureSource,
    GcpSource,
    credential_source,
)
from tests.unit.factory import UnixClock

NOW = 1_800_000_000.0



# --- azure --------------------------------------------------------------------------------------------------------


class Issuer:
    """A TokenCredential (azure-core's protocol) issuing numbered AccessTokens that expire `lifetime` s from NOW."""

    def __init__(self, lifetime: float = 3600, fail: Exception | None = None) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.lifetime, self.fail = lifetime, fail

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        if self.fail is not None:
            raise self.fail
        return AccessToken(f"entra-{len(self.scopes)}", int(NOW + self.lifetime))


def test_azure_asks_for_the_postgresql_scope_and_reuses_the_token_until_shortly_before_expiry() -> None:
    """One get_token for the ossrdbms-aad scope, reused until EXPIRY_MARGIN before expires_on; forget() refetches."""
    pytest.importorskip("azure.identity", reason="needs the azure extra: pip install 'pgparent[azure]'")
    clock, issuer = UnixClock(), Issuer(lifetime=300)
    source = AzureSource(credential=issuer, clock=clock)
    assert source.password() == "entra-1" and source.password() == "entra-1"
    assert issuer.scopes == [(AZURE_SCOPE,)] and AZURE_SCOPE == "https://ossrdbms-aad.database.windows.net/.default"
    clock.now = NOW + 300 - EXPIRY_MARGIN
    assert source.password() == "entra-2"
    source.forget()
    assert source.password() == "entra-3"
    assert source.secrets() == ("entra-3",)


def test_azure_scope_and_managed_identity_client_id_reach_default_azure_credential(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`client_id` picks a user-assigned managed (or workload) identity of DefaultAzureCredential; `scope` is asked."""
    identity = pytest.importorskip("azure.identity", reason="needs the azure extra: pip install 'pgparent[azure]'")
    made: list[dict[str, Any]] = []
    issuer = Issuer()

    def default(**kwargs: Any) -> Issuer:  # DefaultAzureCredential would probe the instance metadata service
        made.append(kwargs)
        return issuer

    monkeypatch.setattr(identity, "DefaultAzureCredential", default)
    source = credential_source(PasswordSource(provider="azure", client_id="1234-abcd",
                                              scope="https://ossrdbms-aad.database.usgovcloudapi.net/.default"), "")
    assert source.password() == "entra-1"
    assert made == [{"managed_identity_client_id": "1234-abcd", "workload_identity_client_id": "1234-abcd"}]
    assert issuer.scopes == [("https://ossrdbms-aad.database.usgovcloudapi.net/.default",)]


def test_azure_authentication_errors_become_credential_unavailable() -> None:
    """azure-identity's own error (no identity found) is a CredentialUnavailable with its first line."""
    pytest.importorskip("azure.identity", reason="needs the azure extra: pip install 'pgparent[azure]'")
    from azure.identity import CredentialUnavailableError

    source = AzureSource(credential=Issuer(fail=CredentialUnavailableError("no managed identity endpoint\ndetails")))
    with pytest.raises(CredentialUnavailable, match=r"^password provider azure: no managed identity endpoint$"):
        source.password()


# --- aws ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Static credentials from the environment and nothing else: no files, no instance metadata service."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY000001",
        "AWS_SECRET_ACCESS_KEY": "secret/example/key",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)


def _presigned(token: str) -> tuple[str, dict[str, list[str]]]:
    where, _, query = token.partition("/?")
    return where, parse_qs(query)


def test_aws_signs_a_connect_token_for_the_dsns_host_port_and_user(aws_env: None) -> None:
    """A real botocore presigned rds-db connect URL for the DSN's host:port and user, in the configured region."""
    pytest.importorskip("boto3", reason="needs the aws extra: pip install 'pgparent[aws]'")
    source = credential_source(PasswordSource(provider="aws", region="eu-west-1"),
                               "host=orders.abc.eu-west-1.rds.amazonaws.com port=5433 user=pgparent_iam dbname=x")
    first = source.password()
    where, params = _presigned(first)
    assert where == "orders.abc.eu-west-1.rds.amazonaws.com:5433"
    assert params["Action"] == ["connect"] and params["DBUser"] == ["pgparent_iam"]
    assert params["X-Amz-Expires"] == ["900"]
    key, _day, region, service, kind = params["X-Amz-Credential"][0].split("/")
    assert (key, region, service, kind) == ("AKIAEXAMPLEKEY000001", "eu-west-1", "rds-db", "aws4_request")
    assert "secret/example/key" not in first


def test_aws_region_from_boto3s_chain_and_a_clear_error_without_one(aws_env: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without password.region, AWS_REGION decides, else boto3's chain (AWS_DEFAULT_REGION); with no region
    anywhere, a clear error."""
    pytest.importorskip("boto3", reason="needs the aws extra: pip install 'pgparent[aws]'")
    with pytest.raises(CredentialUnavailable, match=r"^password provider aws: .*region"):
        AwsSource("db.example.internal", 5432, "iam").password()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    _, params = _presigned(AwsSource("db.example.internal", 5432, "iam").password())
    assert params["X-Amz-Credential"][0].split("/")[2] == "ap-southeast-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    _, params = _presigned(AwsSource("db.example.internal", 5432, "iam").password())
    assert params["X-Amz-Credential"][0].split("/")[2] == "eu-central-1"


def test_aws_without_credentials_is_credential_unavailable(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere (and the metadata service disabled): botocore's error, as CredentialUnavailable."""
    pytest.importorskip("boto3", reason="needs the aws extra: pip install 'pgparent[aws]'")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialUnavailable, match=r"^password provider aws: Unable to locate credentials"):
        AwsSource("db.example.internal", 5432, "iam", "us-east-1").password()


# --- gcp ----------------------------------------------------------------------------------------------------------


class TokenEndpoint(BaseHTTPRequestHandler):
    """An OAuth 2.0 token endpoint for service-account JWT assertions, on 127.0.0.1: checks the grant and the
    assertion's scope and audience, and issues numbered tokens."""

    issued: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        payload = body["assertion"][0].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        # An account named refused@... is refused, as a disabled or deleted service account is.
        ok = (body["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
              and not str(claims.get("iss", "")).startswith("refused@"))
        self.issued.append(claims)
        answer = {"access_token": f"ya29.test-{len(self.issued)}", "expires_in": 3600, "token_type": "Bearer"}
        data = json.dumps(answer if ok else {"error": "invalid_grant"}).encode()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The token endpoint's URL and the assertions' claims it received."""
    issued: list[dict[str, Any]] = []
    handler = type("Endpoint", (TokenEndpoint,), {"issued": issued})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", issued
    finally:
        server.shutdown()
        server.server_close()


def service_account(tmp_path: Path, url: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service-account key of a throwaway RSA key whose token_uri is `url`, where google.auth.default finds it;
    the metadata server pointed at a closed port of 127.0.0.1, should anything ask it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    account = tmp_path / "sa.json"
    account.write_text(json.dumps({
        "type": "service_account", "project_id": "test-project", "private_key_id": "k1", "private_key": pem,
        "client_email": f"{name}@test-project.iam.gserviceaccount.com", "client_id": "1", "token_uri": url,
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(account))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")


def test_gcp_refreshes_a_service_account_token_with_the_sql_login_scope(
        token_endpoint: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """google.auth.default finds a service-account key, its assertion asks for sqlservice.login, and the token is
    reused until shortly before its expiry, then refreshed."""
    pytest.importorskip("google.auth", reason="needs the gcp extra: pip install 'pgparent[gcp]'")

    url, issued = token_endpoint
    service_account(tmp_path, url, "pgparent", monkeypatch)
    clock = UnixClock(time.time())
    source = GcpSource(clock=clock)
    assert source.password() == "ya29.test-1" and source.password() == "ya29.test-1"
    assert len(issued) == 1
    claims = issued[0]
    assert claims["scope"] == GCP_SCOPE == "https://www.googleapis.com/auth/sqlservice.login"
    assert claims["aud"] == "https://oauth2.googleapis.com/token"
    assert claims["iss"] == "pgparent@test-project.iam.gserviceaccount.com"
    clock.now += 3600 - EXPIRY_MARGIN + 1
    assert source.password() == "ya29.test-2"
    source.forget()
    assert source.password() == "ya29.test-3"


def test_gcp_refresh_errors_become_credential_unavailable(
        token_endpoint: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file that is no credential at all, and a service account the token endpoint refuses (invalid_grant):
    google-auth's error, as CredentialUnavailable."""
    pytest.importorskip("google.auth", reason="needs the gcp extra: pip install 'pgparent[gcp]'")
    url, issued = token_endpoint
    account = tmp_path / "sa.json"
    account.write_text(json.dumps({"type": "nonsense"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(account))
    with pytest.raises(CredentialUnavailable, match=r"^password provider gcp: "):
        GcpSource().password()
    assert issued == []
    service_account(tmp_path, url, "refused", monkeypatch)
    with pytest.raises(CredentialUnavailable, match=r"^password provider gcp: .*invalid_grant"):
        GcpSource().password()
    assert [c["iss"] for c in issued] == ["refused@test-project.iam.gserviceaccount.com"]
