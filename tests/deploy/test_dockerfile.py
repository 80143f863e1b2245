"""Lint-level checks of the Dockerfile (Docker cannot build on our machines): every script it
runs exists and is executable and is the project's own setup script, layers keep torch cached,
and the runtime stage is non-root with a working HEALTHCHECK. The entrypoint's seeding and
the HEALTHCHECK command are run for real."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_every_run_uses_scripts_the_repo_has():
    runs = [args for ins, args in instructions() if ins == "RUN"]
    assert runs
    setup_runs = 0
    for args in runs:
        for path in re.findall(r"(?:^|[\s;&|])((?:\./)?(?:scripts|deploy)/[\w./-]+)", args):
            target = REPO / path
            assert target.is_file(), f"RUN {args!r}: {path} does not exist"
            assert os.access(target, os.X_OK), f"RUN {args!r}: {path} is not executable"
        setup_runs += "scripts/setup.sh" in args
    assert setup_runs >= 2, "the build stage must install through scripts/setup.sh (deps layer, then code)"
    # The only other RUN installs the runtime libraries of what setup.sh builds.
    others = [a for a in runs if "scripts/setup.sh" not in a]
    assert len(others) == 1 and "apt-get install" in others[0]


def test_runtime_apt_packages_are_what_setup_sh_builds_against():
    """The runtime stage installs the shared libraries behind setup.sh's -dev packages."""
    (runtime_apt,) = [a for i, a in stages()[-1] if i == "RUN" and "apt-get install" in a]
    words = shlex.split(runtime_apt.split("apt-get install", 1)[1].split("&&", 1)[0])
    packages = [w for w in words if not w.startswith("-")]
    assert packages
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "libsndfile1" in setup and "libboost-program-options-dev" in setup and "libboost-thread-dev" in setup
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian host: cannot check the package names")
    for pkg in packages:  # the -dev packages setup.sh installed pull exactly these in
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        assert result.stdout == "install ok installed", f"{pkg} is not a Debian 12 package installed by setup.sh"


def test_multi_stage_layers_keep_dependencies_cached():
    build, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert any(i == "ARG" and a == "PIP_INDEX_URL" for i, a in build), "pip's mirror setting must reach the build"
    ops = [(i, a) for i, a in build if i in ("COPY", "RUN")]
    copy_all = ops.index(("COPY", ". ."))
    first_setup = next(n for n, (i, a) in enumerate(ops) if i == "RUN" and "scripts/setup.sh" in a)
    assert first_setup < copy_all, "dependencies must install before the code is copied"
    dependency_files = ("pyproject.toml", "requirements.lock", "scripts/setup.sh")
    assert all(i == "COPY" and any(f in a for f in dependency_files) for i, a in ops[:first_setup]), ops[:first_setup]
    assert "ASR_SKIP_CHECK=1" in ops[first_setup][1], "the dependency layer has no code to check yet"
    assert "ASR_SKIP_TEST_TOOLS" in (REPO / "scripts" / "setup.sh").read_text()
    assert any(i == "ENV" and "ASR_SKIP_TEST_TOOLS=1" in a for i, a in build)
    # every COPY source exists (the build context is the repo)
    for ins, args in instructions():
        if ins == "COPY" and "--from=" not in args:
            for src in [w for w in shlex.split(args) if not w.startswith("--")][:-1]:
                assert (REPO / src).exists(), f"COPY source {src} does not exist"


def test_runtime_is_non_root_with_healthcheck_and_ports():
    runtime = stages()[-1]
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    exposed = {p.split("/")[0] for i, a in runtime if i == "EXPOSE" for p in a.split()}
    assert {"8000", "50051"} <= exposed
    (health,) = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert "/health/ready" in health and "curl" not in health
    (entry,) = [a for i, a in runtime if i == "ENTRYPOINT"]
    script = json.loads(entry)[0].removeprefix("/app/")
    assert (REPO / script).is_file() and os.access(REPO / script, os.X_OK)
    dockerignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs", "registry", ".cache", "**/__pycache__"):
        assert entry in dockerignore, f".dockerignore lacks {entry}"


def test_healthcheck_command_probes_a_real_server(asr_server):
    (health,) = [a for i, a in stages()[-1] if i == "HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1].strip())
    assert cmd[0] == "python"
    env = dict(os.environ, ASR_HTTP_PORT=str(asr_server.port))
    ok = subprocess.run([shutil.which("python3") or "python3", *cmd[1:]], env=env, timeout=30)
    assert ok.returncode == 0
    env["ASR_HTTP_PORT"] = "9"  # nothing listens there: unhealthy
    assert subprocess.run([shutil.which("python3") or "python3", *cmd[1:]], env=env, timeout=30,
                          capture_output=True).returncode != 0


def test_entrypoint_seeds_missing_versions_and_runs_the_command(tmp_path):
    starter, registry = tmp_path / "starter", tmp_path / "registry"
    for name, version in (("an4-quartznet", "1"), ("an4-lm", "1")):
        (starter / name / version).mkdir(parents=True)
        (starter / name / version / "metadata.json").write_text(json.dumps({"name": name}))
    (registry / "an4-quartznet" / "1").mkdir(parents=True)
    (registry / "an4-quartznet" / "1" / "metadata.json").write_text('{"kept": true}')
    env = dict(os.environ, ASR_STARTER_REGISTRY=str(starter), ASR_REGISTRY=str(registry))
    result = subprocess.run([str(REPO / "deploy" / "docker-entrypoint.sh"), "echo", "command ran"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("command ran")
    assert (registry / "an4-lm" / "1" / "metadata.json").is_file()
    assert json.loads((registry / "an4-quartznet" / "1" / "metadata.json").read_text()) == {"kept": True}
    assert not list((registry / ".tmp").iterdir())


def test_replicas_starting_together_on_one_volume_seed_each_version_once_and_whole(tmp_path):
    """Pods of a Deployment run the entrypoint at once on one ReadWriteMany volume: no nested or partial copies."""
    starter, registry = tmp_path / "starter", tmp_path / "registry"
    version = starter / "an4-quartznet" / "1"
    version.mkdir(parents=True)
    (version / "metadata.json").write_text(json.dumps({"name": "an4-quartznet"}))
    (version / "model.safetensors").write_bytes(os.urandom(4 << 20))  # a copy that takes a moment
    env = dict(os.environ, ASR_STARTER_REGISTRY=str(starter), ASR_REGISTRY=str(registry))
    entrypoint = str(REPO / "deploy" / "docker-entrypoint.sh")
    runs = [subprocess.Popen([entrypoint, "true"], env=env, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for run in runs:
        assert run.wait(60) == 0, run.stderr.read()
    seeded = registry / "an4-quartznet" / "1"
    assert sorted(p.name for p in seeded.iterdir()) == ["metadata.json", "model.safetensors"]
    assert (seeded / "model.safetensors").read_bytes() == (version / "model.safetensors").read_bytes()
    assert not list((registry / ".tmp").iterdir())
