"""The Helm chart (helm/llm-gateway): linted, rendered for a matrix of values, every render validated offline
against the Kubernetes schemas (strict: an unknown field fails), and the parsed manifests checked.

helm is the real binary (`make helm` installs it beside the venv's python; `make test` does so first).
"""

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config.catalog import load_catalogue
from gateway.exposure import exposure_problem
from tests.servers import free_port, wait_for

CHART = Path(__file__).resolve().parent.parent / "helm" / "llm-gateway"
SIDECAR_EXAMPLE = yaml.safe_load((CHART / "examples" / "sidecar.yaml").read_text())
KUBERNETES_VERSION = "1.30.0"  # the chart's kubeVersion floor
# validated against the floor and the newest schemas kubernetes-validate holds (an API removed since shows)
SCHEMA_VERSIONS = (KUBERNETES_VERSION, "1.37.0")
# kinds of CRDs the schemas of kubernetes-validate do not hold; checked field by field below instead
CRD_KINDS = {"ServiceMonitor"}

Manifest = dict[str, Any]

# a catalogue of the user's own (no demo key) whose deployment reads OPENAI_API_KEY, mapped to a Secret
OWN_CATALOGUE = {
    "catalogue": SIDECAR_EXAMPLE["catalogue"],
    "providerKeys": SIDECAR_EXAMPLE["providerKeys"],
}
INGRESS = {
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
        "hosts": [{"host": "llm.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "llm-example-com-tls", "hosts": ["llm.example.com"]}],
    }
}
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": OWN_CATALOGUE,
    "ingress": {**OWN_CATALOGUE, **INGRESS},
    "hpa": {**OWN_CATALOGUE, "autoscaling": {"enabled": True}, "redis": {"url": "redis://:pw@redis.example:6379/0"}},
    "servicemonitor": {**OWN_CATALOGUE, "serviceMonitor": {"enabled": True, "tokenSecret": {"name": "scrape"}}},
    "bundled-redis": {**OWN_CATALOGUE, "replicaCount": 3, "redis": {"bundled": {"enabled": True}}},
    "files-volume": {**OWN_CATALOGUE, "files": {"persistentVolumeClaim": "gateway-files"}},
    "all-on": {
        **OWN_CATALOGUE,
        **INGRESS,
        "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "redis": {"existingSecret": "gateway-redis", "existingSecretKey": "url"},
        "env": {"GATEWAY_LOG_LEVEL": "warning"},
    },
    "demo": {"demo": {"enabled": True}},
    "sidecar": SIDECAR_EXAMPLE,
}


@pytest.fixture(scope="module")
def helm() -> str:
    binary = Path(sys.executable).parent / "helm"
    if not binary.exists():
        pytest.fail("helm is not installed: run `make helm` (make test does)")
    return str(binary)


