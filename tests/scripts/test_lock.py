"""The lock files match pyproject.toml, pin every package by hash, and name no package index."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import lock_digest  # noqa: E402  (scripts/ is not a package)

LOCK = REPO_ROOT / "requirements.lock"
BUILD_LOCK = REPO_ROOT / "build-requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")
# The lock is for Linux x86-64 and CPython 3.11, whatever machine runs this test.
TARGET = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "python_version": "3.11", "python_full_version": "3.11.7"}


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of sha256 hashes) for every package in a lock file."""
    found: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            found[current] = (match.group(2), 0)
        elif current and "--hash=sha256:" in line:
            version, hashes = found[current]
            found[current] = (version, hashes + line.count("--hash=sha256:"))
        elif not line.startswith((" ", "#")) and line.strip():
            pytest.fail(f"{path.name}: unexpected line {line!r}")
    return found


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def requirements(project: dict) -> list[Requirement]:
    listed = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        listed += extra
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize("lock", [LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_the_lock_was_made_from_this_pyproject(lock):
    want = f"# pyproject-sha256: {lock_digest.digest(pyproject())}"
    made_from_this = want in lock.read_text().splitlines()
    assert made_from_this, (
        f"{lock.name} was made from another pyproject.toml; run scripts/lock.sh")


def test_every_requirement_is_pinned_within_its_range():
    locked = pins(LOCK)
    for req in requirements(pyproject()):
        if req.marker and not req.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is in pyproject.toml but not in requirements.lock; run scripts/lock.sh"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject.toml's {req}; run scripts/lock.sh")


def test_build_requirements_are_pinned_to_the_same_versions():
    locked, build = pins(LOCK), pins(BUILD_LOCK)
    for spec in pyproject()["build-system"]["requires"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in build and req.specifier.contains(build[name][0]), f"{req} is not pinned in {BUILD_LOCK.name}"
        if name in locked:
            assert locked[name][0] == build[name][0], f"{name}: the two lock files pin different versions"


def test_every_pin_has_a_hash():
    for lock in (LOCK, BUILD_LOCK):
        missing = [name for name, (_, hashes) in pins(lock).items() if hashes == 0]
        assert not missing, f"{lock.name}: no sha256 for {missing}"


def test_torch_and_torchaudio_are_one_exact_pair():
    deps = {canonicalize_name(Requirement(r).name): Requirement(r) for r in pyproject()["project"]["dependencies"]}
    exact = {}
    for name in ("torch", "torchaudio"):
        (spec,) = deps[name].specifier  # one clause, and it is ==
        assert spec.operator == "==" and "*" not in spec.version, f"{deps[name]} is not an exact pin"
        exact[name] = spec.version
        assert pins(LOCK)[name][0] == spec.version
    assert exact["torch"] == exact["torchaudio"], f"torch {exact['torch']} with torchaudio {exact['torchaudio']}"


def test_no_package_index_or_download_url_in_setup_files():
    """Loopback addresses (the image's health check) are the only URLs allowed."""
    for path in [LOCK, BUILD_LOCK, REPO_ROOT / "Dockerfile", *sorted((REPO_ROOT / "scripts").iterdir())]:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"https?://(?!127\.0\.0\.1[:/])|--(extra-)?index-url|--find-links", text), (
                f"{path.relative_to(REPO_ROOT)} names a URL or index: downloads must go through pip's own settings")
