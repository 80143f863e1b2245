"""A tiny random-weight model (3 blocks, 16 kHz, 20 ms frames) that every CLI, service and client test can publish."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import publish_model
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import Registry
from model.vocabulary import Vocabulary

TINY_CONFIG = RecognizerConfig(
    MelFeaturizerConfig(),
    QuartzNetConfig((BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 2, 7, residual=True),
                     BlockConfig(64, 1, 1, separable=False)), num_labels=28, name="tiny"),
    Vocabulary(),
)


def publish_tiny_model(root: Path, name: str = "tiny", seed: int = 0) -> Registry:
    """Publishes the tiny model, weights drawn from ``seed``, as the next version of ``name``; returns the registry."""
    torch.manual_seed(seed)
    registry = Registry(root)
    publish_model(registry, name, SpeechRecognizer(TINY_CONFIG).eval(), source="trained")
    return registry


def agreeing_copy(model: SpeechRecognizer, seed: int, scale: float = 0.05) -> SpeechRecognizer:
    """A copy of ``model`` with every weight moved by ``scale`` times Gaussian noise (relative).

    Two random models hear nothing alike, and serving refuses an ensemble whose members
    disagree (model.agreement); a 5 % perturbation keeps them within 0.15 character edits per
    character of each other on the calibration speech while their transcripts still differ.
    """
    copy = SpeechRecognizer(model.config).eval()
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copy.parameters():
            parameter.mul_(1 + scale * torch.randn(parameter.shape, generator=generator))
    return copy
