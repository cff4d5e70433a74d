"""The HTTP face under attack, on loopback: the figures behind docs/RELIABILITY.md's HTTP rows and the choice of server.

    python -m bench.http_face serve pgparent|uvicorn|waitress PORT [key=value ...]
    python -m bench.http_face attack PID PORT [--user U --password P] SCENARIO ...

`serve` runs a candidate server with the same 1500-series exposition (key=value options go to uvicorn.run or
waitress.serve, e.g. limit_concurrency=100 or connection_limit=1000 channel_timeout=10; those two packages are not
pgparent dependencies: pip install them beside it). `attack` runs scenarios against any server and prints one JSON line
each: long (73- and 1000-byte passwords), timing (unknown user vs wrong password), flood (20 clients guessing),
slow (300 silent + 50 trickling connections), hold (how long one silent and one trickling connection are kept),
methods (POST and friends), throughput (keep-alive scrapes). To measure an older pgparent, run it from an archive:

    git archive COMMIT exporter | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python -m exporter run --dsn 'host=127.0.0.1 port=1' --web.config.file web.yml \\
        --web.listen-address 127.0.0.1:18001 &
    python -m bench.http_face attack $! 18001 --password ... long timing flood slow
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from bench.harness import cpu_seconds, socket_count, thread_count

Figures = dict[str, Any]


class _Groups(Collector):
    """250 groups in six families, about the exposition of the load test."""

    def collect(self) -> Iterator[Metric]:
        for name in ("sessions", "workers", "waiting", "max_query", "max_xact", "age"):
            family = GaugeMetricFamily(f"pgparent_group_{name}", "x", labels=["parent"])
            for i in range(250):
                family.add_metric([f"FakeParent:{i}"], i)
            yield family


def serve(kind: str, port: int, options: dict[str, int]) -> None:
    registry = CollectorRegistry()
    registry.register(_Groups())
    if kind == "uvicorn":
        import uvicorn  # type: ignore[import-not-found, import-untyped, unused-ignore]
        from prometheus_client import make_asgi_app

        uvicorn.run(make_asgi_app(registry), host="127.0.0.1", port=port, log_level="warning", **options)
    elif kind == "waitress":
        import waitress  # type: ignore[import-not-found, import-untyped, unused-ignore]
        from prometheus_client import make_wsgi_app

        waitress.serve(make_wsgi_app(registry), host="127.0.0.1", port=port, **{"threads": 2, **options})
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from exporter.face.http import MetricsServer

        server = MetricsServer(("127.0.0.1", port), lambda: generate_latest(registry), lambda: True)
        server.start()
        threading.Event().wait()


def get(port: int, auth: tuple[str, str] | None, method: str = "GET", timeout: float = 30) -> tuple[str, float]:
    """One request on a fresh connection: the status (or the error's name) and the seconds it took."""
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, "/metrics", headers=headers)
        resp = conn.getresponse()
        resp.read()
        status = str(resp.status)
    except (OSError, http.client.HTTPException) as exc:
        status = type(exc).__name__
    finally:
        conn.close()
    return status, time.perf_counter() - started


