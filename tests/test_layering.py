"""Module boundaries (docs/architecture.md, "Layers"), checked by walking every import with `ast`.

- `model` imports only the standard library, torch, torchaudio, numpy, safetensors, soundfile and av
  (audio I/O lives in model.audio, model.audio_stream and model.audio_container, both imported lazily)
  and itself.
- `training` never imports `service` (nor the `client`, `cli`).
- `service` never imports `training` (nor `cli`).
- `lm` is shared by training and serving, so it imports neither.
- `client` stands alone (client/pyproject.toml): none of the project's other packages.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_THIRD_PARTY = {"torch", "torchaudio", "numpy", "safetensors", "soundfile", "av"}
FORBIDDEN = {
    "training": {"service", "client", "cli"},
    "service": {"training", "cli"},
    "lm": {"training", "service", "client", "cli"},
    "client": {"model", "training", "service", "lm", "cli", "interop"},
}
PACKAGES = ("model", "training", "service", "lm", "client")
# Generated protobuf code is build output, not ours to lint.
GENERATED = ("_pb2.py", "_pb2_grpc.py")


def _python_files(package: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts and not p.name.endswith(GENERATED))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import, relative ones resolved, plus
    importlib.import_module("...") / __import__("...") calls with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    here = list(parts[:-1])  # the package a relative import starts from (same for __init__.py)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    assert all(m for _, m in found), path
    return found


def _violations(package: str, allowed) -> list[str]:
    problems = []
    for path in _python_files(package):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if not allowed(top):
                problems.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module}")
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_package_has_python_files(package):
    assert _python_files(package), f"{package}/ has no Python files: the layering checks would pass vacuously"


def test_model_imports_only_stdlib_torch_numpy_and_itself():
    stdlib = set(sys.stdlib_module_names)
    allowed = lambda top: top in stdlib or top in MODEL_THIRD_PARTY or top == "model"  # noqa: E731
    assert _violations("model", allowed) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_edges(package):
    assert _violations(package, lambda top: top not in FORBIDDEN[package]) == []


def test_the_checker_sees_every_import_form(tmp_path, monkeypatch):
    # A self-test, so that a silently broken walker cannot make the real checks pass.
    fake = tmp_path / "training" / "sub"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "mod.py").write_text(
        "import os\n"
        "from service import app\n"
        "from .. import loop\n"
        "from .peer import x\n"
        "def late():\n"
        "    import service.worker\n"
        "    importlib.import_module('service.batcher')\n"
        "    return __import__('client')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    modules = [m for _, m in imported_modules(fake / "mod.py")]
    assert sorted(modules) == sorted(["os", "service", "training", "training.sub.peer", "service.worker",
                                      "service.batcher", "client"])
    assert len(_violations("training", lambda top: top not in FORBIDDEN["training"])) == 4


def test_importing_model_decoding_does_not_load_torch():
    """model/__init__.py is lazy: decoding, the registry and text handling run without torch (the lazy
    import in model.decoding is only worth something if the package import does not undo it)."""
    import subprocess

    code = "import sys, model.decoding, model.registry, model.text; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=120).returncode == 0
