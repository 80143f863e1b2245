"""deploy/kubernetes against the API schemas of pinned Kubernetes versions (kubernetes-validate, strict: an unknown
field is an error), and against what the server really does: its probe paths, ports, settings, drain and memory.

No cluster ran these manifests here; the schemas and the checks below are what is verified.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.config import ServiceConfig
from service.http_api import router
from tests.deploy.conftest import REPO

K8S = REPO / "deploy" / "kubernetes"
# The oldest minor still in the big clouds' extended support and the newest the schemas know (1.37).
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
MEMORY_BENCH = REPO / "bench" / "results" / "long_audio_2026-12-07.json"


def _manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text())]


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    """The one manifest of each kind but Service."""
    return {doc["kind"]: doc for doc in _manifests() if doc["kind"] != "Service"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in _manifests() if doc["kind"] == "Service"}


@pytest.fixture(scope="module")
def pod(docs) -> dict:
    return docs["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    [asr] = pod["spec"]["containers"]
    return asr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_a_pinned_kubernetes(version):
    kinds = sorted(doc["kind"] for doc in _manifests())
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "Service", "Service"]
    for doc in _manifests():
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_typo_is_refused_by_the_strict_schema(docs):
    broken = json.loads(json.dumps(docs["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")


def test_probes_use_the_servers_health_routes_on_its_port(container):
    paths = {route.path for route in router.routes}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live" in paths
    assert container["readinessProbe"]["httpGet"]["port"] == container["livenessProbe"]["httpGet"]["port"] == "http"
    defaults = ServiceConfig()
    assert ports == {"http": defaults.http_port, "grpc": defaults.grpc_port}


def _config_env(docs) -> dict[str, str]:
    return docs["ConfigMap"]["data"]


def test_every_setting_is_one_the_server_reads(docs, container):
    names = set(_config_env(docs)) | {e["name"] for e in container["env"]}
    fields = {f"ASR_{name.upper()}" for name in ServiceConfig.model_fields}
    unknown = {n for n in names if n.split("__")[0] not in fields}
    assert not unknown, f"not ServiceConfig fields: {unknown}"
    config = ServiceConfig(**{k[4:].lower(): v for k, v in _config_env(docs).items()})  # and each value parses
    assert config.registry_poll_s > 0


def test_termination_grace_covers_the_pre_stop_sleep_and_the_drain(docs, pod, container):
    drain_s = float(_config_env(docs)["ASR_DRAIN_TIMEOUT_S"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    # The readiness probe must see the drain before the sleep ends, or the endpoints keep a refusing pod.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < pre_stop_s
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 5


def test_the_registry_is_one_read_write_many_volume_at_asr_registry(docs, pod, container):
    claim = docs["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    [volume] = pod["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    [mount] = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == _config_env(docs)["ASR_REGISTRY"]
    # The image's user (Dockerfile ASR_UID) owns what the pods write there.
    assert pod["spec"]["securityContext"]["runAsUser"] == pod["spec"]["securityContext"]["fsGroup"] == 10001
    assert "ARG ASR_UID=10001" in (REPO / "Dockerfile").read_text()


def test_memory_request_and_limit_follow_the_measured_default_model(container):
    measured = json.loads(MEMORY_BENCH.read_text())["memory"]
    peak_mb = max(m["four"]["rss_mb_before"] + m["four"]["peak_growth_mb"] for m in measured.values()
                  if isinstance(m, dict) and "four" in m)
    at_rest_mb = max(m["rss_mb_before"] for m in measured.values() if isinstance(m, dict) and "rss_mb_before" in m)
    mib = {"Mi": 1, "Gi": 1024}
    request, limit = ((int(q[:-2]) * mib[q[-2:]]) * 1.048576 for q in
                      (container["resources"]["requests"]["memory"], container["resources"]["limits"]["memory"]))
    assert request >= peak_mb  # four hour-long uploads at once fit the request
    assert limit >= peak_mb + at_rest_mb  # and a second version (a switch or a canary) fits the limit


def test_services_hpa_and_pdb_select_the_deployments_pods(docs, services, pod):
    labels = pod["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert set(services) == {"asr-http", "asr-grpc"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for s in services.values() for p in s["spec"]["ports"]} == {"http", "grpc"}
    assert services["asr-grpc"]["spec"]["clusterIP"] == "None"  # headless: clients balance calls over the pods
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])


def test_torch_threads_match_the_cpus_the_pod_requests(docs, container):
    assert int(_config_env(docs)["ASR_TORCH_THREADS"]) == int(container["resources"]["requests"]["cpu"])
