"""Reading a Prometheus exposition from the outside: one scrape, and its samples by name and labels.

The samples are read with prometheus_client's own parser, so a malformed exposition fails the reader instead of
being half-read. `series()` parses only the lines of the one metric it is asked for, for expositions large enough
that parsing all of them would be what a caller measures.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from harness.waiting import eventually

Labels = Mapping[str, str]


def samples(text: str, name: str, labels: Labels | None = None) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` in exposition `text` whose labels include `labels`, as (labels, value)."""
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items()))
    ]


def sample(text: str, name: str, labels: Labels | None = None) -> float | None:
    """The value of the first sample called `name` whose labels include `labels`, or None when there is none."""
    found = samples(text, name, labels)
    return found[0][1] if found else None


def series(text: str, name: str, by: str = "target") -> dict[str, float]:
    """The samples called `name`, keyed by the value of their label `by` (those without it left out).

    Only the lines of `name` are parsed: on an exposition of many thousand series this costs a line scan, where
    `samples()` would parse every family."""
    lines = [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]
    return {labels[by]: value for labels, value in samples("\n".join(lines) + "\n", name) if by in labels}


def _request(url: str, auth: tuple[str, str] | None) -> urllib.request.Request:
    request = urllib.request.Request(url)  # noqa: S310 - the callers' own loopback servers
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def get(url: str, *, timeout: float = 30.0, tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """GET `url` (with basic auth `auth`, TLS verified by `tls`): the status and the body, error statuses included;
    OSError when nothing answers."""
    try:
        with urllib.request.urlopen(_request(url, auth), timeout=timeout, context=tls) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def scrape(url: str, *, timeout: float = 30.0, tls: ssl.SSLContext | None = None,
           auth: tuple[str, str] | None = None) -> tuple[float, str]:
    """One scrape of `url`: the seconds it took (request to last byte) and the exposition. OSError when nothing
    answers, urllib.error.HTTPError (an OSError too) on a status other than 2xx."""
    started = time.perf_counter()
    with urllib.request.urlopen(_request(url, auth), timeout=timeout, context=tls) as resp:  # noqa: S310
        body = resp.read().decode()
    return time.perf_counter() - started, body


def wait_serving(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until `url` answers a scrape; RuntimeError at once if `proc`, the process meant to serve it, has exited, and
    AssertionError after `timeout` seconds."""

    def serving() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before serving {url}")
        try:
            scrape(url, timeout=timeout)
        except OSError:
            return False
        return True

    eventually(serving, timeout=timeout, interval=0.1, what=f"{url} serving")
