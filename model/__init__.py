"""QuartzNet/Jasper/Citrinet CTC models, the NeMo-compatible front end, decoding, and the artifact/registry format.

The names below load on first use (PEP 562), so ``import model.decoding`` or ``import
model.registry`` stays light: only the submodules that need torch import it.
"""

from __future__ import annotations

import importlib

_SUBMODULE_OF = {
    "AudioError": "audio", "DecodedAudio": "audio", "decode_audio": "audio", "resample": "audio",
    "ArtifactError": "checkpoint", "artifact_files": "checkpoint", "load_artifact": "checkpoint",
    "load_model": "checkpoint", "publish_model": "checkpoint",
    "Transcript": "decoding", "WordTiming": "decoding", "greedy_decode": "decoding",
    "EnsembleConfig": "ensemble", "EnsembleRecognizer": "ensemble",
    "MelFeaturizer": "features", "MelFeaturizerConfig": "features",
    "PRESETS": "presets", "BlockConfig": "quartznet", "QuartzNet": "quartznet", "QuartzNetConfig": "quartznet",
    "count_parameters": "quartznet", "jasper_10x5dr": "presets", "preset_config": "presets",
    "quartznet_5x3": "presets", "quartznet_5x5": "presets", "quartznet_10x5": "presets",
    "quartznet_15x5": "presets", "citrinet_256": "presets", "citrinet_512": "presets",
    "citrinet_1024": "presets", "SqueezeExcite": "quartznet",
    "RecognizerConfig": "recognizer", "SpeechRecognizer": "recognizer",
    "ModelRef": "registry", "Registry": "registry", "RegistryError": "registry", "default_registry_root": "registry",
    "ENGLISH_LABELS": "vocabulary", "Vocabulary": "vocabulary",
}
__all__ = sorted(_SUBMODULE_OF)


def __getattr__(name: str):
    try:
        submodule = _SUBMODULE_OF[name]
    except KeyError:
        raise AttributeError(f"module 'model' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"model.{submodule}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
