"""The docker-compose stack cannot run here (no Docker engine): its structure is checked against the repository, the
CLI and promtool instead."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from exporter.cli.main import DEFAULT_LISTEN, build_parser
from exporter.pg.dsn import resolve_dsn
from tests.support.tools import require_tool

pytestmark = pytest.mark.deliverables

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose"


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return doc


def host_paths(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount of a service (short syntax)."""
    return [(v.split(":")[0], v.split(":")[1]) for v in service.get("volumes", [])]


def test_services_ports_and_start_order(stack: dict[str, Any]) -> None:
    """PostgreSQL, pgparent, Prometheus and Grafana on their usual ports; each starts once what it needs is healthy."""
    services = stack["services"]
    assert set(services) == {"postgres", "pgparent", "prometheus", "grafana"}
    ports = {name: service["ports"] for name, service in services.items()}
    assert ports == {"postgres": ["5432:5432"], "pgparent": ["10187:10187"], "prometheus": ["9090:9090"],
                     "grafana": ["3000:3000"]}
    needs = {name: service.get("depends_on", {}) for name, service in services.items()}
    assert needs == {
        "postgres": {},
        "pgparent": {"postgres": {"condition": "service_healthy"}},
        "prometheus": {"pgparent": {"condition": "service_healthy"}},
        "grafana": {"prometheus": {"condition": "service_healthy"}},
    }


def test_every_service_has_a_healthcheck(stack: dict[str, Any]) -> None:
    """Every service has an exec-form health check; pgparent's probes /healthz on its port with python (no curl)."""
    for name, service in stack["services"].items():
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD", name
    test = stack["services"]["pgparent"]["healthcheck"]["test"]
    assert test[1] == "python3" and "http://127.0.0.1:10187/healthz" in test[-1]
    assert "curl" not in str(stack)


def test_mounted_files_exist(stack: dict[str, Any]) -> None:
    """Every host path mounted into a container, and pgparent's build context and Dockerfile, exist in the repo."""
    for name, service in stack["services"].items():
        for host, _ in host_paths(service):
            path = (COMPOSE / host).resolve()
            assert path.exists(), f"{name}: {host} -> {path}"
            assert path.is_relative_to(REPO), f"{name}: {host} is outside the repository"
    build = stack["services"]["pgparent"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"


def test_pgparent_command_and_environment_match_the_cli(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The command parses with pgparent's own CLI, reads the mounted rules on the published port, and the DSN comes
    from the environment variable the CLI reads, for the role docs/least-privilege.sql creates."""
    service = stack["services"]["pgparent"]
    args = build_parser().parse_args(service["command"])
    assert (args.command, args.listen, args.dsn, args.dsn_file) == ("run", DEFAULT_LISTEN, None, None)
    assert (str(REPO / "rules.yaml"), args.config_file) in [
        (str((COMPOSE / host).resolve()), inside) for host, inside in host_paths(service)
    ]
    for name in ("PGPARENT_DSN", "PGPARENT_DSN_FILE", "DATA_SOURCE_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, value)
    dsn = conninfo_to_dict(resolve_dsn(args.dsn, args.dsn_file))
    assert dsn["host"] == "postgres" and dsn["user"] == "pgparent"
    role_sql = (REPO / "docs" / "least-privilege.sql").read_text()
    assert f"CREATE ROLE {dsn['user']} LOGIN PASSWORD '{dsn['password']}'" in role_sql
    initdb = dict(host_paths(stack["services"]["postgres"]))["../../docs/least-privilege.sql"]
    assert initdb.startswith("/docker-entrypoint-initdb.d/")


def test_prometheus_config_is_valid_and_scrapes_pgparent(stack: dict[str, Any], tmp_path: Path) -> None:
    """promtool accepts the stack's Prometheus config with the real alerts file, mounted where the config loads it;
    the job is called pgparent (the alerts select on it) and scrapes the pgparent service's port."""
    promtool = require_tool("promtool")
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "pgparent"
    assert job["static_configs"][0]["targets"] == ["pgparent:10187"]
    mounts = dict(host_paths(stack["services"]["prometheus"]))
    assert mounts["../prometheus/alerts.yml"] in config["rule_files"]
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    config["rule_files"] = [str(REPO / "deploy" / "prometheus" / "alerts.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_gets_the_provisioning_and_the_dashboard(stack: dict[str, Any]) -> None:
    """Grafana mounts the provisioning folder, and the dashboards where the provider file looks for them; the data
    source points at the prometheus service; the home dashboard is the pgparent one."""
    grafana = stack["services"]["grafana"]
    mounts = dict(host_paths(grafana))
    assert mounts["../../grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((REPO / "grafana" / "provisioning" / "dashboards" / "pgparent.yaml").read_text())
    assert mounts["../../grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['../../grafana/dashboards']}/pgparent.json"
    assert (REPO / "grafana" / "dashboards" / "pgparent.json").is_file()
    datasources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert [d["url"] for d in datasources["datasources"]] == ["http://prometheus:9090"]
