"""The Helm chart deploy/helm/stile: rendered by Helm's engine with several value sets, every manifest validated
against the Kubernetes JSON schemas (strict: unknown fields fail) for the oldest and newest Kubernetes the chart
supports, the ServiceMonitor against a vendored schema, `helm lint --strict`, and the rendered Stile config
loaded by Stile's own loader with the environment the pod would have."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from stile.config.load import ConfigError, load_config
from tests.deploy.chart import CHART, FULLNAME, NAMESPACE, RenderError, lint, manifests, notes, one, render
from tests.deploy.dockerfile import parse
from tests.support import REPO

KUBE_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml kubeVersion >=1.25 .. the newest schemas bundled
SERVICE_MONITOR_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "servicemonitor-monitoring.coreos.com-v1.json").read_text())
KEY_HASH = "hmac-sha256$TjlKPf69eNdrcnfaoMq-Nw$Fp3DQQ7mUf2VyX1_yAtyPGQ-HkWiLV8GlZA3tf9yHGA"  # examples/identity.yaml
PG_PASSWORD = "s3cret-pg-password"

UPSTREAMS = {"upstreams": {"github": {"url": "http://github-mcp.tools.svc:3001/mcp"}},
             "virtual_servers": {"support": {"upstreams": ["github"]}}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "existing-secret": {
        "replicaCount": 3,
        "config": UPSTREAMS,
        "secrets": {"existingSecret": "stile-keys"},
        "state": {"existingSecret": "stile-postgres", "existingSecretKey": "url"},
        "redis": {"existingSecret": "stile-redis", "existingSecretKey": "url"},
        "apiKeys": [{"name": "nightly-report", "roles": ["analytics"], "secretName": "stile-api-keys",
                     "secretKey": "nightly-report"}],
    },
    "service-monitor": {"config": UPSTREAMS, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "ingress": {
        "config": {**UPSTREAMS, "allowed_hosts": ["gw.example.com"], "public_url": "https://gw.example.com"},
        "ingress": {"enabled": True, "className": "nginx",
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
                    "tls": [{"secretName": "gw-tls", "hosts": ["gw.example.com"]}]},
    },
    "scaled": {
        "config": {**UPSTREAMS, "audit": {"durability": "fsync"}, "metrics": {"public": False}},
        "state": {"url": f"postgresql://stile:{PG_PASSWORD}@postgres.db.svc:5432/stile"},
        "redis": {"url": "redis://redis.db.svc:6379/0"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "podDisruptionBudget": {"minAvailable": 2},
        "persistence": {"existingClaim": "stile-data"},
        "workers": "auto",
        "secrets": {"sessionKey": base64.b64encode(bytes(range(32))).decode(), "masterKey": "bWFzdGVy",
                    "metricsToken": "a-metrics-token-of-32-characters"},
        "serviceMonitor": {"enabled": True},
        "env": [{"name": "CRM_KEY", "valueFrom": {"secretKeyRef": {"name": "crm", "key": "key"}}}],
    },
    # the documented example values (docs/deploy.md)
    "example-replicas": yaml.safe_load((REPO / "deploy" / "helm" / "examples" / "replicas.yaml").read_text()),
}


def _validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc}") from None


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_manifest_validates_against_the_kubernetes_schemas(name: str) -> None:
    docs = manifests(VALUE_SETS[name])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        _validate(doc)
        assert doc["metadata"]["name"] == FULLNAME
    assert ("Secret" in kinds) == (name not in ("existing-secret", "example-replicas"))
    assert ("ServiceMonitor" in kinds) == (name in ("service-monitor", "scaled", "example-replicas"))
    assert ("Ingress" in kinds) == (name in ("ingress", "example-replicas"))
    assert ("HorizontalPodAutoscaler" in kinds) == (name == "scaled")


def test_the_schemas_do_refuse_a_wrong_manifest() -> None:
    """The validation above can fail: a typo'd field and a wrong type are caught."""
    deployment = one(manifests(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolcy"):
        _validate(deployment)
    monitor = one(manifests(VALUE_SETS["service-monitor"]), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict_passes(name: str) -> None:
    report = lint(VALUE_SETS[name])
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_pod_runs_as_the_images_user_with_a_read_only_root_and_no_capabilities() -> None:
    docs = manifests()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = _container(docs)
    runtime = parse((REPO / "Dockerfile").read_text()).stages[-1]
    image_uid = int(runtime.one("ARG").rest.split("=")[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid == 10001
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # what Stile writes (state, audit spool, write-ahead log; tmp) is a volume; the config mount is read-only
    assert set(mounts) == {"/etc/stile", "/var/lib/stile", "/tmp"}
    assert mounts["/etc/stile"]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STILE_CONFIG"] == "/etc/stile/stile.yaml" and env["STILE_PORT"] == "8080"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_probes_hit_healthz_and_readyz() -> None:
    container = _container(manifests())
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_with_allowed_hosts_the_readiness_probe_names_an_allowed_host() -> None:
    """/readyz is behind the Host check: the kubelet's Host (the pod IP) would be answered 421 forever."""
    probe = _container(manifests(VALUE_SETS["ingress"]))["readinessProbe"]["httpGet"]
    assert probe["httpHeaders"] == [{"name": "Host", "value": "gw.example.com"}]


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}


def test_an_existing_secret_supplies_session_key_master_key_state_redis_and_api_keys() -> None:
    docs = manifests(VALUE_SETS["existing-secret"])
    refs = _secret_refs(_container(docs))
    assert refs["STILE_SESSION_KEY"] == ("stile-keys", "session-key")
    assert refs["STILE_MASTER_KEY"] == ("stile-keys", "master-key")
    assert refs["STILE_STATE_URL"] == ("stile-postgres", "url")
    assert refs["STILE_REDIS_URL"] == ("stile-redis", "url")
    assert refs["STILE_API_KEY_HASH_0"] == ("stile-api-keys", "nightly-report")
    assert not [d for d in docs if d["kind"] == "Secret"]  # the chart writes none of its own
    assert one(docs, "Deployment")["spec"]["replicas"] == 3


def test_secret_values_never_reach_the_configmap_or_the_pod_spec() -> None:
    """A password in state.url, the session key, the metrics token: only in the Secret, base64 there."""
    values = VALUE_SETS["scaled"]
    docs = manifests(values)
    secret = one(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["state-url"] == values["state"]["url"]
    assert data["session-key"] == values["secrets"]["sessionKey"]
    assert data["metrics-token"] == values["secrets"]["metricsToken"]
    others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    for value in (PG_PASSWORD, values["secrets"]["sessionKey"], values["secrets"]["metricsToken"]):
        assert value not in others


def test_a_generated_session_key_is_32_random_bytes_and_differs_per_install() -> None:
    first, second = (base64.b64decode(one(manifests(), "Secret")["data"]["session-key"]) for _ in range(2))
    assert len(base64.b64decode(first)) == 32 and first != second  # data holds base64 of the base64 key


def test_the_service_monitor_scrapes_metrics_with_the_bearer_token_stile_checks() -> None:
    docs = manifests(VALUE_SETS["service-monitor"])
    [endpoint] = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": FULLNAME, "key": "metrics-token"}
    assert _secret_refs(_container(docs))["STILE_METRICS_TOKEN"] == (FULLNAME, "metrics-token")
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["stile.yaml"])
    assert config["metrics"]["token"] == "${STILE_METRICS_TOKEN}"
    token = base64.b64decode(one(docs, "Secret")["data"]["metrics-token"]).decode()
    assert len(token) >= 16  # metrics.token's minimum
    # the monitor selects the Service by its labels; the Service selects the pods
    service = one(docs, "Service")
    monitor_selects = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitor_selects.items() <= service["metadata"]["labels"].items()
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_ingress_routes_every_path_to_the_service() -> None:
    docs = manifests(VALUE_SETS["ingress"])
    ingress = one(docs, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["tls"] == [{"secretName": "gw-tls",
                                                                          "hosts": ["gw.example.com"]}]
    [rule] = ingress["rules"]
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": FULLNAME, "port": {"name": "http"}}}


def test_scaling_values_reach_the_hpa_pdb_volume_and_workers() -> None:
    docs = manifests(VALUE_SETS["scaled"])
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns the count
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2, "selector": {"matchLabels": one(docs, "Service")["spec"]["selector"]}}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "stile-data"}} in pod["volumes"]
    env = {e["name"]: e for e in _container(docs)["env"]}
    assert env["STILE_WORKERS"]["value"] == "auto"
    assert env["CRM_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "crm", "key": "key"}


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 2}, "needs a shared state store"),
    ({"autoscaling": {"enabled": True}}, "needs a shared state store"),
    ({"replicaCount": 2, "state": {"url": "sqlite:////var/lib/stile/stile.db"}}, "replicas need Postgres"),
    ({"secrets": {"sessionKey": base64.b64encode(b"short").decode()}}, "base64 of 32 bytes"),
    ({"secrets": {"metricsToken": "short"}}, "at least 16 characters"),
    ({"apiKeys": [{"name": "bot", "secretName": "keys"}]}, r"apiKeys\[0\] needs name, secretName and secretKey"),
    # values.schema.json: a typo'd or mistyped value is named, not silently ignored
    ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"replicaCount": "three"}, "/replicaCount': got string, want integer"),
    ({"workers": "many"}, "/workers"),
    ({"state": {"uri": "postgresql://pg/stile"}}, "additional properties 'uri' not allowed"),
])
def test_values_that_cannot_work_fail_the_render_with_a_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(values)


