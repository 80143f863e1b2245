"""Builds the model a run starts from: a fresh preset/block table, or a fine-tuning source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.checkpoint import load_artifact
from model.features import MelFeaturizerConfig
from model.quartznet import BlockConfig, QuartzNetConfig, preset_config
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary
from training.config import TrainConfig


def fresh_recognizer_config(cfg: TrainConfig) -> RecognizerConfig:
    """The recognizer config a from-scratch run builds (preset or explicit block table)."""
    labels = tuple(cfg.model.labels)
    if cfg.model.preset is not None:
        network = preset_config(cfg.model.preset, len(labels))
    else:
        blocks = tuple(BlockConfig(**b.model_dump()) for b in cfg.model.blocks or [])
        network = QuartzNetConfig(blocks, num_labels=len(labels), name="custom")
    features = MelFeaturizerConfig(sample_rate=cfg.data.sample_rate, frontend=cfg.model.frontend)
    return RecognizerConfig(features, network, Vocabulary(labels))


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
    labels = tuple(cfg.model.labels)
    info: dict[str, Any] = {"init": "fine_tune", "source": cfg.run.fine_tune_from,
                            "vocabulary_changed": labels != source.vocabulary.labels}
    if labels != source.vocabulary.labels:
        # New vocabulary: keep the encoder, give the CTC head a freshly initialised layer of the new size.
        network_cfg = QuartzNetConfig(source.config.network.blocks, num_labels=len(labels),
                                      feat_in=source.config.network.feat_in, name=source.config.network.name)
        model = SpeechRecognizer(RecognizerConfig(source.config.features, network_cfg, Vocabulary(labels)))
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("network.decoder.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert all(k.startswith("network.decoder.") for k in missing) and not unexpected
        nn.init.xavier_uniform_(model.network.decoder.weight)
    else:
        model = source
    if cfg.run.freeze_encoder:
        for param in model.network.blocks.parameters():
            param.requires_grad_(False)
    return model.train(), info


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
