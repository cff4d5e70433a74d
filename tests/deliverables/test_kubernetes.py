"""The Kubernetes base and its components (podmonitor, fleet, sidecar): they build, every object validates, and the
base's copies match their sources.

The prometheus-operator objects are checked twice, with schemas from the npm package
@kubernetes-models/prometheus-operator, installed on demand into a cache outside the repository ($PGPARENT_NPM_CACHE,
default /var/tmp/pgparent-npm):

- with `jsonschema`, strictly (an unknown field is an error), against the JSON schemas of version 4.0.0: the last
  release that ships its CRD schemas as JSON (prometheus-operator v0.57 CRDs); from 4.4.0 on they are compiled to code;
- with node, against the compiled validators of version 6.0.0 (current CRDs), which catch newer constraints (patterns,
  enums) but let unknown fields through.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.support.tools import require_tool

pytestmark = pytest.mark.deliverables

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet"}
OPERATOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
NPM_CACHE = Path(os.environ.get("PGPARENT_NPM_CACHE", "/var/tmp/pgparent-npm"))  # noqa: S108 - a cache kept across runs
PACKAGE = "@kubernetes-models/prometheus-operator"
JSON_SCHEMA_VERSION = "4.0.0"
"""The newest release of the package whose CRD schemas are JSON (4.4.0 pre-compiled them into JavaScript)."""
CURRENT_VERSION = "6.0.0"

Obj = dict[str, Any]


# -- the build -------------------------------------------------------------------------------------------------------
def kustomize(path: Path) -> list[Obj]:
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    """`kubectl kustomize deploy/kubernetes`."""
    return kustomize(BASE)


def with_component(tmp_path_factory: pytest.TempPathFactory, component: str) -> list[Obj]:
    """The base with one of its components, as a user's overlay would build it (kustomize wants relative paths)."""
    overlay = tmp_path_factory.mktemp(f"overlay-{component}")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(BASE, overlay)],
        "components": [os.path.relpath(BASE / component, overlay)],
    }))
    return kustomize(overlay)


@pytest.fixture(scope="module")
def pod_monitor_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The base with the podmonitor component."""
    return with_component(tmp_path_factory, "podmonitor")


@pytest.fixture(scope="module")
def fleet_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The base with the fleet component: several targets, a DSN file each, three replicas dividing them."""
    return with_component(tmp_path_factory, "fleet")


@pytest.fixture(scope="module")
def sidecar_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The base with the sidecar component: pgparent in the PostgreSQL pod, sharing its process namespace."""
    return with_component(tmp_path_factory, "sidecar")


def by_kind(objects: list[Obj], kind: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def configmap_with(objects: list[Obj], key: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and key in o.get("data", {})]
    return found


# -- the npm package, outside the repository --------------------------------------------------------------------------
def npm_package(version: str) -> Path:
    """node_modules of a private npm prefix holding PACKAGE@version, installed once per machine."""
    prefix = NPM_CACHE / f"prometheus-operator-{version}"
    modules = prefix / "node_modules"
    installed = modules / PACKAGE / "package.json"
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    with (NPM_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs must not install into one prefix at once
        if not installed.exists() or json.loads(installed.read_text())["version"] != version:
            npm = require_tool("npm")
            prefix.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"{PACKAGE}@{version}"],
                capture_output=True, text=True, timeout=300,
            )
            assert result.returncode == 0, f"npm install {PACKAGE}@{version} failed:\n{result.stderr[-3000:]}"
    return modules


_SCHEMA = re.compile(r"^const schema = (\{.*?^\});$", re.M | re.S)
_REGISTERED = re.compile(r'register\("([^"]+)", schema\)')
_SCHEMA_ID = re.compile(r'^const schemaId = "([^"]+)";$', re.M)


def _schema_of(module: Path) -> tuple[str, Obj] | None:
    """(id, JSON schema) from one generated module of the 4.x packages, or None if it holds no schema."""
    text = module.read_text()
    body, named = _SCHEMA.search(text), _SCHEMA_ID.search(text) or _REGISTERED.search(text)
    if body is None or named is None:
        return None
    return named.group(1), json.loads(body.group(1))


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties, as kubectl's strict field
    validation does: a misspelt field becomes an error instead of being pruned silently by the API server."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def operator_validators() -> dict[str, jsonschema.Draft7Validator]:
    """A strict Draft 7 validator per prometheus-operator kind, from the package's JSON schemas."""
    modules = npm_package(JSON_SCHEMA_VERSION)
    schemas: dict[str, Obj] = {}
    meta = modules / "@kubernetes-models" / "apimachinery" / "_schemas"  # ObjectMeta and what it refers to
    for folder in (meta, modules / PACKAGE / "monitoring.coreos.com" / "v1"):
        assert folder.is_dir(), f"{folder} is missing: is {PACKAGE}@{JSON_SCHEMA_VERSION} installed whole?"
        for module in sorted(folder.glob("*.mjs")):
            found = _schema_of(module)
            if found is not None:
                schemas[found[0]] = strict(found[1])
    registry: Registry[Any] = Registry().with_resources(
        (uri, Resource.from_contents(schema, default_specification=DRAFT7)) for uri, schema in schemas.items()
    )
    validators = {}
    for kind in OPERATOR_KINDS:
        schema = schemas[f"monitoring.coreos.com.v1.{kind}"]
        jsonschema.Draft7Validator.check_schema(schema)
        validators[kind] = jsonschema.Draft7Validator(schema, registry=registry)
    return validators


