"""SpeechRecognizer: front end + acoustic model + vocabulary as one module, with batched transcription."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.decoding import Transcript, greedy_decode
from model.features import MelFeaturizer, MelFeaturizerConfig
from model.network_config import QuartzNetConfig
from model.quartznet import QuartzNet
from model.vocabulary import Vocabulary


@dataclass(frozen=True)
class RecognizerConfig:
    """The three configs an artifact stores; enough to rebuild the model with no training code."""

    features: MelFeaturizerConfig
    network: QuartzNetConfig
    vocabulary: Vocabulary

    @property
    def frame_duration_s(self) -> float:
        """Seconds per output frame: feature hop times the encoder's subsampling."""
        return self.features.hop_length * self.network.subsampling / self.features.sample_rate

    def to_dict(self) -> dict:
        return {"sample_rate": self.features.sample_rate, "features": self.features.to_dict(),
                "network": self.network.to_dict(), "vocabulary": list(self.vocabulary.labels)}

    @classmethod
    def from_dict(cls, data: dict) -> "RecognizerConfig":
        vocab = Vocabulary(tuple(data["vocabulary"]))
        network = QuartzNetConfig.from_dict(data["network"])
        if network.num_labels != len(vocab.labels):
            raise ValueError(f"network has {network.num_labels} labels but the vocabulary has {len(vocab.labels)}")
        return cls(MelFeaturizerConfig.from_dict(data["features"]), network, vocab)


class BatchInference:
    """Batched inference over numpy clips for any module that maps (audio, lengths) to (log-probs, lengths).

    Single models give (T, V+1) arrays per clip; ensembles (model.ensemble) give (T, K, V+1),
    and ``greedy_decode`` accepts both.
    """

    @torch.inference_mode()
    def log_probs_batch(self, clips: list[np.ndarray], device: torch.device | str | None = None) -> list[np.ndarray]:
        """Runs a padded batch and returns each clip's valid log-probs as (T_i, ...) float32 arrays."""
        if not clips:
            return []
        device = torch.device(device) if device is not None else _device_of(self)
        lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
        batch = torch.zeros(len(clips), int(lengths.max()), dtype=torch.float32)
        for i, clip in enumerate(clips):
            batch[i, : len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
        log_probs, out_lengths = self(batch.to(device), lengths.to(device))
        log_probs = log_probs.float().cpu().numpy()
        return [log_probs[i, : int(n)] for i, n in enumerate(out_lengths.cpu())]

    def log_probs_sorted(self, clips: list[np.ndarray], batch_size: int, device=None) -> list[np.ndarray]:
        """Like log_probs_batch over many clips: length-sorted batches (less padding), input order kept."""
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        out: list[np.ndarray] = [np.empty(0)] * len(clips)
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start:start + batch_size]
            for index, lp in zip(chunk, self.log_probs_batch([clips[i] for i in chunk], device)):
                out[index] = lp
        return out

    def transcribe(self, clips: list[np.ndarray], device=None) -> list[Transcript]:
        """Greedy transcripts, with word times, of mono float32 clips at ``sample_rate``."""
        was_training = self.training
        self.eval()
        try:
            outputs = self.log_probs_batch(clips, device)
        finally:
            self.train(was_training)
        labels = self.vocabulary.labels
        return [greedy_decode(lp, labels, self.frame_duration_s) for lp in outputs]


def _device_of(module: nn.Module) -> torch.device:
    """Where a module's tensors live (inference forms keep their weights as buffers, not parameters)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


class OneNetwork:
    """What a model of one network (a ``RecognizerConfig`` in ``self.config``) tells its callers."""

    config: RecognizerConfig

    @property
    def vocabulary(self) -> Vocabulary:
        return self.config.vocabulary

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    @property
    def frame_duration_s(self) -> float:
        return self.config.frame_duration_s

    @property
    def num_views(self) -> int:
        """Log-prob slices per frame: one network's output is (T, V+1), not (T, K, V+1)."""
        return 1


class SpeechRecognizer(OneNetwork, BatchInference, nn.Module):
    """Waveform in, CTC log-probabilities out; the unit the registry stores and the service runs."""

    def __init__(self, config: RecognizerConfig) -> None:
        super().__init__()
        self.config = config
        self.featurizer = MelFeaturizer(config.features)
        self.network = QuartzNet(config.network)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) float audio + (B,) lengths -> log_probs (B, T', V+1) float32, output_lengths (B,)."""
        features, feature_lengths = self.featurizer(audio, audio_lengths)
        return self.network(features, feature_lengths)
