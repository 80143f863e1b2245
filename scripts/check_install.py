"""The last step of scripts/setup.sh: prove the install works before setup says ready.

    .venv/bin/python scripts/check_install.py [--registry DIR] [--model NAME[@VERSION]]

Imports every third-party module that serving, training and language models load, one at a
time, then transcribes a bundled AN4 training clip with the starter model through the `asr`
command. The first failure prints one line naming the package and what to do, and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLIP = ROOT / "starter" / "clips" / "enter_forty_one.flac"
CLIP_TEXT = "enter forty one"  # AN4 train an108-mdxn-b; both shipped starter versions get it right
REINSTALL = "delete .venv and run scripts/setup.sh again"

# (module, what to do when it does not import)
MODULES = [
    ("torch", REINSTALL),
    ("torchaudio", f"torchaudio must be built for the installed torch; {REINSTALL}"),
    ("numpy", REINSTALL),
    ("soundfile", "needs the system library libsndfile (Debian: apt-get install libsndfile1)"),
    ("safetensors", REINSTALL),
    ("kenlm", f"the kenlm module is compiled at install time; {REINSTALL}"),
    ("pyctcdecode", REINSTALL),
    ("grpc", REINSTALL),
    ("grpc_health.v1.health", REINSTALL),
    ("grpc_reflection.v1alpha.reflection", REINSTALL),
    ("google.protobuf", REINSTALL),
    ("fastapi", REINSTALL),
    ("uvicorn", REINSTALL),
    ("multipart", REINSTALL),
    ("prometheus_client", REINSTALL),
    ("pydantic_settings", REINSTALL),
    ("yaml", REINSTALL),
    ("jiwer", REINSTALL),
    ("sentencepiece", REINSTALL),  # reads NeMo BPE tokenizers (interop.tokenizer)
    ("ray.train.torch", REINSTALL),
    ("service.asr_pb.asr_pb2_grpc", "the gRPC stubs are missing: run scripts/gen_protos.sh"),
    ("service.server", REINSTALL),
    ("training.trainer", REINSTALL),
    ("lm.model_lm", REINSTALL),
]


class CheckFailed(Exception):
    """One line for the user: what is broken and what to do."""


def check_import(module: str, advice: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure at import time means a broken install
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckFailed(f"cannot import {module} ({type(exc).__name__}: {first_line}); {advice}") from None


def check_torchaudio_extension() -> None:
    """torchaudio imports even when its compiled library is missing; our front end needs it."""
    import torch
    import torchaudio
    from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE

    if not _IS_TORCHAUDIO_EXT_AVAILABLE:
        raise CheckFailed(f"torchaudio {torchaudio.__version__} has no compiled extension; {REINSTALL}")
    ours, theirs = torchaudio.__version__.split("+")[0], torch.__version__.split("+")[0]
    if ours != theirs:
        raise CheckFailed(f"torchaudio {ours} does not match torch {theirs}; install the pair pinned in "
                          f"requirements.lock ({REINSTALL})")


def check_kenlm_tools() -> None:
    for tool in ("lmplz", "build_binary"):
        if not os.access(VENV_BIN / tool, os.X_OK):
            raise CheckFailed(f"KenLM's {tool} is not in {VENV_BIN}; run scripts/setup.sh (step 'kenlm binaries')")


def check_transcription(registry: str, model: str | None) -> str:
    command = [str(VENV_BIN / "asr"), "--registry", registry, "transcribe", str(CLIP)]
    if model:
        command += ["--model", model]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"`asr transcribe` of the bundled clip failed (exit {result.returncode}: {last})")
    text = result.stdout.strip()
    if text != CLIP_TEXT:
        raise CheckFailed(f"the starter model heard {text!r} in {CLIP.name}, not {CLIP_TEXT!r}: the front end "
                          f"or the model is broken; {REINSTALL}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=os.environ.get("ASR_REGISTRY") or str(ROOT / "registry"))
    parser.add_argument("--model", default=None, help="model to transcribe with (default: the CLI's default)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        for module, advice in MODULES:
            check_import(module, advice)
            if module == "torchaudio":  # before anything that uses its functions
                check_torchaudio_extension()
        check_kenlm_tools()
        text = check_transcription(args.registry, args.model)
    except CheckFailed as exc:
        print(f"[check] FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"[check] {len(MODULES)} modules import; the starter model heard {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
