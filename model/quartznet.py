"""QuartzNet, Jasper and Citrinet CTC acoustic models: block configs, masked conv blocks, and size presets.

QuartzNet: Kriman et al., "QuartzNet: Deep Automatic Speech Recognition with 1D Time-Channel
Separable Convolutions", 2019. Jasper: Li et al., "Jasper: An End-to-End Convolutional Neural
Acoustic Model", 2019. Citrinet: Majumdar et al., "Citrinet: Closing the Gap between
Non-Autoregressive and Autoregressive End-to-End Models for Automatic Speech Recognition", 2021
(QuartzNet's blocks plus squeeze-and-excitation and 8x time reduction, over word pieces).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# BatchNorm settings NeMo uses in every Jasper/QuartzNet block; checkpoints depend on them.
BN_EPS = 1e-3
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class BlockConfig:
    """One encoder block: ``repeat`` conv sub-blocks of ``filters`` channels.

    Attributes:
        filters: output channels of every sub-block.
        repeat: number of conv-BN sub-blocks (R in "BxR").
        kernel: time kernel size (frames).
        stride: time stride of the first sub-block.
        dilation: time dilation of every sub-block; not combinable with stride > 1.
        dropout: dropout probability after each ReLU.
        residual: add a 1x1 conv + BN projection of the block input before the last ReLU.
        separable: depthwise + pointwise convs (QuartzNet) instead of one full conv (Jasper).
        residual_dense: take residual panes from every earlier dense block's output (Jasper DR).
        stride_last: stride in the last sub-block instead of the first (NeMo's ``stride_last``,
            Citrinet's reduction blocks). A residual pane strides with its block either way
            (NeMo's ``residual_mode: stride_add``), so both paths keep the same length.
        se: squeeze-and-excitation (Hu et al., 2018) after the last sub-block: each channel is
            scaled by a sigmoid gate computed from its mean over the valid frames.
        se_reduction_ratio: the gate's hidden layer has ``filters // se_reduction_ratio`` units.
        se_context_size: frames the training-time mean is taken over, from a random start
            (-1: all of them). Inference always averages over every valid frame, as NeMo does.
    """

    filters: int
    repeat: int = 1
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    dropout: float = 0.0
    residual: bool = False
    separable: bool = True
    residual_dense: bool = False
    stride_last: bool = False
    se: bool = False
    se_reduction_ratio: int = 8
    se_context_size: int = -1

    # Read by pydantic where a training config embeds this class: a misspelt key is an error
    # there, not a silently kept default. A plain dict, so model/ does not import pydantic.
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if min(self.filters, self.repeat, self.kernel, self.stride, self.dilation) < 1:
            raise ValueError(f"block sizes must be positive: {self}")
        if self.stride > 1 and self.dilation > 1:
            raise ValueError(f"stride > 1 with dilation > 1 is not supported: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.residual_dense and not self.residual:
            raise ValueError(f"residual_dense needs residual=True: {self}")
        if self.residual_dense and self.stride > 1:
            raise ValueError(f"residual_dense blocks cannot stride (earlier outputs keep their frame rate): {self}")
        if self.se and not 1 <= self.se_reduction_ratio <= self.filters:
            raise ValueError(f"se_reduction_ratio must be in [1, filters], got {self.se_reduction_ratio}")
        if self.se_context_size < -1 or self.se_context_size == 0:
            raise ValueError(f"se_context_size must be -1 (all frames) or positive, got {self.se_context_size}")

    def stride_of(self, sub_block: int) -> int:
        """The time stride of sub-block ``sub_block`` (0-based)."""
        striding = self.repeat - 1 if self.stride_last else 0
        return self.stride if sub_block == striding else 1

    def to_dict(self) -> dict:
        """The fields as a dict; the Citrinet ones only when set, so older artifacts' configs read unchanged."""
        data = asdict(self)
        for name in _CITRINET_FIELDS:
            if data[name] == _BLOCK_DEFAULTS[name]:
                del data[name]
        return data


@dataclass(frozen=True)
class QuartzNetConfig:
    """Encoder block table plus the CTC head size.

    Attributes:
        blocks: encoder blocks, first to last.
        num_labels: vocabulary size without the blank; outputs have num_labels + 1 columns.
        feat_in: input feature channels (mel bands).
        self_conditioning: 0-based indices of blocks followed by a self-conditioning CTC head
            (Nozaki & Komatsu, "Relaxing the Conditional Independence Assumption of CTC-based
            ASR by Conditioning on Intermediate Predictions", 2021): a 1x1 conv predicts the
            labels from the block's output and a second 1x1 conv adds the posteriors back, so
            later blocks refine an earlier transcription. Training puts a CTC loss on each head.
            Empty for NeMo's models.
    """

    blocks: tuple[BlockConfig, ...]
    num_labels: int = 28
    feat_in: int = 64
    name: str = field(default="custom", compare=False)
    self_conditioning: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("a model needs at least one block")
        if self.num_labels < 1 or self.feat_in < 1:
            raise ValueError(f"num_labels and feat_in must be positive: {self.num_labels}, {self.feat_in}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        conditioned = tuple(sorted(int(b) for b in self.self_conditioning))
        if len(set(conditioned)) != len(conditioned):
            raise ValueError(f"self_conditioning blocks must be distinct, got {list(self.self_conditioning)}")
        # After the last block the model's own CTC head already predicts; conditioning there feeds nothing.
        if conditioned and (conditioned[0] < 0 or conditioned[-1] >= len(self.blocks) - 1):
            raise ValueError(f"self_conditioning blocks must be in [0, {len(self.blocks) - 1}), "
                             f"got {list(self.self_conditioning)}")
        object.__setattr__(self, "self_conditioning", conditioned)

    @property
    def subsampling(self) -> int:
        factor = 1
        for block in self.blocks:
            factor *= block.stride
        return factor

    def to_dict(self) -> dict:
        data = {"name": self.name, "feat_in": self.feat_in, "num_labels": self.num_labels,
                "blocks": [b.to_dict() for b in self.blocks]}
        if self.self_conditioning:  # absent otherwise, so artifacts without it read as before
            data["self_conditioning"] = list(self.self_conditioning)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "QuartzNetConfig":
        blocks = tuple(BlockConfig(**b) for b in data["blocks"])
        return cls(blocks=blocks, num_labels=int(data["num_labels"]), feat_in=int(data.get("feat_in", 64)),
                   name=str(data.get("name", "custom")),
                   self_conditioning=tuple(int(b) for b in data.get("self_conditioning", ())))


_CITRINET_FIELDS = ("stride_last", "se", "se_reduction_ratio", "se_context_size")
_BLOCK_DEFAULTS = {name: BlockConfig.__dataclass_fields__[name].default for name in _CITRINET_FIELDS}


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
    (dilated ones as one undilated conv over the d interleaved phases of the signal), and a 1x1
    conv as a batched matrix product.
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
        if self.groups != self.in_channels:  # full convs keep oneDNN's own kernel
            return super().forward(x)
        if d > 1 and s == 1 and k % 2 == 1 and p == d * (k - 1) // 2:
            return self._depthwise_by_phases(x)
        if d > 1:
            return super().forward(x)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
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
        y = F.conv2d(phases.transpose(1, 2).unsqueeze(2), self.weight.unsqueeze(2), self.bias,
                     padding=(0, (k - 1) // 2), groups=self.groups)  # channels-last in and out
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
    """Inverted dropout whose keep-mask comes from ``rand`` (vectorised) rather than ``bernoulli_``.

    The same distribution as nn.Dropout, drawn twice as fast on CPU (3.2 vs 6.7 ms for a
    (8, 512, 200) activation), which is 7 % of a QuartzNet 5x3 training step.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


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
