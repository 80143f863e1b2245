"""Encoder block tables for QuartzNet, Jasper and Citrinet: frozen configs, their checks, and their dict form.

What an artifact stores about a network's shape; ``model.quartznet`` builds the modules from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
