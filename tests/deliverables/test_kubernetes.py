"""The Kubernetes base: it builds, every object validates, and its copies match their sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment"}
NPM_DIR = Path(os.environ.get("PGPARENT_NPM_DIR", str(REPO / ".venv" / "npm")))


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is required to build the kustomize base"
    out = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def test_kustomize_builds_every_object(objects: list[dict[str, Any]]) -> None:
    """`kubectl kustomize` builds the base with every object the deployment needs."""
    assert sorted(o["kind"] for o in objects) == sorted(
        ["ServiceAccount", "ConfigMap", "ConfigMap", "Secret", "Service", "Deployment", "ServiceMonitor", "PodMonitor",
         "PrometheusRule"]
    )


def test_core_objects_pass_kubernetes_validate_strict(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every core object (no unknown fields, right types)."""
    files = []
    for n, obj in enumerate(o for o in objects if o["kind"] in CORE_KINDS):
        path = tmp_path / f"{n}.yaml"
        path.write_text(yaml.safe_dump(obj))
        files.append(str(path))
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(tool), "--strict", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files) == 6


def test_operator_objects_match_the_prometheus_operator_schemas(objects: list[dict[str, Any]]) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule validate against @kubernetes-models/prometheus-operator."""
    node = shutil.which("node")
    assert node, "node is required"
    modules = NPM_DIR / "node_modules"
    assert (modules / "@kubernetes-models" / "prometheus-operator").is_dir(), (
        f"npm package missing under {modules}: run scripts/setup --test-tools"
    )
    env = {**os.environ, "NODE_PATH": str(modules)}
    script = str(BASE / "validate-crds.mjs")
    build = json.dumps({"kind": "List", "items": objects})
    result = subprocess.run([node, script], input=build, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.split()) == sorted(
        ["valid", "PodMonitor/pgparent", "valid", "PrometheusRule/pgparent", "valid", "ServiceMonitor/pgparent"]
    )
    broken = [dict(o, spec={**o["spec"], "endpoints": [{"port": 10187}]}) if o["kind"] == "ServiceMonitor" else o
              for o in objects]
    result = subprocess.run([node, script], input=json.dumps({"kind": "List", "items": broken}), capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 1 and "INVALID ServiceMonitor/pgparent" in result.stdout


def test_copies_are_in_step_with_their_sources(objects: list[dict[str, Any]]) -> None:
    """The PrometheusRule groups equal deploy/prometheus/alerts.yml; rules and dashboard equal their sources."""
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_k8s.py"), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert by_kind(objects, "PrometheusRule")["spec"]["groups"] == alerts["groups"]
    dashboards = [o for o in objects if o["kind"] == "ConfigMap" and "pgparent-dashboard.json" in o.get("data", {})]
    (dashboard,) = dashboards
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["pgparent-dashboard.json"]) == json.loads(
        (REPO / "grafana" / "dashboards" / "pgparent.json").read_text()
    )
    rules = [o for o in objects if o["kind"] == "ConfigMap" and "rules.yaml" in o.get("data", {})]
    assert rules[0]["data"]["rules.yaml"] == (REPO / "rules.yaml").read_text()


def test_deployment_is_hardened_and_probed(objects: list[dict[str, Any]]) -> None:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, probes on /healthz, resources, 2 replicas."""
    deployment = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 10187, "protocol": "TCP"}]
    assert by_kind(objects, "Service")["spec"]["ports"][0]["name"] == "metrics"
    rules_cm = next(o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap" and "rules.yaml" in o["data"])
    assert {"name": "rules", "configMap": {"name": rules_cm}} in pod["volumes"]
    args = container["args"]
    assert args[0] == "run" and "--config.file=/etc/pgparent/rules.yaml" in args
