"""int8 inference form: the channel-mixing (pointwise) matrix products statically quantized, calibrated on real audio.

The pointwise convs hold ~90 % of a QuartzNet's multiply-adds. Here each one runs as an int8
matrix product (``torch.ops.quantized.linear``, fbgemm/oneDNN with VNNI): weights quantized per
output channel (symmetric), activations per tensor with a scale and zero point fixed in advance
from the ranges the fp32 form sees on calibration speech, outputs requantized the same way and
turned back into float32. Depthwise convs, the self-conditioning heads and the CTC head stay
fp32: they are cheap, and the head decides the decoded labels. Convs over time in Jasper's full
(non-separable) blocks also stay fp32, so Jasper gains less.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.audio import decode_audio
from model.inference import InferenceEnsemble, InferenceRecognizer, _Block, _Linear, for_inference

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
_QUINT8_LEVELS = 255


def activation_levels() -> int:
    """Levels an int8 product's input may use: 255 on CPUs with AVX512-VNNI (AMX included), else 127.

    Without VNNI, fbgemm multiplies pairs of uint8 inputs by int8 weights into one int16
    (``vpmaddubsw``), which saturates once a pair sums past 32767: up to 39 output levels off
    on the starter. Inputs held to 0..127 cannot reach it (2 * 127 * 127 < 32767), which is
    PyTorch's ``reduce_range``. Where VNNI cannot be confirmed, 127 is the safe choice.
    """
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    return _QUINT8_LEVELS if has_vnni else _QUINT8_LEVELS // 2


def calibration_clips(sample_rate: int, folder: Path = CALIBRATION_DIR) -> list[np.ndarray]:
    """The bundled calibration speech (AN4 training utterances, 12 speakers), resampled to ``sample_rate``."""
    paths = sorted(folder.glob("*.flac"))
    if not paths:
        raise FileNotFoundError(f"no calibration audio in {folder}")
    return [decode_audio(path, sample_rate).samples for path in paths]


class _Range:
    """Running min/max of the tensors seen by one calibration hook."""

    def __init__(self) -> None:
        self.low, self.high = 0.0, 0.0  # every range includes 0, so 0.0 is exactly representable

    def update(self, tensor: torch.Tensor) -> None:
        self.low = min(self.low, float(tensor.min()))
        self.high = max(self.high, float(tensor.max()))

    def quint8(self, levels: int = _QUINT8_LEVELS) -> tuple[float, int]:
        """(scale, zero_point) mapping [low, high] onto 0..levels."""
        scale = max(self.high - self.low, 1e-8) / levels
        return scale, int(np.clip(round(-self.low / scale), 0, levels))


class _Int8Linear(nn.Module):
    """A calibrated _Linear as quantize -> int8 matrix product (+ fused ReLU) -> dequantize.

    ``outputs`` is the range of the product itself (bias included, before any residual add or
    ReLU); with ``relu_fused`` the product's ReLU runs inside the int8 kernel, so only [0, high]
    needs levels.
    """

    def __init__(self, linear: _Linear, inputs: _Range, outputs: _Range, relu_fused: bool) -> None:
        super().__init__()
        weight = linear.weight.float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        qweight = torch.quantize_per_channel(weight, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_scale, self.in_zero = inputs.quint8(activation_levels())
        if relu_fused:
            outputs.low = 0.0
        self.out_scale, self.out_zero = outputs.quint8()
        self.relu_fused = relu_fused

    def forward(self, x: torch.Tensor, *, relu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """Same contract as _Linear.forward: ``linear(x)``, then ``+ add`` and/or ReLU."""
        qx = torch.quantize_per_tensor(x, self.in_scale, self.in_zero, torch.quint8)
        fuse = self.relu_fused and relu and add is None
        op = torch.ops.quantized.linear_relu if fuse else torch.ops.quantized.linear
        y = op(qx, self._packed, self.out_scale, self.out_zero).dequantize()
        if add is not None:
            y = y.add_(add)
        return torch.relu_(y) if relu and not fuse else y


def _mixing_layers(recognizer: InferenceRecognizer) -> list[tuple[nn.Module, str, _Linear, bool]]:
    """(parent, attribute, layer, ReLU right after the product) for every pointwise mix and residual pane."""
    layers = []
    for block in recognizer.network.blocks:
        assert isinstance(block, _Block)
        for i, sub in enumerate(block.subs):
            # The last sub-block's ReLU waits for the residual panes, or for SE's gate, or both.
            last_relu_fused = not block.panes and block.se is None
            if sub.mix is not None:
                layers.append((sub, "mix", sub.mix, i < len(block.subs) - 1 or last_relu_fused))
        for j, pane in enumerate(block.panes):
            layers.append((block.panes, str(j), pane, False))
    return layers


@torch.inference_mode()
def _quantize_member(recognizer: InferenceRecognizer, clips: list[np.ndarray]) -> InferenceRecognizer:
    layers = _mixing_layers(recognizer)
    ranges = [(_Range(), _Range()) for _ in layers]

    def observer(layer: _Linear, inputs: _Range, outputs: _Range):
        def hook(_module, args, _output) -> None:  # returns None: the output is left as it is
            inputs.update(args[0])
            outputs.update(F.linear(args[0], layer.weight, layer.bias))  # the product alone
        return hook

    hooks = [layer.register_forward_hook(observer(layer, *r)) for (_, _, layer, _), r in zip(layers, ranges)]
    try:
        for clip in clips:  # one at a time: no padding frames in the statistics
            recognizer.log_probs_batch([clip])
    finally:
        for hook in hooks:
            hook.remove()
    for (parent, name, layer, relu_fused), (inputs, outputs) in zip(layers, ranges):
        setattr(parent, name, _Int8Linear(layer, inputs, outputs, relu_fused))
    recognizer.precision = "int8"
    return recognizer


def quantize_for_inference(model, calibration: list[np.ndarray] | None = None
                           ) -> InferenceRecognizer | InferenceEnsemble:
    """The int8 inference form of a SpeechRecognizer or EnsembleRecognizer (CPU only).

    Args:
        model: the eager model, eval mode.
        calibration: mono float32 clips at the model's sample rate; default: the bundled speech.
    """
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    fp32 = for_inference(model, "fp32")
    clips = calibration if calibration is not None else calibration_clips(fp32.sample_rate)
    members = fp32.members if isinstance(fp32, InferenceEnsemble) else [fp32]
    for member in members:
        _quantize_member(member, clips)
    fp32.precision = "int8"
    return fp32
