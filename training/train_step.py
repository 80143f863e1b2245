"""The module one training step runs: featurize, SpecAugment, network and its CTC heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.network_config import QuartzNetConfig
from model.recognizer import SpeechRecognizer
from training.augment import spec_augment
from training.config import TrainConfig


class TrainStep(nn.Module):
    """Featurize -> SpecAugment -> network (+ intermediate CTC heads), one module so DDP sees a single forward."""

    def __init__(self, recognizer: SpeechRecognizer, augment, seed: int, inter_ctc_blocks: tuple[int, ...] = ()
                 ) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.inter_ctc_blocks = tuple(sorted(inter_ctc_blocks))  # encode_with_taps returns block order
        network = recognizer.network.config
        self.inter_ctc_heads = nn.ModuleList(nn.Conv1d(network.blocks[b].filters, network.num_labels + 1, 1)
                                             for b in self.inter_ctc_blocks)
        for head in self.inter_ctc_heads:
            nn.init.xavier_uniform_(head.weight)

    @property
    def has_intermediate_heads(self) -> bool:
        return bool(self.inter_ctc_blocks or self.recognizer.network.config.self_conditioning)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """CTC log-probabilities (B, T, V+1) and output lengths: the model's own head first, then the others."""
        with torch.no_grad():
            feats, feat_lengths = self.recognizer.featurizer(audio, audio_lengths)
            if self.augment is not None and self.training:
                feats = spec_augment(feats.cpu(), feat_lengths.cpu(), self.augment, self.generator).to(feats.device)
        network = self.recognizer.network
        encoded = network.encode_with_taps(feats, feat_lengths, self.inter_ctc_blocks)
        heads = [(network.decoder(encoded.output), encoded.lengths)]
        heads += [(head(inner), lengths) for head, (inner, lengths) in zip(self.inter_ctc_heads, encoded.taps)]
        heads += encoded.conditioning_logits  # self-conditioning heads are the model's own
        return [(F.log_softmax(logits.transpose(1, 2).float(), dim=-1), n) for logits, n in heads]


def inter_ctc_blocks(cfg: TrainConfig, network: QuartzNetConfig) -> tuple[int, ...]:
    """The blocks the training-only CTC heads read: empty when the loss is off or the model has its own heads.

    Raises:
        ValueError: the config's blocks do not fit ``network`` (a fine-tuning source decides it).
    """
    if network.self_conditioning:
        listed = tuple(cfg.loss.inter_ctc_blocks)
        if listed and listed != network.self_conditioning:
            raise ValueError(f"loss.inter_ctc_blocks {list(listed)} differ from the model's self-conditioning "
                             f"blocks {list(network.self_conditioning)}; leave it empty, or set "
                             f"loss.self_conditioning to move the heads")
        return ()
    count = len(network.blocks)
    blocks = cfg.loss.blocks_for(count)
    if blocks and max(blocks) >= count - 1:  # a fine-tuning source can have fewer blocks than the config's table
        raise ValueError(f"loss.inter_ctc_blocks {list(blocks)} must be below the model's last block index "
                         f"{count - 1}")
    return blocks