def schema_errors(validators: dict[str, jsonschema.Draft7Validator], obj: Obj) -> list[str]:
    return [
        f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validators[obj["kind"]].iter_errors(obj)
    ]


# The compiled validators of the current package, run by node on a List read from stdin: one line per object.
_NODE_VALIDATE = """
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const base = process.env.PGPARENT_OPERATOR_MODELS;
const items = JSON.parse(readFileSync(0, "utf8")).items;
let bad = 0;
for (const item of items) {
  const url = pathToFileURL(`${base}/monitoring.coreos.com/v1/${item.kind}.js`).href;
  const Model = (await import(url))[item.kind];
  try {
    new Model(item).validate();
    console.log(`valid ${item.kind}/${item.metadata.name}`);
  } catch (err) {
    bad += 1;
    console.log(`INVALID ${item.kind}/${item.metadata.name}: ${err.message}`);
  }
}
process.exit(bad ? 1 : 0);
"""


def node_validate(objects: list[Obj]) -> subprocess.CompletedProcess[str]:
    node = require_tool("node")
    models = npm_package(CURRENT_VERSION) / PACKAGE
    return subprocess.run(
        [node, "--input-type=module", "-e", _NODE_VALIDATE],
        input=json.dumps({"kind": "List", "items": objects}), capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGPARENT_OPERATOR_MODELS": str(models)},
    )


@pytest.fixture
def operator_objects(objects: list[Obj], pod_monitor_objects: list[Obj]) -> Iterator[list[Obj]]:
    """The ServiceMonitor and PrometheusRule of the base, and the PodMonitor of the podmonitor component."""
    found = [o for o in objects if o["kind"] in OPERATOR_KINDS] + [by_kind(pod_monitor_objects, "PodMonitor")]
    assert sorted(o["kind"] for o in found) == sorted(OPERATOR_KINDS)
    yield found


# -- the tests -------------------------------------------------------------------------------------------------------
CORE = ["ServiceAccount", "ConfigMap", "ConfigMap", "Secret", "Service", "Deployment", "PrometheusRule"]


def test_kustomize_builds_every_object(objects: list[Obj]) -> None:
    """`kubectl kustomize deploy/kubernetes` builds the base with every object the deployment needs."""
    assert sorted(o["kind"] for o in objects) == sorted([*CORE, "ServiceMonitor"])


def test_podmonitor_component_replaces_the_servicemonitor(objects: list[Obj], pod_monitor_objects: list[Obj]) -> None:
    """With the podmonitor component the pods are scraped by a PodMonitor instead of the ServiceMonitor, never by
    both (which would double every series); everything else is unchanged."""
    assert sorted(o["kind"] for o in pod_monitor_objects) == sorted([*CORE, "PodMonitor"])
    assert [o for o in pod_monitor_objects if o["kind"] != "PodMonitor"] == [
        o for o in objects if o["kind"] != "ServiceMonitor"
    ]