def run_helm(helm: str, tmp_path: Path, command: str, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    args = [helm, "lint", "--strict"] if command == "lint" else [helm, "template", "gw", "--kube-version"]
    if command == "template":
        args.append(KUBERNETES_VERSION)
    return subprocess.run([*args, str(CHART), "-f", str(values_file)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def renders(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    tmp_path = tmp_path_factory.mktemp("helm")
    rendered = {}
    for name, values in MATRIX.items():
        result = run_helm(helm, tmp_path, "template", values)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        rendered[name] = parse(result.stdout)
    return rendered


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; the API server refuses the manifest: so do the tests."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = {key for key in keys if keys.count(key) > 1}
        if duplicates:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse(rendered: str) -> list[Manifest]:
    return [doc for doc in yaml.load_all(rendered, Loader=_UniqueKeyLoader) if doc]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {manifest["kind"] for manifest in manifests}


def one(manifests: list[Manifest], kind: str, component: str = "gateway") -> Manifest:
    found = [
        m
        for m in manifests
        if m["kind"] == kind and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"{kind}/{component}: {len(found)} found"
    return found[0]


def pod_spec(manifests: list[Manifest], component: str = "gateway") -> Manifest:
    return dict(one(manifests, "Deployment", component)["spec"]["template"]["spec"])


def gateway_container(manifests: list[Manifest]) -> Manifest:
    pod = pod_spec(manifests)
    containers = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == "gateway"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: Manifest) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container["env"]}


@pytest.mark.parametrize("name", ["defaults", "all-on", "sidecar", "demo"])
def test_the_chart_passes_helm_lint_strict(helm: str, tmp_path: Path, name: str) -> None:
    result = run_helm(helm, tmp_path, "lint", MATRIX[name])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", MATRIX)
def test_every_render_is_valid_kubernetes_strictly(renders: dict[str, list[Manifest]], name: str) -> None:
    for manifest in renders[name]:
        if manifest["kind"] in CRD_KINDS:
            continue
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        (
            "defaults",
            {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"},
            {"HorizontalPodAutoscaler", "ServiceMonitor", "Ingress", "Secret", "NetworkPolicy"},
        ),
        ("ingress", {"Ingress"}, {"HorizontalPodAutoscaler", "ServiceMonitor"}),
        ("hpa", {"HorizontalPodAutoscaler", "Secret"}, {"Ingress", "ServiceMonitor"}),
        ("servicemonitor", {"ServiceMonitor"}, {"Ingress", "HorizontalPodAutoscaler"}),
        ("all-on", {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor"}, {"Secret"}),
        ("bundled-redis", {"NetworkPolicy"}, {"Secret"}),
        ("demo", {"Deployment", "Service", "Pod"}, {"ConfigMap"}),
        ("sidecar", {"Deployment", "ConfigMap"}, {"Service", "Ingress", "ServiceMonitor", "Pod"}),
    ],
)
def test_what_each_set_of_values_renders(
    renders: dict[str, list[Manifest]], name: str, present: set[str], absent: set[str]
) -> None:
    assert present <= kinds(renders[name])
    assert not absent & kinds(renders[name])


def test_hpa_replaces_the_replica_count(renders: dict[str, list[Manifest]]) -> None:
    hpa = one(renders["all-on"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(renders["all-on"], "Deployment")["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    assert "replicas" not in one(renders["all-on"], "Deployment")["spec"]
    assert one(renders["defaults"], "Deployment")["spec"]["replicas"] == 1


def test_servicemonitor_scrapes_metrics_on_the_gateway_port(renders: dict[str, list[Manifest]]) -> None:
    monitor = one(renders["all-on"], "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    service = one(renders["all-on"], "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["spec"]["ports"][0]["name"] == "http"


def test_the_metrics_token_comes_from_a_secret_to_the_gateway_and_the_servicemonitor(
    renders: dict[str, list[Manifest]],
) -> None:
    endpoint = one(renders["servicemonitor"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "scrape", "key": "token"}}
    env = one(renders["servicemonitor"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    token = [e for e in env if e["name"] == "GATEWAY_METRICS_TOKEN"]
    assert token == [
        {"name": "GATEWAY_METRICS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "scrape", "key": "token"}}}
    ]
    defaults = one(renders["defaults"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "GATEWAY_METRICS_TOKEN" not in {e["name"] for e in defaults}


def test_ingress_routes_to_the_service(renders: dict[str, list[Manifest]]) -> None:
    ingress = one(renders["ingress"], "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(renders["ingress"], "Service")["metadata"]["name"], "port": {"name": "http"}}


@pytest.mark.parametrize("name", MATRIX)
def test_every_container_runs_unprivileged_on_a_read_only_root(renders: dict[str, list[Manifest]], name: str) -> None:
    for workload in (m for m in renders[name] if m["kind"] in ("Deployment", "Pod")):
        pod = workload["spec"]["template"]["spec"] if workload["kind"] == "Deployment" else workload["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
    pod = pod_spec(renders[name])
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert {"name": "tmp", "mountPath": "/tmp"} in gateway_container(renders[name])["volumeMounts"]


def test_helm_test_asks_the_service_for_healthz_and_readyz(renders: dict[str, list[Manifest]]) -> None:
    smoke = one(renders["defaults"], "Pod", "smoke-test")
    assert smoke["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = one(renders["defaults"], "Service")
    script = smoke["spec"]["containers"][0]["command"][-1]
    assert f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" in script
    assert "'/healthz', '/readyz'" in script


def test_probes_ask_healthz_and_readyz_on_the_gateway_port(renders: dict[str, list[Manifest]]) -> None:
    container = gateway_container(renders["defaults"])
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert env_of(container)["GATEWAY_HOST"] == "0.0.0.0"
    assert env_of(container)["GATEWAY_PORT"] == "8080"


def test_provider_keys_and_the_redis_url_come_from_secrets(renders: dict[str, list[Manifest]]) -> None:
    env = env_of(gateway_container(renders["all-on"]))
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "llm-provider-keys", "key": "openai"}}
    assert env["GATEWAY_REDIS_URL"] == {"secretKeyRef": {"name": "gateway-redis", "key": "url"}}
    assert env["GATEWAY_LOG_LEVEL"] == "warning"
    # a URL given as a value is written to a Secret of the chart's, never into the pod spec
    env = env_of(gateway_container(renders["hpa"]))
    secret = one(renders["hpa"], "Secret")
    assert env["GATEWAY_REDIS_URL"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "redis-url"}}
    assert secret["stringData"] == {"redis-url": "redis://:pw@redis.example:6379/0"}
    assert "GATEWAY_REDIS_URL" not in env_of(gateway_container(renders["defaults"]))


def test_the_bundled_redis_serves_the_gateway(renders: dict[str, list[Manifest]]) -> None:
    service = one(renders["bundled-redis"], "Service", "redis")
    env = env_of(gateway_container(renders["bundled-redis"]))
    assert env["GATEWAY_REDIS_URL"] == f"redis://{service['metadata']['name']}:6379/0"
    redis = pod_spec(renders["bundled-redis"], "redis")["containers"][0]
    assert "noeviction" in redis["args"]
    policy = one(renders["bundled-redis"], "NetworkPolicy", "redis")
    gateway_labels = one(renders["bundled-redis"], "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": gateway_labels}}]


@pytest.mark.parametrize("name", MATRIX)
def test_the_pod_outlives_the_drain_and_the_shutdown_grace(renders: dict[str, list[Manifest]], name: str) -> None:
    pod = pod_spec(renders[name])
    container = gateway_container(renders[name])
    env = env_of(container)
    grace = float(env["GATEWAY_SHUTDOWN_GRACE_SECONDS"]) + float(env["GATEWAY_SHUTDOWN_CLEANUP_SECONDS"])
    drain = float(container["lifecycle"]["preStop"]["exec"]["command"][1]) if "lifecycle" in container else 0.0
    assert "GATEWAY_SHUTDOWN_DELAY_SECONDS" not in env  # the preStop sleep is the delay
    assert pod["terminationGracePeriodSeconds"] > grace + drain


def test_the_catalogue_configmap_is_what_the_gateway_loads(renders: dict[str, list[Manifest]], tmp_path: Path) -> None:
    configmap = one(renders["defaults"], "ConfigMap")
    path = tmp_path / "gateway.yaml"
    path.write_text(configmap["data"]["gateway.yaml"])
    catalogue = load_catalogue(path)
    assert exposure_problem("0.0.0.0", catalogue.tenants, demo=False) is None
    container = gateway_container(renders["defaults"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "catalogue")
    assert env_of(container)["GATEWAY_CONFIG"] == f"{mount['mountPath']}/gateway.yaml"
    assert "GATEWAY_DEMO" not in env_of(container)


def test_a_demo_install_says_so(renders: dict[str, list[Manifest]]) -> None:
    env = env_of(gateway_container(renders["demo"]))
    assert env["GATEWAY_DEMO"] == "1"
    assert "GATEWAY_CONFIG" not in env  # the image's example catalogue


def test_a_files_volume_is_mounted_and_the_gateway_keeps_uploads_on_it(renders: dict[str, list[Manifest]]) -> None:
    gateway = gateway_container(renders["files-volume"])
    env = env_of(gateway)
    assert (env["GATEWAY_FILES_BACKEND"], env["GATEWAY_FILES_DIRECTORY"]) == ("directory", "/var/lib/llm-gateway/files")
    assert {"name": "files", "mountPath": "/var/lib/llm-gateway/files"} in gateway["volumeMounts"]
    volumes = pod_spec(renders["files-volume"])["volumes"]
    assert {"name": "files", "persistentVolumeClaim": {"claimName": "gateway-files"}} in volumes
    assert "GATEWAY_FILES_BACKEND" not in env_of(gateway_container(renders["defaults"]))


def test_the_sidecar_listens_on_loopback_beside_the_app(renders: dict[str, list[Manifest]]) -> None:
    pod = pod_spec(renders["sidecar"])
    assert [c["name"] for c in pod["containers"]] == ["app"]
    app_env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    gateway = gateway_container(renders["sidecar"])
    assert gateway in pod["initContainers"] and gateway["restartPolicy"] == "Always"  # a native sidecar
    env = env_of(gateway)
    assert env["GATEWAY_HOST"] == "127.0.0.1"
    assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{env['GATEWAY_PORT']}/v1"
    assert "ports" not in gateway
    # the kubelet cannot reach a loopback listener: the probes run inside the container
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert f"http://127.0.0.1:8080{path}" in gateway[probe]["exec"]["command"][-1]
    assert env["GATEWAY_REDIS_URL"] == {"secretKeyRef": {"name": "llm-gateway-redis", "key": "redis-url"}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {**OWN_CATALOGUE, "replicaCount": 2},
            "more than one replica (replicaCount > 1 or autoscaling.enabled) needs a Redis",
        ),
        ({**OWN_CATALOGUE, "autoscaling": {"enabled": True}}, "needs a Redis"),
        ({**SIDECAR_EXAMPLE, "redis": {"existingSecret": ""}}, "needs a Redis"),
        ({}, "catalogue is required"),
        ({"catalogue": OWN_CATALOGUE["catalogue"]}, "no providerKeys entry maps a Secret to it"),
        ({**OWN_CATALOGUE, "terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds (15) must exceed"),
        ({**OWN_CATALOGUE, "redis": {"url": "redis://r:6379", "bundled": {"enabled": True}}}, "give only one of"),
        ({**OWN_CATALOGUE, "env": {"GATEWAY_HOST": "0.0.0.0"}}, "env.GATEWAY_HOST is set by the chart"),
        ({**SIDECAR_EXAMPLE, **INGRESS}, "the gateway listens on 127.0.0.1 only"),
        ({**OWN_CATALOGUE, "ingress": {"enabled": True}}, "ingress.enabled needs ingress.hosts"),
        ({**OWN_CATALOGUE, "replicas": 2}, "additional properties 'replicas' not allowed"),
        ({**OWN_CATALOGUE, "redis": {"url": "http://redis:6379"}}, "redis"),
    ],
)
def test_values_that_cannot_run_fail_the_render(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = run_helm(helm, tmp_path, "template", values)
    assert result.returncode != 0
    assert message in result.stderr


def probe_check(probe: Manifest, port: int) -> Callable[[], bool]:
    """What the kubelet does with a probe: GET its path on the container's port, or run its command."""
    if "httpGet" in probe:
        url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"

        def get() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        return get
    command = [sys.executable if part == "python" else part for part in probe["exec"]["command"]]
    return lambda: subprocess.run(command, capture_output=True, timeout=30).returncode == 0


@pytest.mark.parametrize("name", ["defaults", "sidecar"])
def test_the_rendered_container_runs_a_gateway_its_probes_find_ready(
    helm: str, tmp_path: Path, redis_url: str, redis_prefix: str, name: str
) -> None:
    """The gateway started as the pod spec says (its env, the Secrets' values, the ConfigMap's catalogue),
    probed as the kubelet would, then stopped by SIGTERM within the pod's grace period."""
    port = free_port()
    result = run_helm(helm, tmp_path, "template", {**MATRIX[name], "port": port})
    assert result.returncode == 0, result.stderr
    manifests = parse(result.stdout)
    container = gateway_container(manifests)
    secrets = {("llm-provider-keys", "openai"): "sk-provider-test", ("llm-gateway-redis", "redis-url"): redis_url}
    env = {}
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        env[entry["name"]] = secrets[ref["name"], ref["key"]] if ref else entry["value"]
    config = tmp_path / "gateway.yaml"
    config.write_text(one(manifests, "ConfigMap")["data"]["gateway.yaml"])
    assert env["GATEWAY_CONFIG"].endswith("/gateway.yaml")
    env["GATEWAY_CONFIG"] = str(config)  # the ConfigMap's mount, here
    env["GATEWAY_HOST"] = "127.0.0.1"  # the service shape listens on 0.0.0.0 in its pod; never here
    if "GATEWAY_REDIS_URL" in env:
        env["GATEWAY_REDIS_PREFIX"] = redis_prefix  # this run's own keys
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], env={**inherited, **env})
    try:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            # until it succeeds, or the process has exited (then it never will)
            passed = wait_for(probe_check(container[kind], port), lambda ok: ok or proc.poll() is not None, 60)
            assert passed, f"{kind} did not succeed (exit status {proc.poll()})"
        proc.terminate()
        assert proc.wait(pod_spec(manifests)["terminationGracePeriodSeconds"]) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
