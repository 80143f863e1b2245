"""QuartzNet/Jasper CTC models, the NeMo-compatible front end, decoding, and the artifact/registry format."""

from model.audio import AudioError, DecodedAudio, decode_audio, resample
from model.checkpoint import ArtifactError, artifact_files, load_artifact, load_model, publish_model
from model.decoding import Transcript, WordTiming, greedy_decode
from model.ensemble import EnsembleConfig, EnsembleRecognizer
from model.features import MelFeaturizer, MelFeaturizerConfig
from model.quartznet import (PRESETS, BlockConfig, QuartzNet, QuartzNetConfig, count_parameters, jasper_10x5dr,
                             preset_config, quartznet_5x3, quartznet_5x5, quartznet_10x5, quartznet_15x5)
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import ModelRef, Registry, RegistryError, default_registry_root
from model.vocabulary import ENGLISH_LABELS, Vocabulary

__all__ = [
    "AudioError", "DecodedAudio", "decode_audio", "resample",
    "ArtifactError", "artifact_files", "load_artifact", "load_model", "publish_model",
    "Transcript", "WordTiming", "greedy_decode",
    "EnsembleConfig", "EnsembleRecognizer",
    "MelFeaturizer", "MelFeaturizerConfig",
    "PRESETS", "BlockConfig", "QuartzNet", "QuartzNetConfig", "count_parameters", "jasper_10x5dr",
    "preset_config", "quartznet_5x3", "quartznet_5x5", "quartznet_10x5", "quartznet_15x5",
    "RecognizerConfig", "SpeechRecognizer",
    "ModelRef", "Registry", "RegistryError", "default_registry_root",
    "ENGLISH_LABELS", "Vocabulary",
]