def test_fleet_component_builds_every_object(objects: list[Obj], fleet_objects: list[Obj]) -> None:
    """With the fleet component the base builds with the same kinds; the per-target DSN Secret replaces the base's
    single-DSN one, and the objects the component leaves alone (the monitor, the alerts, the dashboard, the Service
    and the ServiceAccount) are the base's, so the alerts and the dashboard apply to the fleet as they are."""
    assert sorted(o["kind"] for o in fleet_objects) == sorted([*CORE, "ServiceMonitor"])
    assert [o["metadata"]["name"] for o in fleet_objects if o["kind"] == "Secret"] == ["pgparent-targets"]
    untouched = ("ServiceAccount", "Service", "ServiceMonitor", "PrometheusRule")
    assert [o for o in fleet_objects if o["kind"] in untouched] == [o for o in objects if o["kind"] in untouched]
    dashboard = "pgparent-dashboard.json"
    assert configmap_with(fleet_objects, dashboard) == configmap_with(objects, dashboard)


@pytest.mark.parametrize(("build", "count"), [("objects", 6), ("fleet_objects", 6), ("sidecar_objects", 8)])
def test_core_objects_pass_kubernetes_validate_strict(build: str, count: int, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every core object of the base, of the fleet build and of the sidecar
    build (no unknown fields, right types)."""
    objects: list[Obj] = request.getfixturevalue(build)
    files = []
    for n, obj in enumerate(o for o in objects if o["kind"] in CORE_KINDS):
        path = tmp_path / f"{n}-{obj['kind']}.yaml"
        path.write_text(yaml.safe_dump(obj))
        files.append(str(path))
    tool = Path(sys.executable).parent / "kubernetes-validate"
    assert tool.exists(), "kubernetes-validate is in the test extra: run scripts/setup"
    result = subprocess.run([str(tool), "--strict", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files) == count, result.stdout


def test_kubernetes_validate_strict_rejects_an_unknown_field(objects: list[Obj], tmp_path: Path) -> None:
    """The strict check above can fail: a misspelt Deployment field is rejected."""
    deployment = copy.deepcopy(by_kind(objects, "Deployment"))
    deployment["spec"]["replica"] = 2
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(deployment))
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(tool), "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "replica" in result.stdout + result.stderr, result.stdout + result.stderr


def test_operator_objects_match_the_prometheus_operator_json_schemas(
    operator_objects: list[Obj], operator_validators: dict[str, jsonschema.Draft7Validator]
) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule validate, strictly, against the package's JSON schemas."""
    errors = [e for obj in operator_objects for e in schema_errors(operator_validators, obj)]
    assert errors == []


def test_the_json_schemas_reject_broken_operator_objects(
    operator_objects: list[Obj], operator_validators: dict[str, jsonschema.Draft7Validator]
) -> None:
    """The schema check can fail: a misspelt field, a wrong type and a missing required field are each reported."""
    monitor = copy.deepcopy(next(o for o in operator_objects if o["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    pod_monitor = copy.deepcopy(next(o for o in operator_objects if o["kind"] == "PodMonitor"))
    pod_monitor["spec"]["podMetricsEndpoints"] = "metrics"
    rule = copy.deepcopy(next(o for o in operator_objects if o["kind"] == "PrometheusRule"))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert any("intervall" in e for e in schema_errors(operator_validators, monitor))
    assert any("podMetricsEndpoints" in e for e in schema_errors(operator_validators, pod_monitor))
    assert any("'expr' is a required property" in e for e in schema_errors(operator_validators, rule))


def test_operator_objects_pass_the_current_crd_validators(operator_objects: list[Obj]) -> None:
    """The same objects pass the compiled validators of the current package (current CRDs), and a bad one fails."""
    result = node_validate(operator_objects)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.split()) == sorted(
        ["valid", "PodMonitor/pgparent", "valid", "PrometheusRule/pgparent", "valid", "ServiceMonitor/pgparent"]
    )
    broken = copy.deepcopy(operator_objects)
    for obj in broken:
        if obj["kind"] == "ServiceMonitor":
            obj["spec"]["endpoints"][0]["interval"] = "15 seconds"
    result = node_validate(broken)
    assert result.returncode == 1 and "INVALID ServiceMonitor/pgparent" in result.stdout, result.stdout


def test_prometheus_rule_groups_equal_the_alerts_file(objects: list[Obj]) -> None:
    """The PrometheusRule's spec.groups are exactly deploy/prometheus/alerts.yml's groups."""
    alerts_file = REPO / "deploy" / "prometheus" / "alerts.yml"
    assert alerts_file.is_file(), "deploy/prometheus/alerts.yml is missing"
    alerts = yaml.safe_load(alerts_file.read_text())
    assert by_kind(objects, "PrometheusRule")["spec"]["groups"] == alerts["groups"]


def test_rules_copy_equals_the_top_level_rules_file(objects: list[Obj]) -> None:
    """deploy/kubernetes/rules.yaml, and the generated ConfigMap, hold exactly the top-level rules.yaml."""
    source = (REPO / "rules.yaml").read_text()
    assert (BASE / "rules.yaml").read_text() == source
    assert configmap_with(objects, "rules.yaml")["data"]["rules.yaml"] == source


def test_dashboard_configmap_is_the_grafana_dashboard(objects: list[Obj]) -> None:
    """The dashboard ConfigMap carries grafana_dashboard: "1" and exactly grafana/dashboards/pgparent.json."""
    dashboard = configmap_with(objects, "pgparent-dashboard.json")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["pgparent-dashboard.json"]) == json.loads(
        (REPO / "grafana" / "dashboards" / "pgparent.json").read_text()
    )


def test_sync_script_reports_no_stale_copy() -> None:
    """scripts/sync_k8s.py --check finds every copy in step with its source (run it without --check to fix)."""
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_k8s.py"), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_sync_script_check_fails_on_a_stale_copy(tmp_path: Path) -> None:
    """The drift check can fail: a copy that differs from its source makes `--check` exit 1 and name it."""
    tree = tmp_path / "repo"
    for rel in ("scripts/sync_k8s.py", "rules.yaml", "deploy/prometheus/alerts.yml", "grafana/dashboards/pgparent.json",
                "deploy/kubernetes/rules.yaml", "deploy/kubernetes/prometheusrule.yaml",
                "deploy/kubernetes/pgparent-dashboard.json"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tree / rel)
    (tree / "rules.yaml").write_text((REPO / "rules.yaml").read_text() + "\n# changed\n")
    check = subprocess.run([sys.executable, str(tree / "scripts" / "sync_k8s.py"), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1 and "deploy/kubernetes/rules.yaml" in check.stderr, check.stderr


def test_deployment_is_hardened_and_probed(objects: list[Obj]) -> None:
    """2 replicas; non-root, read-only root, no capabilities, RuntimeDefault seccomp; probes on /healthz; resources."""
    deployment = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_deployment_runs_the_cli_with_the_rules_and_the_dsn_secret(objects: list[Obj]) -> None:
    """The container's args parse with pgparent's own CLI; the rules come from the generated ConfigMap and the DSN
    from the Secret's key, as $PGPARENT_DSN."""
    from exporter.cli.main import build_parser

    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.config_file, args.listen) == ("run", "/etc/pgparent/rules.yaml", ":10187")
    assert container["ports"] == [{"name": "metrics", "containerPort": 10187, "protocol": "TCP"}]
    rules_cm = configmap_with(objects, "rules.yaml")["metadata"]["name"]
    assert {"name": "rules", "configMap": {"name": rules_cm}} in pod["volumes"]
    assert {"name": "rules", "mountPath": "/etc/pgparent", "readOnly": True} in container["volumeMounts"]
    secret = by_kind(objects, "Secret")
    (env,) = container["env"]
    assert env == {
        "name": "PGPARENT_DSN", "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "dsn"}}
    }
    assert "sslmode=verify-full" in secret["stringData"]["dsn"]


def test_fleet_deployment_is_the_base_with_three_replicas_and_the_dsn_files(objects: list[Obj],
                                                                           fleet_objects: list[Obj]) -> None:
    """The fleet's Deployment is the base's (hardening, probes, resources, args) with exactly these changes: three
    replicas, no $PGPARENT_DSN, the Secret pgparent-targets mounted read-only for pgparent's group only, and the
    fleet's config as the rules ConfigMap."""
    fleet = by_kind(fleet_objects, "Deployment")
    expected = copy.deepcopy(by_kind(objects, "Deployment"))
    expected["spec"]["replicas"] = 3
    pod = expected["spec"]["template"]["spec"]
    pod["securityContext"]["fsGroup"] = 10187
    (container,) = pod["containers"]
    del container["env"]
    container["volumeMounts"].insert(0, {"name": "targets", "mountPath": "/etc/pgparent-targets", "readOnly": True})
    pod["volumes"].insert(0, {"name": "targets", "secret": {"secretName": "pgparent-targets", "defaultMode": 0o440}})
    (rules,) = [v for v in pod["volumes"] if v["name"] == "rules"]
    rules["configMap"]["name"] = configmap_with(fleet_objects, "rules.yaml")["metadata"]["name"]
    assert fleet == expected


def test_fleet_config_shards_targets_whose_dsn_files_the_secret_provides(fleet_objects: list[Obj]) -> None:
    """The fleet's config is valid and in shard mode; it lists several targets with the same label names, each
    reading its DSN from a file of the mounted Secret that the Secret has (sslmode=verify-full), and every rule's
    match.target names at least one of them."""
    from fnmatch import fnmatchcase

    from exporter.core.settings import parse_config

    config = parse_config(yaml.safe_load(configmap_with(fleet_objects, "rules.yaml")["data"]["rules.yaml"]), "fleet")
    assert config.leader_election.shard is True
    assert len(config.targets) >= 2 and all(t.labels for t in config.targets)
    pod = by_kind(fleet_objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "targets"]
    secret = by_kind(fleet_objects, "Secret")
    assert {"name": "targets", "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o440}} in pod[
        "volumes"]
    for target in config.targets:
        assert target.dsn_file is not None, f"{target.name}: not a dsn_file"
        folder, _, key = target.dsn_file.rpartition("/")
        assert folder == mount["mountPath"], target.dsn_file
        assert "sslmode=verify-full" in secret["stringData"][key], f"{target.name}: no key {key} in the Secret"
    names = [t.name for t in config.targets]
    for rule in config.rules:
        assert any(fnmatchcase(n, rule.match.target) for n in names), f"{rule.name}: matches no target"
    assert any(rule.match.target != "*" for rule in config.rules), "no rule shows match.target"


def test_service_and_monitors_point_at_the_named_metrics_port(objects: list[Obj], pod_monitor_objects: list[Obj]
                                                               ) -> None:
    """The Service exposes the named port `metrics`; both monitors scrape it and select the pods' labels."""
    labels = by_kind(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = by_kind(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 10187, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [e["port"] for e in by_kind(objects, "ServiceMonitor")["spec"]["endpoints"]] == ["metrics"]
    pod_monitor = by_kind(pod_monitor_objects, "PodMonitor")
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"
    ].items()


# -- the sidecar component -------------------------------------------------------------------------------------------
def _sidecar_pod(sidecar_objects: list[Obj]) -> tuple[Obj, Obj, Obj]:
    """The StatefulSet's pod spec, its postgres container and its pgparent container."""
    pod = by_kind(sidecar_objects, "StatefulSet")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"postgres", "pgparent"}
    return pod, containers["postgres"], containers["pgparent"]


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_sidecar_component_puts_pgparent_in_the_postgresql_pod(objects: list[Obj], sidecar_objects: list[Obj]
                                                                ) -> None:
    """With the sidecar component pgparent runs in a PostgreSQL StatefulSet's pod instead of a Deployment: no
    Deployment and no DSN Secret are left, one server, and the objects the component leaves alone (the account, the
    monitor, the alerts, the dashboard, the rules) are the base's."""
    kinds = sorted(o["kind"] for o in sidecar_objects)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "ConfigMap", "ConfigMap", "Secret", "Service", "Service",
                            "StatefulSet", "ServiceMonitor", "PrometheusRule"])
    assert [o["metadata"]["name"] for o in sidecar_objects if o["kind"] == "Secret"] == ["postgresql-credentials"]
    assert by_kind(sidecar_objects, "StatefulSet")["spec"]["replicas"] == 1
    untouched = ("ServiceAccount", "ServiceMonitor", "PrometheusRule")
    assert [o for o in sidecar_objects if o["kind"] in untouched] == [o for o in objects if o["kind"] in untouched]
    for key in ("pgparent-dashboard.json", "rules.yaml"):
        assert configmap_with(sidecar_objects, key) == configmap_with(objects, key)


def test_sidecar_shares_the_process_namespace_as_the_postgres_uid(sidecar_objects: list[Obj]) -> None:
    """The pod shares one process namespace, so the pids of pg_stat_activity are pgparent's; pgparent runs as the
    postgres container's UID, so /proc/<pid>/io is readable, and with no capability at all (no CAP_SYS_PTRACE), a
    read-only root and no privilege escalation; both containers run non-root."""
    pod, postgres, pgparent = _sidecar_pod(sidecar_objects)
    assert pod["shareProcessNamespace"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    def uid(container: Obj) -> int:
        value = container.get("securityContext", {}).get("runAsUser", pod["securityContext"].get("runAsUser"))
        assert isinstance(value, int), f"{container['name']}: no numeric runAsUser"
        return value

    assert uid(pgparent) == uid(postgres) == 999, "the official postgres image's UID"
    assert pgparent["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }
    assert "add" not in postgres["securityContext"].get("capabilities", {})


def test_sidecar_reaches_the_server_over_the_shared_socket_as_the_least_privilege_role(
    sidecar_objects: list[Obj],
) -> None:
    """pgparent's libpq variables name the socket directory that both containers mount from one volume (PostgreSQL's
    own /var/run/postgresql, read-only for pgparent) and role pgparent, whose password is the Secret key the initdb
    script creates the role with; the server asks every local connection for a password."""
    pod, postgres, pgparent = _sidecar_pod(sidecar_objects)
    env, pg_env = _env(pgparent), _env(postgres)
    assert (env["PGHOST"], env["PGUSER"]) == ("/var/run/postgresql", "pgparent")
    assert "PGPARENT_DSN" not in env
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in (postgres, pgparent)}
    socket = mounts["pgparent"][env["PGHOST"]]
    assert socket["readOnly"] is True
    assert mounts["postgres"][env["PGHOST"]]["name"] == socket["name"]
    assert {"name": socket["name"], "emptyDir": {}} in pod["volumes"]
    assert env["PGPASSWORD"] == pg_env["PGPARENT_PASSWORD"]
    secret = by_kind(sidecar_objects, "Secret")
    key = env["PGPASSWORD"]["secretKeyRef"]
    assert key["name"] == secret["metadata"]["name"] and key["key"] in secret["stringData"]
    assert pg_env["POSTGRES_INITDB_ARGS"] == "--auth=scram-sha-256", "initdb trusts local connections by default"


def test_sidecar_initdb_script_creates_the_least_privilege_role(sidecar_objects: list[Obj]) -> None:
    """The script the postgres image runs when it initialises the data directory is mounted executable at
    /docker-entrypoint-initdb.d and creates exactly docs/least-privilege.sql's role and grants, with the Secret's
    password instead of the example's."""
    pod, postgres, _ = _sidecar_pod(sidecar_objects)
    (mount,) = [m for m in postgres["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["defaultMode"] == 0o555
    (initdb,) = [o for o in sidecar_objects if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"] == volume["configMap"]["name"]]
    (script,) = initdb["data"].values()

    def statements(text: str) -> list[str]:
        return [line for line in text.splitlines() if re.match(r"(CREATE|GRANT) ", line)]

    expected = [line.replace("'change-me'", ":'password'")
                for line in statements((REPO / "docs" / "least-privilege.sql").read_text())]
    assert statements(script) == expected
    assert '--set password="$PGPARENT_PASSWORD"' in script and "ON_ERROR_STOP=1" in script


def test_sidecar_runs_the_cli_and_is_scraped_through_the_service(sidecar_objects: list[Obj]) -> None:
    """The sidecar's args parse with pgparent's CLI and read the base's rules ConfigMap; the Service pgparent selects
    the PostgreSQL pod and its port `metrics` is the sidecar's, which the ServiceMonitor scrapes; probes on
    /healthz."""
    from exporter.cli.main import build_parser

    pod, _, pgparent = _sidecar_pod(sidecar_objects)
    args = build_parser().parse_args(pgparent["args"])
    assert (args.command, args.config_file, args.listen) == ("run", "/etc/pgparent/rules.yaml", ":10187")
    rules_cm = configmap_with(sidecar_objects, "rules.yaml")["metadata"]["name"]
    assert {"name": "rules", "configMap": {"name": rules_cm}} in pod["volumes"]
    assert pgparent["ports"] == [{"name": "metrics", "containerPort": 10187, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert pgparent[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    labels = by_kind(sidecar_objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    service = next(o for o in sidecar_objects if o["kind"] == "Service" and o["metadata"]["name"] == "pgparent")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 10187, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = by_kind(sidecar_objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