class Attack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.pid: int = args.pid
        self.port: int = args.port
        self.user: str = args.user
        self.right = (args.user, args.password) if args.password else None
        self.seconds: float = args.seconds

    def long(self) -> Figures:
        return {f"len{n}": get(self.port, (self.user, "x" * n))[0] for n in (72, 73, 1000)}

    def timing(self) -> Figures:
        known, unknown = [], []
        for i in range(6):
            known.append(get(self.port, (self.user, f"wrong-{i}"))[1])
            unknown.append(get(self.port, (f"nobody-{i}", "wrong"))[1])
        k, u = statistics.median(known), statistics.median(unknown)
        return {"known_wrong_ms": round(k * 1000, 1), "unknown_user_ms": round(u * 1000, 1), "ratio": round(k / u, 2)}

    def flood(self) -> Figures:
        stop = threading.Event()
        answers: list[str] = []

        def guess(n: int) -> None:
            i = 0
            while not stop.is_set():
                answers.append(get(self.port, (self.user, f"guess-{n}-{i}"), timeout=10)[0])
                i += 1

        guessers = [threading.Thread(target=guess, args=(n,), daemon=True) for n in range(20)]
        for t in guessers:
            t.start()
        time.sleep(1)
        cpu, started, before = cpu_seconds(self.pid), time.monotonic(), len(answers)
        scrapes = []
        while time.monotonic() - started < self.seconds:
            scrapes.append(get(self.port, self.right))
            time.sleep(0.5)
        wall = time.monotonic() - started
        cores, window = (cpu_seconds(self.pid) - cpu) / wall, answers[before:]
        stop.set()
        for t in guessers:
            t.join(15)
        return {
            "cores": round(cores, 2),
            "threads": thread_count(self.pid),
            "answers_per_s": {s: round(window.count(s) / wall, 1) for s in sorted(set(window))},
            "scrapes": sorted({s for s, _ in scrapes}),
            "scrape_max_s": round(max(t for _, t in scrapes), 3),
        }

    def slow(self) -> Figures:
        before = thread_count(self.pid)
        silent = [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(300)]
        trickling = [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(50)]
        stop = threading.Event()

        def trickle() -> None:
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                for s in trickling:
                    with contextlib.suppress(OSError):
                        s.send(bytes([byte]))
                if stop.wait(1.0):
                    return

        threading.Thread(target=trickle, daemon=True).start()
        most_threads, most_sockets, scrapes = before, 0, []
        started = time.monotonic()
        while time.monotonic() - started < self.seconds:
            most_threads = max(most_threads, thread_count(self.pid))
            most_sockets = max(most_sockets, socket_count(self.pid))
            scrapes.append(get(self.port, self.right))
            time.sleep(0.25)
        stop.set()
        for s in silent + trickling:
            s.close()
        return {
            "threads_before": before,
            "threads_max": most_threads,
            "sockets_max": most_sockets,
            "scrapes": sorted({s for s, _ in scrapes}),
            "scrape_p50_s": round(statistics.median(t for _, t in scrapes), 3),
            "scrape_max_s": round(max(t for _, t in scrapes), 3),
        }

    def hold(self) -> Figures:
        """Seconds until the server closes one silent and one trickling (a byte a second) connection; at most 40."""
        out: Figures = {}
        for kind in ("silent", "trickling"):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.setblocking(False)
            if kind == "trickling":
                sock.send(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            started, out[kind] = time.monotonic(), ">40"
            while time.monotonic() - started < 40:
                try:
                    closed = sock.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    closed = False  # still open, nothing to read
                except OSError:
                    closed = True
                if closed:
                    out[kind] = round(time.monotonic() - started, 1)
                    break
                if kind == "trickling":
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                time.sleep(1.0)
            sock.close()
        return out

    def methods(self) -> Figures:
        return {m: get(self.port, self.right, method=m)[0] for m in ("POST", "PUT", "DELETE", "OPTIONS")}

    def throughput(self) -> Figures:
        headers = {}
        if self.right:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.right).encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        latencies, cpu, started = [], cpu_seconds(self.pid), time.perf_counter()
        while time.perf_counter() - started < self.seconds:
            t = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            conn.getresponse().read()
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
        return {
            "scrapes_per_s": round(len(latencies) / wall),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "server_cpu_ms_per_scrape": round((cpu_seconds(self.pid) - cpu) / len(latencies) * 1000, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("kind", choices=["pgparent", "uvicorn", "waitress"])
    s.add_argument("port", type=int)
    s.add_argument("options", nargs="*", metavar="KEY=VALUE")
    a = sub.add_parser("attack")
    a.add_argument("pid", type=int)
    a.add_argument("port", type=int)
    a.add_argument("--user", default="prom")
    a.add_argument("--password", default="")
    a.add_argument("--seconds", type=float, default=8.0)
    scenarios: dict[str, Callable[[Attack], Figures]] = {
        name: getattr(Attack, name) for name in ("long", "timing", "flood", "slow", "hold", "methods", "throughput")
    }
    a.add_argument("scenarios", nargs="+", choices=sorted(scenarios))
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.kind, args.port, {k: int(v) for k, v in (o.split("=", 1) for o in args.options)})
        return
    attack = Attack(args)
    for name in args.scenarios:
        print(name, json.dumps(scenarios[name](attack)), flush=True)


if __name__ == "__main__":
    main()
