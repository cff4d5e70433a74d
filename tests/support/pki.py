"""Throwaway certificates for the tests, made with the openssl command: a certificate authority (`authority`), the
certificates it issues (`issue`), and a self-signed stranger's (`self_signed`). Each writes NAME.key and NAME.crt
in the directory given; keys are unencrypted and good for two days."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def self_signed(directory: Path, name: str) -> None:
    """NAME.key and NAME.crt, a certificate that signs itself (with CN=`name`): a CA when issuing, else a stranger."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt"))


def authority(directory: Path) -> Path:
    """ca.key and ca.crt, a certificate authority of this test's own; the path of ca.crt."""
    self_signed(directory, "ca")
    return directory / "ca.crt"


def issue(directory: Path, name: str, extensions: str, subject: str | None = None) -> Path:
    """NAME.key and NAME.crt, issued by `authority`'s CA in `directory` with the x509v3 `extensions` (one per line:
    `subjectAltName=DNS:localhost,IP:127.0.0.1`, `extendedKeyUsage=clientAuth`); the path of NAME.crt."""
    key, csr, ext, crt = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "ext", "crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={subject or name}", "-keyout", str(key),
            "-out", str(csr))
    ext.write_text(extensions + "\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(directory / "ca.crt"), "-CAkey", str(directory / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return crt
