"""The one published artifact format (config.json + model.safetensors) and its registry round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from model.ensemble import EnsembleConfig, EnsembleRecognizer
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import ModelRef, Registry, RegistryError

ARTIFACT_FORMAT = "quartznet-asr/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ArtifactError(RegistryError):
    """An artifact folder that cannot be turned back into a model."""

    code = "bad_artifact"


Recognizer = SpeechRecognizer | EnsembleRecognizer


def artifact_files(model: Recognizer, *, dtype: torch.dtype = torch.float32,
                   extra_config: dict[str, Any] | None = None) -> dict[str, bytes]:
    """Serialises a model to the files of one registry version.

    Args:
        model: the model (or ensemble) to store; its configs go to config.json, an ensemble's
            under ``"ensemble"`` with its members' weights prefixed ``members.<i>.``.
        dtype: storage type for floating-point tensors (float16 halves the size; loading
            always returns float32).
        extra_config: extra keys for config.json (e.g. the default LM's name).

    Returns:
        {file name: bytes} for ``Registry.publish``.
    """
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        tensors[key] = value.to(dtype) if value.is_floating_point() else value
    config = {"format": ARTIFACT_FORMAT, **model.config.to_dict(), **(extra_config or {})}
    return {CONFIG_FILE: json.dumps(config, indent=2).encode(), WEIGHTS_FILE: save(tensors)}


def read_config(folder: Path) -> dict[str, Any]:
    """Reads and sanity-checks an artifact's config.json."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder}: unreadable {CONFIG_FILE} ({exc})") from None
    if config.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{folder}: unsupported artifact format {config.get('format')!r}")
    return config


def load_artifact(folder: Path | str, device: str | torch.device = "cpu") -> Recognizer:
    """Rebuilds a SpeechRecognizer or EnsembleRecognizer (eval mode, float32) from an artifact folder."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        if "ensemble" in config:
            model = EnsembleRecognizer(EnsembleConfig.from_dict(config))
        else:
            model = SpeechRecognizer(RecognizerConfig.from_dict(config))
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(folder / WEIGHTS_FILE).items()}
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"{folder}: cannot load model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def publish_model(registry: Registry, name: str, model: Recognizer, *, source: str,
                  parent_version: int | None = None, metrics: dict | None = None, extra: dict | None = None,
                  dtype: torch.dtype = torch.float32, extra_config: dict | None = None) -> ModelRef:
    """Publishes a model as the next version of ``name``."""
    files = artifact_files(model, dtype=dtype, extra_config=extra_config)
    return registry.publish(name, files, kind="model", source=source, parent_version=parent_version,
                            metrics=metrics, extra=extra)


def load_model(registry: Registry, spec: str, device: str | torch.device = "cpu"
               ) -> tuple[Recognizer, ModelRef, dict]:
    """Resolves ``NAME[@VERSION]``, verifies checksums and loads the model."""
    ref, metadata = registry.open(spec)
    if metadata.get("kind", "model") != "model":
        raise ArtifactError(f"{ref} is a {metadata.get('kind')!r}, not an acoustic model")
    return load_artifact(ref.path, device), ref, metadata
