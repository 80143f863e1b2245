"""QuartzNet, Jasper and Citrinet CTC acoustic models: masked conv blocks built from a block table.

QuartzNet: Kriman et al., "QuartzNet: Deep Automatic Speech Recognition with 1D Time-Channel
Separable Convolutions", 2019. Jasper: Li et al., "Jasper: An End-to-End Convolutional Neural
Acoustic Model", 2019. Citrinet: Majumdar et al., "Citrinet: Closing the Gap between
Non-Autoregressive and Autoregressive End-to-End Models for Automatic Speech Recognition", 2021
(QuartzNet's blocks plus squeeze-and-excitation and 8x time reduction, over word pieces).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.depthwise import depthwise_conv
from model.network_config import BlockConfig, QuartzNetConfig

# BatchNorm settings NeMo uses in every Jasper/QuartzNet block; checkpoints depend on them.
BN_EPS = 1e-3
BN_MOMENTUM = 0.1


def _same_padding(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) // 2


def _mask_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zeroes frames at or past each item's length; x is (B, C, T)."""
    valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
    return x * valid.unsqueeze(1).to(x.dtype)


class MaskedConv1d(nn.Conv1d):
    """Conv1d that zeroes padded input frames first and maps lengths through the conv arithmetic.

    ``fast_cpu`` (off by default, so the reference runs NeMo's exact operations; training turns
    it on with ``use_fast_cpu_convs``) computes the same convolution with kernels oneDNN runs
    faster on CPU: a depthwise conv as a grouped conv2d over a channels-last (B, C, 1, T) copy
    (dilated ones as one undilated conv over the d interleaved phases of the signal), with its
    backward as forward convs (model.depthwise), and a 1x1 conv as a batched matrix product.
    """

    fast_cpu = False

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = _mask_time(x, lengths)
        k, s, d, p = self.kernel_size[0], self.stride[0], self.dilation[0], self.padding[0]
        if s != 1 or 2 * p != d * (k - 1):
            lengths = torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1
        if self.fast_cpu and x.device.type == "cpu":
            return self._fast_forward(x), lengths
        return super().forward(x), lengths

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, d, p = self.kernel_size[0], self.stride[0], self.dilation[0], self.padding[0]
        if k == 1 and s == 1 and self.groups == 1:
            y = torch.matmul(self.weight[:, :, 0], x)
            return y if self.bias is None else y + self.bias[:, None]
        if not self.in_channels == self.groups == self.out_channels:  # full convs and channel multipliers: oneDNN's own
            return super().forward(x)
        if d > 1 and s == 1 and k % 2 == 1 and p == d * (k - 1) // 2:
            return self._depthwise_by_phases(x)
        if d > 1:
            return super().forward(x)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        if s == 1 and self.bias is None and p < k:
            return depthwise_conv(x4, self.weight.unsqueeze(2), p).squeeze(2).contiguous()
        y = F.conv2d(x4, self.weight.unsqueeze(2), self.bias, stride=(1, s), padding=(0, p), groups=self.groups)
        return y.squeeze(2).contiguous()

    def _depthwise_by_phases(self, x: torch.Tensor) -> torch.Tensor:
        """A conv dilated by d is d undilated convs over the frames r, r + d, ...: run them as one batch."""
        batch, channels, frames = x.shape
        d, k = self.dilation[0], self.kernel_size[0]
        spans = -(-frames // d)
        if spans * d != frames:  # zeros past the end are what the conv's own padding would read
            x = F.pad(x, (0, spans * d - frames))
        phases = x.view(batch, channels, spans, d).permute(0, 3, 2, 1).reshape(batch * d, spans, channels)
        phases = phases.transpose(1, 2).unsqueeze(2)  # channels-last in and out
        if self.bias is None:
            y = depthwise_conv(phases, self.weight.unsqueeze(2), (k - 1) // 2)
        else:
            y = F.conv2d(phases, self.weight.unsqueeze(2), self.bias, padding=(0, (k - 1) // 2), groups=self.groups)
        y = y.squeeze(2).transpose(1, 2).reshape(batch, d, spans, channels).permute(0, 3, 2, 1)
        return y.reshape(batch, channels, spans * d)[:, :, :frames]


def use_fast_cpu_convs(module: nn.Module, enabled: bool = True) -> int:
    """Turns ``MaskedConv1d.fast_cpu`` on (or off) for every MaskedConv1d in ``module``; returns how many."""
    count = 0
    for conv in module.modules():
        if isinstance(conv, MaskedConv1d):
            conv.fast_cpu = enabled
            count += 1
    return count


class _ConvNorm(nn.Module):
    """One conv sub-block: depthwise+pointwise (separable) or one full conv, then BatchNorm."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, dilation: int, separable: bool) -> None:
        super().__init__()
        pad = _same_padding(kernel, dilation)
        if separable:
            self.depthwise = MaskedConv1d(in_ch, in_ch, kernel, stride=stride, dilation=dilation,
                                          padding=pad, groups=in_ch, bias=False)
            self.pointwise = MaskedConv1d(in_ch, out_ch, 1, bias=False)
        else:
            self.conv = MaskedConv1d(in_ch, out_ch, kernel, stride=stride, dilation=dilation,
                                     padding=pad, bias=False)
        self.norm = nn.BatchNorm1d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.separable = separable

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.separable:
            x, lengths = self.depthwise(x, lengths)
            x, lengths = self.pointwise(x, lengths)
        else:
            x, lengths = self.conv(x, lengths)
        return self.norm(x), lengths


class _ResidualPane(nn.Module):
    """1x1 conv + BatchNorm projecting an earlier output onto the block's channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = MaskedConv1d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.norm = nn.BatchNorm1d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x, lengths)[0])


class _Dropout(nn.Dropout):
    """Inverted dropout whose keep-mask comes from 16-bit random integers rather than ``bernoulli_``.

    CPU random numbers come from one serial generator, so the draws are the cost: 64-bit draws
    split four ways give 16-bit uniforms with a quarter of the draws ``rand`` needs (4 vs 14 ms
    for a (32, 512, 250) activation, and ``bernoulli_`` takes 31). The drop probability is
    therefore a multiple of 2^-16 (0.2 becomes 0.1999969), and kept values are scaled by the
    inverse of the exact keep probability, so the expectation is unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        drops = min(round(self.p * _LEVELS), _LEVELS - 1)  # of the 2^16 values a draw can take
        count = x.numel()
        draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        uniform = draws.view(torch.int16)[:count].view(x.shape)  # each in [-2^15, 2^15), equally likely
        keep = uniform >= drops - _LEVELS // 2
        return x * keep * (_LEVELS / (_LEVELS - drops))


_LEVELS = 1 << 16


class SqueezeExcite(nn.Module):
    """Scales each channel by a gate computed from its mean over the valid frames (squeeze-and-excitation).

    Padded frames are zeroed first, so they neither enter the mean nor leave the block non-zero,
    and the whole computation runs in float32 (under autocast too), as NeMo's does.
    """

    def __init__(self, channels: int, reduction_ratio: int, context_size: int = -1) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // reduction_ratio, bias=False)
        self.excite = nn.Linear(channels // reduction_ratio, channels, bias=False)
        self.context_size = context_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C, T) activations and (B,) valid frames -> gated (B, C, T), padded frames zero."""
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = _mask_time(x.float(), lengths)
            pooled = self._pool(x, lengths).transpose(1, 2)  # (B, 1, C)
            gate = torch.sigmoid(self.excite(F.relu(self.squeeze(pooled)))).transpose(1, 2)
            return (x * gate).to(dtype)

    def _pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C, 1) mean over valid frames; in training, over a random window of ``context_size`` frames."""
        frames = x.shape[-1]
        if not self.training or self.context_size < 0 or frames <= self.context_size:
            return x.sum(dim=-1, keepdim=True) / lengths.to(x.dtype)[:, None, None]
        # A short context makes the gate local: training sees one random window of the
        # utterance (the same for the whole batch), padded frames in it not counted.
        start = int(torch.randint(0, frames - self.context_size, (1,)))
        window = slice(start, start + self.context_size)
        valid = (torch.arange(frames, device=x.device)[None, :] < lengths[:, None])[:, None, window]
        return x[:, :, window].sum(dim=-1, keepdim=True) / (valid.sum(dim=-1, keepdim=True).to(x.dtype) + 1e-8)


class JasperBlock(nn.Module):
    """R conv sub-blocks with ReLU+dropout between them, optional SE, residual panes summed before the last ReLU."""

    def __init__(self, in_ch: int, config: BlockConfig, pane_channels: list[int]) -> None:
        super().__init__()
        self.config = config
        self.sub = nn.ModuleList()
        for i in range(config.repeat):
            self.sub.append(_ConvNorm(in_ch if i == 0 else config.filters, config.filters, config.kernel,
                                      config.stride_of(i), config.dilation, config.separable))
        self.se = (SqueezeExcite(config.filters, config.se_reduction_ratio, config.se_context_size)
                   if config.se else None)
        self.residual = nn.ModuleList(_ResidualPane(c, config.filters, config.stride) for c in pane_channels)
        self.dropout = _Dropout(config.dropout)

    def forward(self, xs: list[torch.Tensor], lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x, out_lengths = xs[-1], lengths
        for i, sub in enumerate(self.sub):
            x, out_lengths = sub(x, out_lengths)
            if i < len(self.sub) - 1:
                x = self.dropout(F.relu(x))
        if self.se is not None:
            x = self.se(x, out_lengths)
        # Dense blocks see every earlier dense output (xs[0] is the prolog's); plain ones only their input.
        for pane, earlier in zip(self.residual, xs):
            x = x + pane(earlier, lengths)
        x = self.dropout(F.relu(x))
        return (xs + [x] if self.config.residual_dense else [x]), out_lengths


class _SelfConditioner(nn.Module):
    """Predicts CTC logits from a block's output and adds a projection of their posteriors back to it."""

    def __init__(self, channels: int, num_outputs: int) -> None:
        super().__init__()
        self.head = nn.Conv1d(channels, num_outputs, 1)
        self.back = nn.Conv1d(num_outputs, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(x)
        posteriors = F.softmax(logits.float(), dim=1).to(x.dtype)
        return x + self.back(posteriors), logits


class Encoded(NamedTuple):
    """The encoder's output and lengths, plus what training reads from inside it."""

    output: torch.Tensor
    lengths: torch.Tensor
    taps: list[tuple[torch.Tensor, torch.Tensor]]  # (output, lengths) of each requested block
    conditioning_logits: list[tuple[torch.Tensor, torch.Tensor]]  # (B, V, T') logits, lengths per head


class QuartzNet(nn.Module):
    """Encoder of Jasper blocks plus a 1x1-conv CTC head; the blank is the last output index.

    Padded frames are masked before every conv, so in eval mode each item's valid outputs are
    independent of how much padding its batch carries.
    """

    def __init__(self, config: QuartzNetConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList()
        in_ch, dense_inputs = config.feat_in, []
        for block_cfg in config.blocks:
            if block_cfg.residual_dense:
                dense_inputs.append(in_ch)
                panes = list(dense_inputs)
            else:
                panes = [in_ch] if block_cfg.residual else []
            self.blocks.append(JasperBlock(in_ch, block_cfg, panes))
            in_ch = block_cfg.filters
        # Keyed by block index; empty (no state-dict keys) unless the config asks for it.
        self.conditioners = nn.ModuleDict({str(b): _SelfConditioner(config.blocks[b].filters, config.num_labels + 1)
                                           for b in config.self_conditioning})
        self.decoder = nn.Conv1d(in_ch, config.num_labels + 1, kernel_size=1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)

    @property
    def blank_id(self) -> int:
        return self.config.num_labels

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder only: (B, feat_in, T) -> (B, C_last, T'), lengths (B,)."""
        encoded = self.encode_with_taps(features, feature_lengths, ())
        return encoded.output, encoded.lengths

    def encode_with_taps(self, features: torch.Tensor, feature_lengths: torch.Tensor, taps: tuple[int, ...]
                         ) -> Encoded:
        """Like ``encode``, plus the (output, lengths) of each block in ``taps`` and the self-conditioning logits.

        Both lists are in block order. Training reads them for auxiliary CTC losses; inference
        needs neither.
        """
        xs, lengths = [features], feature_lengths
        tapped, conditioning_logits = [], []
        for index, block in enumerate(self.blocks):
            xs, lengths = block(xs, lengths)
            if index in taps:
                tapped.append((xs[-1], lengths))
            if str(index) in self.conditioners:
                conditioned, logits = self.conditioners[str(index)](xs[-1])
                xs = xs[:-1] + [conditioned]
                conditioning_logits.append((logits, lengths))
        return Encoded(xs[-1], lengths, tapped, conditioning_logits)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Computes CTC log-probabilities.

        Args:
            features: (B, feat_in, T) float.
            feature_lengths: (B,) int64 valid frames.

        Returns:
            log_probs: (B, T', num_labels + 1); frames at or past ``output_lengths`` are garbage
                and must be ignored.
            output_lengths: (B,) int64, ceil(T / subsampling) for the stock configs.
        """
        encoded, lengths = self.encode(features, feature_lengths)
        logits = self.decoder(encoded).transpose(1, 2)
        return F.log_softmax(logits.float(), dim=-1), lengths


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
