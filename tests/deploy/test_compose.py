"""docker-compose.yml through a real Compose implementation's validation (Debian's
docker-compose 1.29, which needs no Docker daemon for `config`; profiles need >= 1.28)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.deploy.conftest import REPO, require_tool

SERVING = {"asr", "lb", "prometheus", "grafana"}
TRAINING = {"ray-head", "ray-worker", "trainer"}


def compose_config(*args: str) -> dict:
    binary = require_tool("docker-compose", "docker-compose (Debian package docker-compose)")
    env = dict(os.environ, ASR_ENV_FILE="deploy/asr.env.example")  # deploy/asr.env is the user's copy
    for var in ("ASR_IMAGE", "PIP_INDEX_URL", "ASR_TRAIN_ARGS", "ASR_TRAIN_RECIPE", "ASR_SPEECH_DIR"):
        env.pop(var, None)
    result = subprocess.run([binary, "-f", "docker-compose.yml", *args, "config"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config("--profile", "training")


def test_default_profile_serves_with_monitoring(config):
    default = {name for name, svc in config["services"].items() if not svc.get("profiles")}
    assert default == SERVING
    plain = compose_config()  # validates without --profile too
    assert SERVING <= set(plain["services"])


def test_training_profile_has_a_ray_cluster_and_trainer(config):
    for name in TRAINING:
        assert config["services"][name]["profiles"] == ["training"], name
    worker = config["services"]["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker, "ray-worker must be scalable (--scale)"
    assert "--address=ray-head:6379" in worker["command"]
    assert "--head" in config["services"]["ray-head"]["command"]
    trainer = config["services"]["trainer"]
    assert trainer["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert "asr train" in " ".join(trainer["command"])
    recipe = trainer["environment"]["ASR_TRAIN_RECIPE"]
    assert (REPO / recipe).is_file(), recipe


def _volumes(svc: dict) -> dict[str, str]:
    """target -> source of a service's volumes, in compose's normalised output (short or long form)."""
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out[parts[1]] = parts[0]
        else:
            out[v["target"]] = v.get("source")
    return out


def test_registry_volume_is_shared_by_server_and_trainer(config):
    assert "registry" in config["volumes"]
    asr = config["services"]["asr"]
    registry = asr["environment"]["ASR_REGISTRY"]
    assert _volumes(asr)[registry] == "registry"
    trainer = config["services"]["trainer"]
    assert trainer["environment"]["ASR_REGISTRY"] == registry
    assert _volumes(trainer)[registry] == "registry"


def test_replicas_scale_behind_the_balancer_which_publishes_the_ports(config):
    asr, lb = config["services"]["asr"], config["services"]["lb"]
    assert "ports" not in asr and "container_name" not in asr, "asr must be scalable (--scale asr=N)"
    assert {str(p) for p in asr["expose"]} == {"8000", "50051"}
    published = {(int(p["published"]), int(p["target"])) if isinstance(p, dict) else tuple(map(int, p.split(":")))
                 for p in lb["ports"]}
    assert published == {(8000, 8000), (50051, 50051)}
    assert lb["image"].startswith("nginx:") and lb["image"].endswith("-bookworm")  # Debian's nginx
    template = _volumes(lb)["/etc/nginx/templates/asr.conf.template"]
    assert template.endswith("deploy/nginx/asr.conf.template") and os.path.isfile(template)
    assert lb["environment"]["ASR_HTTP_UPSTREAMS"].startswith("server asr:8000 ")
    assert lb["environment"]["ASR_GRPC_UPSTREAMS"].startswith("server asr:50051 ")
    assert (lb["environment"]["ASR_LB_HTTP_PORT"], lb["environment"]["ASR_LB_GRPC_PORT"]) == ("8000", "50051")


def test_asr_service_env_file_and_gpu_hint(config):
    asr = config["services"]["asr"]
    assert "ASR_ADMIN_TOKEN" in asr["environment"], "the env file must provide ASR_ADMIN_TOKEN"
    assert "PIP_INDEX_URL" in asr["build"]["args"], "pip's mirror setting must reach the image build"
    text = (REPO / "docker-compose.yml").read_text()
    assert "# deploy:" in text and "driver: nvidia" in text, "the GPU reservation example is gone"
    example = (REPO / "deploy" / "asr.env.example").read_text()
    assert "ASR_ADMIN_TOKEN=" in example
    assert "asr.env" in (REPO / "deploy" / ".gitignore").read_text().split()
    assert "deploy/asr.env" in (REPO / ".dockerignore").read_text().split()


def test_mounted_files_exist(config):
    for name, svc in config["services"].items():
        for target, source in _volumes(svc).items():
            if source and source.startswith("/") and not source.endswith("shared/speech"):
                assert os.path.exists(source), f"{name}: {source} (mounted at {target}) does not exist"
