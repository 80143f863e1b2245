"""The inference form of every model: BatchNorm folded into the convs, time-major layout, masks only where padded.

The eager modules (model.quartznet) mirror NeMo: NCW ``Conv1d``, a BatchNorm and a time mask after
every conv. On oneDNN a depthwise ``Conv1d`` runs ~15x slower than the same op as a grouped
``Conv2d`` over a channels-last ``(N, C, 1, T)`` tensor, and a 1x1 conv is fastest as a matrix
product. So here activations stay ``(N, T, C)`` contiguous from the first block to the CTC head:
that tensor *is* a channels-last ``(N, C, 1, T)`` one (same memory), so depthwise and full time
convs run as ``conv2d`` on a view and pointwise convs as ``linear``, with no copies between them.
On CPU both run as oneDNN's own ops on weights reordered once into its blocked layout.

Padded frames only matter to convs that mix time (kernel > 1): those zero the frames past each
item's length first, and only in batches that have padding. Valid frames equal the eager model's
up to float rounding; frames past ``output_lengths`` are garbage, as in the eager model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.allocator import keep_freed_memory
from model.ensemble import EnsembleConfig, EnsembleRecognizer
from model.features import MelFeaturizer
from model.network_config import QuartzNetConfig
from model.precision import FLOAT_DTYPES, resolve_precision
from model.quartznet import JasperBlock, QuartzNet
from model.recognizer import BatchInference, OneNetwork, RecognizerConfig, SpeechRecognizer


Mask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bn_scale_shift(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = scale * x + shift`` per channel, in float64."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, norm.bias.double() - scale * norm.running_mean.double()


class _Prepacked:
    """A weight in oneDNN's own blocked layout, made on first use and kept beside the plain one.

    Handed a plain weight, oneDNN reorders it on every call: 20-80 us per 512 x 512 matrix, which
    is a quarter of the network's time for a 0.6 s input and 5-7 % for 10 s. Packed again when
    the module's weight is another tensor (``.to()``, reassignment); the form's weights are never
    changed in place. Never copied or saved: a copy of the module packs on its own first use.
    """

    def __init__(self, pack: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.pack, self.source, self.tensor = pack, None, None

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        if weight is not self.source:  # holding the source keeps its identity from being reused
            self.tensor, self.source = self.pack(weight), weight
        return self.tensor

    def __deepcopy__(self, memo: dict) -> "_Prepacked":
        return _Prepacked(self.pack)


class _TimeConv(nn.Module):
    """A conv over time (kernel > 1) on (N, T, C) activations: conv2d over the channels-last (N, C, 1, T) view.

    oneDNN has no fast kernel for dilated depthwise convs (26 ms instead of 0.3 ms for QuartzNet's
    512-channel, kernel-87 epilog). A conv dilated by d is d undilated convs over the frames
    t = r, r + d, r + 2d, ...; those run as one undilated conv over a batch of N * d sequences.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv1d) -> None:
        super().__init__()
        self.register_buffer("weight", weight.unsqueeze(2).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation = conv.stride[0], conv.padding[0], conv.dilation[0]
        self.groups, self.kernel = conv.groups, conv.kernel_size[0]
        # The phase split needs "same" padding with an odd kernel (every preset's case).
        self.split_phases = (self.dilation > 1 and self.stride == 1 and self.kernel % 2 == 1
                             and self.padding == self.dilation * (self.kernel - 1) // 2)
        self.packed: dict[tuple[int, int, int], _Prepacked] = {}

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k, s, d, p = self.kernel, self.stride, self.dilation, self.padding
        if s == 1 and 2 * p == d * (k - 1):
            return lengths
        return torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_phases and not torch.jit.is_tracing():
            return self._by_phases(x)
        return self._conv(x, self.stride, self.padding, self.dilation)

    def _conv(self, x: torch.Tensor, stride: int, padding: int, dilation: int) -> torch.Tensor:
        if _use_onednn(x):
            # as_strided: one op where transpose + unsqueeze and back are five (~1 ms per 15x5 forward).
            x = x.contiguous()  # as it always is: the strides below assume it
            batch, frames, channels = x.shape
            x4 = x.as_strided((batch, channels, 1, frames), (frames * channels, 1, frames * channels, channels))
            geometry = (stride, padding, dilation)
            if geometry not in self.packed:
                groups = self.groups
                self.packed[geometry] = _Prepacked(lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                    w, [0, padding], [1, stride], [1, dilation], groups))
            y = torch.ops.mkldnn._convolution_pointwise(x4, self.packed[geometry](self.weight), self.bias,
                                                        [0, padding], [1, stride], [1, dilation], self.groups,
                                                        "none", [], "")
            if y.is_contiguous(memory_format=torch.channels_last):  # always, for a channels-last input
                out_frames, out_channels = y.shape[3], y.shape[1]
                return y.as_strided((batch, out_frames, out_channels), (out_frames * out_channels, out_channels, 1))
        else:
            y = F.conv2d(x.transpose(1, 2).unsqueeze(2), self.weight, self.bias, stride=(1, stride),
                         padding=(0, padding), dilation=(1, dilation), groups=self.groups)
        return y.squeeze(2).transpose(1, 2).contiguous()

    def _by_phases(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, channels = x.shape
        d = self.dilation
        spans = -(-frames // d)
        if spans * d != frames:  # zeros past the end are what the conv's own padding would read
            x = F.pad(x, (0, 0, 0, spans * d - frames))
        # contiguous(): at batch 1 the reshape is a strided view, which oneDNN runs ~10x slower.
        phases = x.view(batch, spans, d, channels).transpose(1, 2).reshape(batch * d, spans, channels)
        phases = phases.contiguous()
        y = self._conv(phases, 1, (self.kernel - 1) // 2, 1)
        y = y.view(batch, d, spans, -1).transpose(1, 2).reshape(batch, spans * d, -1)
        return y[:, :frames] if spans * d != frames else y


class _Linear(nn.Module):
    """A 1x1 conv (optionally with a folded BatchNorm) as a matrix product over (N, T, C).

    On CPU it runs as oneDNN's fused linear (bias, and ReLU or a residual add, in the same pass):
    25 % faster than ``F.linear`` in fp32 here, which goes through MKL and then adds the bias.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias)
        self.packed = _Prepacked(lambda w: torch.ops.mkldnn._reorder_linear_weight(w, _PACK_ROWS))

    def forward(self, x: torch.Tensor, *, relu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """``linear(x)``, then ``+ add`` and/or ReLU."""
        if _use_onednn(x):
            rows = x.numel() // x.shape[-1]
            few_rows = x.dtype != torch.float32 and rows < _HALF_PACKED_MIN_ROWS
            weight = self.weight if few_rows else self.packed(self.weight)
            if add is not None:
                y = torch.ops.mkldnn._linear_pointwise.binary(x, add, weight, self.bias, "add")
                return torch.relu_(y) if relu else y
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "relu" if relu else "none", [], "")
        y = F.linear(x, self.weight, self.bias)
        if add is not None:
            y = y.add_(add)
        return torch.relu_(y) if relu else y


def _use_onednn(x: torch.Tensor) -> bool:
    """oneDNN's own ops on prepacked weights: CPU tensors of a build with them, outside ONNX tracing."""
    return x.device.type == "cpu" and _ONEDNN_OPS and not torch.jit.is_tracing()


_ONEDNN_OPS = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_reorder_linear_weight",
                                             "_convolution_pointwise", "_reorder_convolution_weight"))
# Rows oneDNN is told to expect when it picks a packed layout; any row count runs on it.
_PACK_ROWS = 512
# In bf16/fp16 no one packed layout suits every row count (AMX, QuartzNet 5x3): below ~1000 rows
# the layout oneDNN picks per call is faster (1 x 10 s: 14.5 vs 16.6 ms), above it the packed one
# (8 x 10 s: 87 vs 110 ms). float32 runs equally fast on any packed layout.
_HALF_PACKED_MIN_ROWS = 1024


class _SubBlock(nn.Module):
    """One conv sub-block with its BatchNorm folded: [depthwise time conv] -> channel mix (+ bias)."""

    def __init__(self, sub: nn.Module, extra_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        scale, shift = _bn_scale_shift(sub.norm)
        if extra_bias is not None:  # the residual panes' folded biases, summed into one add
            shift = shift + extra_bias
        if sub.separable:
            self.time = _TimeConv(sub.depthwise.weight.double(), None, sub.depthwise)
            mix = sub.pointwise.weight.double()[:, :, 0] * scale[:, None]
            self.mix = _Linear(mix, shift)
        else:
            conv = sub.conv
            weight = conv.weight.double() * scale[:, None, None]
            if conv.kernel_size[0] == 1 and conv.stride[0] == 1:
                self.time, self.mix = None, _Linear(weight[:, :, 0], shift)
            else:  # a full conv over time, BatchNorm folded into it
                self.time, self.mix = _TimeConv(weight, shift, conv), None

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths if self.time is None else self.time.out_lengths(lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: Mask | None, *, relu: bool = False,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """The sub-block, then ``+ add`` (the residual panes) and/or ReLU, fused into the last op where possible."""
        if self.time is not None:
            if mask is not None:
                x = mask(x, lengths)
            x = self.time(x)
            if self.mix is None:
                x = x if add is None else x.add_(add)
                return torch.relu_(x) if relu else x
        return self.mix(x, relu=relu, add=add)


class _SqueezeExcite(nn.Module):
    """Squeeze-and-excitation on (N, T, C): each channel times a gate from its mean over the valid frames.

    The gate is computed in float32 at every precision, as NeMo computes it; it is cheap (two
    small matrix products per utterance), and the mean of a long utterance loses digits in bf16.
    """

    def __init__(self, se: nn.Module) -> None:
        super().__init__()
        self.register_buffer("squeeze", se.squeeze.weight.detach().clone())
        self.register_buffer("excite", se.excite.weight.detach().clone())

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: Mask | None) -> torch.Tensor:
        if mask is not None:  # padded frames hold BatchNorm shifts: keep them out of the mean
            x = mask(x, lengths)
        pooled = x.float().sum(dim=1) / lengths.to(torch.float32)[:, None]
        hidden = torch.relu(F.linear(pooled, self.squeeze.float()))
        gate = torch.sigmoid(F.linear(hidden, self.excite.float()))
        return x * gate.to(x.dtype)[:, None, :]


class _Block(nn.Module):
    """A JasperBlock: sub-blocks with ReLU between them, optional SE, residual panes added before the last ReLU."""

    def __init__(self, block: JasperBlock) -> None:
        super().__init__()
        panes = [(_bn_scale_shift(p.norm), p.conv.weight.double()[:, :, 0]) for p in block.residual]
        pane_bias = torch.stack([shift for (_, shift), _ in panes]).sum(0) if panes else None
        self.se = _SqueezeExcite(block.se) if block.se is not None else None
        # The panes' folded biases join the last sub-block's bias, unless SE scales that output
        # before the panes are added: then the first pane carries them.
        fold = self.se is None
        last = len(block.sub) - 1
        self.subs = nn.ModuleList(_SubBlock(sub, pane_bias if i == last and fold else None)
                                  for i, sub in enumerate(block.sub))
        self.panes = nn.ModuleList(_Linear(weight * scale[:, None], None if fold or j else pane_bias)
                                   for j, ((scale, _), weight) in enumerate(panes))
        self.stride = block.config.stride
        self.dense = block.config.residual_dense

    def forward(self, xs: list[torch.Tensor], lengths: torch.Tensor, mask: Mask | None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        residual = None
        for pane, earlier in zip(self.panes, xs):  # panes read the block's inputs: before any in-place op
            if self.stride > 1:  # a strided 1x1 conv keeps frames 0, s, 2s, ...
                earlier = earlier[:, ::self.stride].contiguous()
            residual = pane(earlier) if residual is None else pane(earlier, add=residual)
        x, out_lengths = xs[-1], lengths
        last = len(self.subs) - 1
        for i, sub in enumerate(self.subs):
            if i == last and self.se is not None:
                x = sub(x, out_lengths, mask)
                out_lengths = sub.out_lengths(out_lengths)
                x = self.se(x, out_lengths, mask)
                x = torch.relu_(x if residual is None else x.add_(residual))
            else:
                x = sub(x, out_lengths, mask, relu=True, add=residual if i == last else None)
                out_lengths = sub.out_lengths(out_lengths)
        return (xs + [x] if self.dense else [x]), out_lengths


class _Conditioner(nn.Module):
    """Self-conditioning head: CTC posteriors from a block's output, projected back and added to it."""

    def __init__(self, conditioner: nn.Module) -> None:
        super().__init__()
        self.head = _Linear(conditioner.head.weight.double()[:, :, 0], conditioner.head.bias.double())
        self.back = _Linear(conditioner.back.weight.double()[:, :, 0], conditioner.back.bias.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        posteriors = torch.softmax(self.head(x).float(), dim=-1).to(x.dtype)
        return x + self.back(posteriors)


class InferenceNetwork(nn.Module):
    """A QuartzNet/Jasper encoder + CTC head, folded for inference; same inputs and outputs as ``QuartzNet``."""

    def __init__(self, network: QuartzNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if network.training:
            raise ValueError("fold a network in eval mode: BatchNorm must use its running statistics")
        self.config: QuartzNetConfig = network.config
        self.blocks = nn.ModuleList(_Block(block) for block in network.blocks)
        self.conditioners = nn.ModuleDict({k: _Conditioner(c) for k, c in network.conditioners.items()})
        self.decoder = _Linear(network.decoder.weight.double()[:, :, 0], network.decoder.bias.double())
        self.dtype = dtype
        self.traceable = False  # True while exporting (interop.onnx): masks as graph ops, no Python branches
        self.to(dtype)

    @property
    def blank_id(self) -> int:
        return self.config.num_labels

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, feat_in, T) features + (B,) lengths -> log_probs (B, T', V+1) float32, output_lengths (B,).

        Frames past the longest item are dropped first (the front end always pads one, and
        ``pad_to`` more): a conv's own zero padding then does what the eager model's masks do, so
        a batch of one needs no mask at all. T' is therefore ``output_lengths.max()``.
        """
        if not self.traceable:
            features = features[:, :, :int(feature_lengths.max()) if len(feature_lengths) else 0]
        xs, lengths = [features.to(self.dtype).transpose(1, 2).contiguous()], feature_lengths
        # No item shorter than the tensor stays so through every conv (same length formula): then
        # no block needs a mask, and the per-block check (~40 us each) is skipped.
        padded = not self.traceable and bool((lengths < xs[-1].shape[1]).any())
        for index, block in enumerate(self.blocks):
            if self.traceable:
                mask = _zero_padding_traceable
            else:
                mask = _zero_padding if padded and bool((lengths < xs[-1].shape[1]).any()) else None
            xs, lengths = block(xs, lengths, mask)
            if str(index) in self.conditioners:
                xs = xs[:-1] + [self.conditioners[str(index)](xs[-1])]
        return F.log_softmax(self.decoder(xs[-1]).float(), dim=-1), lengths


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zeroes frames at or past each item's length of (N, T, C) ``x``, in place (a contiguous tail per item)."""
    frames = x.shape[1]
    for i, n in enumerate(lengths.tolist()):
        if n < frames:
            x[i, n:] = 0
    return x


def _zero_padding_traceable(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``_zero_padding`` as tensor operations, for exported graphs whose lengths are inputs."""
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    return x * valid.unsqueeze(-1).to(x.dtype)


class InferenceRecognizer(OneNetwork, BatchInference, nn.Module):
    """The inference form of a SpeechRecognizer: the same front end, then the folded network."""

    def __init__(self, recognizer: SpeechRecognizer, precision: str = "fp32") -> None:
        super().__init__()
        self.config: RecognizerConfig = recognizer.config
        self.precision = precision
        self.featurizer: MelFeaturizer = copy.deepcopy(recognizer.featurizer)  # moves with this form only
        self.network = InferenceNetwork(recognizer.network, FLOAT_DTYPES[precision])

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) float audio + (B,) lengths -> log_probs (B, T', V+1) float32, output_lengths (B,)."""
        features, feature_lengths = self.featurizer(audio, audio_lengths)
        return self.network(features, feature_lengths)


class InferenceEnsemble(EnsembleRecognizer):
    """An EnsembleRecognizer whose members are inference forms; views and speeds work as in the eager one."""

    def __init__(self, config: EnsembleConfig, members: list[InferenceRecognizer]) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.members = nn.ModuleList(members)
        self.precision = members[0].precision


Recognizer = SpeechRecognizer | EnsembleRecognizer


@torch.no_grad()
def for_inference(model: Recognizer, precision: str = "fp32", device: torch.device | str = "cpu"
                  ) -> InferenceRecognizer | InferenceEnsemble:
    """Builds the inference form of a loaded model (eval mode) at ``precision`` on ``device``.

    Raises:
        PrecisionError: the device cannot run that precision.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    keep_freed_memory()  # every caller that serves audio builds a form first
    if precision == "int8":
        from model.int8 import quantize_for_inference

        return quantize_for_inference(model)
    model = model.eval()
    if isinstance(model, EnsembleRecognizer):
        members = [InferenceRecognizer(member, precision) for member in model.members]
        return InferenceEnsemble(model.config, members).to(device).eval()
    return InferenceRecognizer(model, precision).to(device).eval()