def _pod_environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment with made-up Secret contents (as the kubelet would resolve them)."""
    fake = {"session-key": base64.b64encode(bytes(32)).decode(), "metrics-token": "m" * 32,
            "redis-url": "redis://127.0.0.1:6379/0", "url": "postgresql://stile@127.0.0.1:5432/stile",
            "state-url": "postgresql://stile@127.0.0.1:5432/stile", "nightly-report": KEY_HASH,
            "api-key": "crm-key"}
    by_secret = {("stile-redis", "url"): "redis://127.0.0.1:6379/0"}  # the same key name in another Secret
    env: dict[str, str] = {}
    for e in _container(docs)["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif (ref := e["valueFrom"].get("secretKeyRef")) and not ref.get("optional") and ref["key"] in fake:
            env[e["name"]] = by_secret.get((ref["name"], ref["key"]), fake[ref["key"]])
    return env


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_rendered_config_loads_with_the_pods_environment(name: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    docs = manifests(VALUE_SETS[name])
    text = one(docs, "ConfigMap")["data"]["stile.yaml"]
    env = _pod_environment(docs)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "stile.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path).config
    assert cfg.state == env["STILE_STATE_URL"]
    assert cfg.audit.spool_dir == "/var/lib/stile/audit-spool"  # on the data volume, not beside the config
    if name == "defaults":
        assert cfg.state == "sqlite:////var/lib/stile/stile.db"
    for i, declared in enumerate(VALUE_SETS[name].get("apiKeys", [])):
        assert (cfg.auth.keys[i].name, cfg.auth.keys[i].hash) == (declared["name"], KEY_HASH)
        assert cfg.auth.keys[i].roles == declared["roles"]
    monkeypatch.delenv("STILE_STATE_URL")
    with pytest.raises(ConfigError, match="STILE_STATE_URL is not set"):  # a pod without it does not start
        load_config(path)


def test_an_existing_configmap_replaces_the_chart_config() -> None:
    docs = manifests({"existingConfigMap": "my-stile-config"})
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "my-stile-config",
                                            "items": [{"key": "stile.yaml", "path": "stile.yaml"}]}} in volumes


def test_notes_name_the_endpoints_and_what_more_replicas_need() -> None:
    text = notes(VALUE_SETS["ingress"])
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:80" in text and "/mcp/support" in text
    assert "https://gw.example.com/mcp/<virtual-server>" in text
    assert "For more replicas set state.url" in text
    scaled = notes({**VALUE_SETS["existing-secret"], "redis": {"url": ""}})
    assert "Several replicas without Redis" in scaled


def test_stile_understands_the_redis_key_the_chart_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = manifests(VALUE_SETS["scaled"])
    text = one(docs, "ConfigMap")["data"]["stile.yaml"]
    assert yaml.safe_load(text)["redis"] == "${STILE_REDIS_URL}"
    assert _secret_refs(_container(docs))["STILE_REDIS_URL"] == (FULLNAME, "redis-url")
    for key, value in _pod_environment(docs).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "stile.yaml").write_text(text, encoding="utf-8")
    assert load_config(tmp_path / "stile.yaml").config.redis == "redis://127.0.0.1:6379/0"


def test_what_the_config_sets_itself_wins_over_the_charts_additions() -> None:
    own = {"state": "postgresql://stile@pg:5432/stile", "audit": {"spool_dir": "/var/lib/stile/spool"},
           "metrics": {"token_hash": "hmac-sha256$a$b"}}
    docs = manifests({"config": own, "serviceMonitor": {"enabled": True}})
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["stile.yaml"])
    assert config["state"] == own["state"] and config["audit"] == own["audit"]
    assert config["metrics"] == own["metrics"]  # no `token` beside the hash: Stile refuses both at once


def test_a_release_named_stile_injects_no_service_variables_into_stiles_environment() -> None:
    """Kubernetes would set STILE_PORT=tcp://10.0.0.1:80 (and STILE_SERVICE_HOST, ...) for a Service `stile`."""
    with helm_python.Chart.load(str(CHART)) as loaded:
        rendered = loaded.render({}, name="stile", namespace=NAMESPACE, is_install=True)
    deployment = yaml.safe_load(rendered["stile/templates/deployment.yaml"])
    service = yaml.safe_load(rendered["stile/templates/service.yaml"])
    assert service["metadata"]["name"] == "stile"
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
