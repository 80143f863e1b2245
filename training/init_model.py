"""Builds the model a run starts from: a fresh preset/block table, or a fine-tuning source."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from model.checkpoint import load_artifact
from model.features import MelFeaturizerConfig
from model.network_config import QuartzNetConfig
from model.presets import preset_config
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary
from training.config import TrainConfig


def fresh_recognizer_config(cfg: TrainConfig) -> RecognizerConfig:
    """The recognizer config a from-scratch run builds (preset or explicit block table)."""
    labels = tuple(cfg.model.labels)
    if cfg.model.preset is not None:
        network = preset_config(cfg.model.preset, len(labels))
    else:
        network = QuartzNetConfig(tuple(cfg.model.blocks or ()), num_labels=len(labels), name="custom")
    if cfg.loss.self_conditioning:
        network = replace(network, self_conditioning=cfg.loss.blocks_for(len(network.blocks)))
    features = MelFeaturizerConfig(sample_rate=cfg.data.sample_rate, frontend=cfg.model.frontend)
    return RecognizerConfig(features, network, Vocabulary(labels))


def fine_tuned_network(cfg: TrainConfig, source: QuartzNetConfig) -> QuartzNetConfig:
    """The network a fine-tuning run trains: the source's blocks, the config's vocabulary, and the
    config's self-conditioning heads if it asks for them (else the source's)."""
    conditioning = (cfg.loss.blocks_for(len(source.blocks)) if cfg.loss.self_conditioning
                    else source.self_conditioning)
    return replace(source, num_labels=len(cfg.model.labels), self_conditioning=conditioning)


def build_recognizer(cfg: TrainConfig, init_dir: str | None) -> tuple[SpeechRecognizer, dict[str, Any]]:
    """Creates the model on CPU in train mode.

    Args:
        cfg: the run's config.
        init_dir: an artifact folder to fine-tune from (the driver resolves ``run.fine_tune_from``
            into one, importing .nemo files first), or None to start from scratch.

    Returns:
        The model and a description of how it was initialised (for the published metadata).
    """
    if init_dir is None:
        return SpeechRecognizer(fresh_recognizer_config(cfg)).train(), {"init": "scratch"}
    source = load_artifact(Path(init_dir))
    if not isinstance(source, SpeechRecognizer):
        raise ValueError(f"{cfg.run.fine_tune_from} is an ensemble; fine-tune one of its members instead")
    labels = tuple(cfg.model.labels)
    new_vocabulary = labels != source.vocabulary.labels
    info: dict[str, Any] = {"init": "fine_tune", "source": cfg.run.fine_tune_from,
                            "vocabulary_changed": new_vocabulary}
    network_cfg = fine_tuned_network(cfg, source.config.network)
    if network_cfg.self_conditioning:
        info["self_conditioning"] = list(network_cfg.self_conditioning)
    new_heads = new_vocabulary or network_cfg.self_conditioning != source.config.network.self_conditioning
    fresh = (("network.decoder.",) if new_vocabulary else ()) + (("network.conditioners.",) if new_heads else ())
    if fresh:
        # New vocabulary or new self-conditioning blocks: keep the encoder, and let the heads whose
        # shape or place changed keep the fresh initialisation of the new model.
        model = SpeechRecognizer(RecognizerConfig(source.config.features, network_cfg, Vocabulary(labels)))
        state = {k: v for k, v in source.state_dict().items() if not k.startswith(fresh)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert all(k.startswith(fresh) for k in missing) and not unexpected
    else:
        model = source
    if cfg.run.freeze_encoder:
        # Self-conditioning heads feed the blocks after them, so they are part of the encoder and
        # freeze with it; heads that start afresh must train, or they would feed noise to it.
        model.network.blocks.requires_grad_(False)
        if not new_heads:
            model.network.conditioners.requires_grad_(False)
    return model.train(), info

