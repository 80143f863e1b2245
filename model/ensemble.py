"""EnsembleRecognizer: independently trained models over one vocabulary, served and stored as one model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from model.recognizer import BatchInference, RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary


@dataclass(frozen=True)
class EnsembleConfig:
    """The members' configs; they must share the vocabulary, sample rate and output frame rate."""

    members: tuple[RecognizerConfig, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(self.members)}")
        first = self.members[0]
        for i, member in enumerate(self.members[1:], start=1):
            if member.vocabulary.labels != first.vocabulary.labels:
                raise ValueError(f"ensemble member {i} has another vocabulary than member 0")
            if member.features.sample_rate != first.features.sample_rate:
                raise ValueError(f"ensemble member {i} expects {member.features.sample_rate} Hz, "
                                 f"member 0 {first.features.sample_rate} Hz")
            if member.frame_duration_s != first.frame_duration_s:
                raise ValueError(f"ensemble member {i} has {member.frame_duration_s} s output frames, "
                                 f"member 0 {first.frame_duration_s} s")

    def to_dict(self) -> dict:
        return {"sample_rate": self.members[0].features.sample_rate,
                "ensemble": [member.to_dict() for member in self.members]}

    @classmethod
    def from_dict(cls, data: dict) -> "EnsembleConfig":
        members = data.get("ensemble")
        if not isinstance(members, list):
            raise ValueError("'ensemble' must be a list of member configs")
        return cls(tuple(RecognizerConfig.from_dict(member) for member in members))


class EnsembleRecognizer(BatchInference, nn.Module):
    """Runs every member on the same audio; log-probs come out as (B, T, K, V+1), one slice per member.

    Decoders pick among the members' transcripts by their mean CTC likelihood (model.rescoring):
    the members' spikes sit at different frames, so their posteriors cannot be averaged.
    """

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(SpeechRecognizer(member) for member in config.members)

    @classmethod
    def of(cls, members: Sequence[SpeechRecognizer]) -> "EnsembleRecognizer":
        """An ensemble holding (copies of) these trained members' weights."""
        ensemble = cls(EnsembleConfig(tuple(member.config for member in members)))
        for target, member in zip(ensemble.members, members):
            target.load_state_dict(member.state_dict())
        return ensemble

    @property
    def vocabulary(self) -> Vocabulary:
        return self.config.members[0].vocabulary

    @property
    def sample_rate(self) -> int:
        return self.config.members[0].features.sample_rate

    @property
    def frame_duration_s(self) -> float:
        return self.config.members[0].frame_duration_s

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) audio + (B,) lengths -> log_probs (B, T', K, V+1), output_lengths (B,)."""
        outputs = [member(audio, audio_lengths) for member in self.members]
        # Members with other kernels or padding may differ by a frame; keep the common span.
        frames = min(log_probs.shape[1] for log_probs, _ in outputs)
        lengths = torch.stack([lengths for _, lengths in outputs]).min(dim=0).values.clamp(max=frames)
        return torch.stack([log_probs[:, :frames] for log_probs, _ in outputs], dim=2), lengths
