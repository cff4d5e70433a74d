"""The docker-compose stack cannot run here (no Docker engine): its structure is checked against the repository."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose"


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return doc


def test_services_and_ports(stack: dict[str, Any]) -> None:
    """PostgreSQL, pgparent, Prometheus and Grafana, each on its usual port; pgparent waits for a healthy server."""
    services = stack["services"]
    assert set(services) == {"postgres", "pgparent", "prometheus", "grafana"}
    assert services["pgparent"]["ports"] == ["10187:10187"]
    assert services["pgparent"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]


def test_mounted_files_exist(stack: dict[str, Any]) -> None:
    """Every host path mounted into a container, and the build context, exist in the repository."""
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            host = volume.split(":", 1)[0]
            assert (COMPOSE / host).resolve().exists(), f"{name}: {host}"
    build = stack["services"]["pgparent"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve().is_file()


def test_pgparent_command_parses_with_the_real_cli(stack: dict[str, Any]) -> None:
    """The compose command line is accepted by pgparent's own argument parser."""
    args = build_parser().parse_args(stack["services"]["pgparent"]["command"])
    assert args.command == "run" and args.config_file == "/etc/pgparent/rules.yaml" and args.listen == ":10187"
    assert "user=pgparent" in stack["services"]["pgparent"]["environment"]["PGPARENT_DSN"]


def test_prometheus_config_is_valid_and_scrapes_pgparent(tmp_path: Path) -> None:
    """promtool accepts the stack's Prometheus config with the real alerts file; the job is called pgparent."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["job_name"] == "pgparent"
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["pgparent:10187"]
    config["rule_files"] = [str(REPO / "deploy" / "prometheus" / "alerts.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_gets_the_provisioning_and_the_dashboard(stack: dict[str, Any]) -> None:
    """Grafana mounts the provisioning folder and the dashboards where the provider file looks for them."""
    provider = yaml.safe_load((REPO / "grafana" / "provisioning" / "dashboards" / "pgparent.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    volumes = stack["services"]["grafana"]["volumes"]
    assert "../../grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    assert f"../../grafana/dashboards:{path}:ro" in volumes
