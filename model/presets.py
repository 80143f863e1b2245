"""Named model sizes: QuartzNet 5x3-15x5, Jasper 10x5 DR and Citrinet 256/512/1024, with NeMo's exact parameter counts."""

from __future__ import annotations

from model.network_config import BlockConfig, QuartzNetConfig

# ---- presets: (filters, kernel) per B-block; each preset repeats them per its size ----

_QN_BLOCKS = ((256, 33), (256, 39), (512, 51), (512, 63), (512, 75))
# The legacy NeMo 5x3 YAML (6.4M params) uses wider, longer blocks than the paper's Table 1.
_QN_5X3_LEGACY = ((512, 63), (512, 63), (512, 75), (512, 75), (512, 75))


def _quartznet(name: str, table, block_repeats: int, repeat: int, dropout: float, num_labels: int) -> QuartzNetConfig:
    blocks = [BlockConfig(256, 1, 33, stride=2, dropout=dropout)]
    for filters, kernel in table:
        blocks += [BlockConfig(filters, repeat, kernel, dropout=dropout, residual=True)] * block_repeats
    blocks += [BlockConfig(512, 1, 87, dilation=2, dropout=dropout),
               BlockConfig(1024, 1, 1, dropout=dropout, separable=False)]
    return QuartzNetConfig(tuple(blocks), num_labels=num_labels, name=name)


def quartznet_5x3(num_labels: int = 28) -> QuartzNetConfig:
    """QuartzNet 5x3 as in NeMo's legacy YAML: 6,407,005 parameters with 28 labels."""
    return _quartznet("quartznet_5x3", _QN_5X3_LEGACY, 1, 3, 0.2, num_labels)


def quartznet_5x5(num_labels: int = 28) -> QuartzNetConfig:
    """QuartzNet 5x5: 6,713,181 parameters with 28 labels."""
    return _quartznet("quartznet_5x5", _QN_BLOCKS, 1, 5, 0.0, num_labels)


def quartznet_10x5(num_labels: int = 28) -> QuartzNetConfig:
    """QuartzNet 10x5: 12,818,781 parameters with 28 labels."""
    return _quartznet("quartznet_10x5", _QN_BLOCKS, 2, 5, 0.0, num_labels)


def quartznet_15x5(num_labels: int = 28) -> QuartzNetConfig:
    """QuartzNet 15x5 (NeMo's stt_en_quartznet15x5 layout): 18,924,381 parameters with 28 labels."""
    return _quartznet("quartznet_15x5", _QN_BLOCKS, 3, 5, 0.0, num_labels)


def jasper_10x5dr(num_labels: int = 28) -> QuartzNetConfig:
    """Jasper 10x5 with dense residual connections: 332,632,349 parameters with 28 labels."""
    table = ((256, 11, 0.2), (384, 13, 0.2), (512, 17, 0.2), (640, 21, 0.3), (768, 25, 0.3))
    blocks = [BlockConfig(256, 1, 11, stride=2, dropout=0.2, separable=False)]
    for filters, kernel, dropout in table:
        blocks += [BlockConfig(filters, 5, kernel, dropout=dropout, residual=True, separable=False,
                               residual_dense=True)] * 2
    blocks += [BlockConfig(896, 1, 29, dilation=2, dropout=0.4, separable=False),
               BlockConfig(1024, 1, 1, dropout=0.4, separable=False)]
    return QuartzNetConfig(tuple(blocks), num_labels=num_labels, name="jasper_10x5dr")


# Citrinet's three reduction stages: the kernel of each block, the first one striding by 2
# (8x in all, one output frame per 80 ms). NeMo's examples/asr/conf/citrinet/citrinet_*.yaml.
_CITRINET_STAGES = ((11, 13, 15, 17, 19, 21), (13, 15, 17, 19, 21, 23, 25), (25, 27, 29, 31, 33, 35, 37, 39))
# NeMo's English Citrinets use 1024-piece SentencePiece tokenizers; the counts below assume it.
CITRINET_NUM_LABELS = 1024


def scaled_kernel(kernel: int, factor: float) -> int:
    """NeMo's ``kernel_size_factor``: scale, truncate, and round an even result up to odd."""
    scaled = max(int(kernel * factor), 1)
    return scaled + 1 if scaled % 2 == 0 else scaled


def citrinet(name: str, filters: int, final_filters: int, kernel_factor: float, num_labels: int,
             feat_in: int = 80) -> QuartzNetConfig:
    """A Citrinet: a k5 prolog, 21 residual SE blocks of 5 sub-blocks in three 2x stages, a k41 epilog.

    Args:
        name: the preset name stored in the config.
        filters: channels of the prolog and every residual block.
        final_filters: channels of the epilog (the CTC head's input).
        kernel_factor: NeMo's ``kernel_size_factor`` for the residual blocks and the epilog.
        num_labels: word pieces, without the blank.
        feat_in: mel bands (80 in NeMo's configs).
    """
    blocks = [BlockConfig(filters, 1, 5, se=True)]
    for stage in _CITRINET_STAGES:
        for i, kernel in enumerate(stage):
            blocks.append(BlockConfig(filters, 5, scaled_kernel(kernel, kernel_factor), stride=2 if i == 0 else 1,
                                      dropout=0.1, residual=True, stride_last=i == 0, se=True))
    blocks.append(BlockConfig(final_filters, 1, scaled_kernel(41, kernel_factor), se=True))
    return QuartzNetConfig(tuple(blocks), num_labels=num_labels, feat_in=feat_in, name=name)


def citrinet_256(num_labels: int = CITRINET_NUM_LABELS) -> QuartzNetConfig:
    """Citrinet-256: NeMo's citrinet_512.yaml with 256 filters, as its header says to derive it: 10,259,729
    parameters with 1024 word pieces."""
    return citrinet("citrinet_256", 256, 640, 1.0, num_labels)


def citrinet_512(num_labels: int = CITRINET_NUM_LABELS) -> QuartzNetConfig:
    """Citrinet-512 (NeMo's citrinet_512.yaml): 36,994,321 parameters with 1024 word pieces."""
    return citrinet("citrinet_512", 512, 640, 1.0, num_labels)


def citrinet_1024(num_labels: int = CITRINET_NUM_LABELS) -> QuartzNetConfig:
    """Citrinet-1024 (NeMo's citrinet_1024.yaml, kernels scaled by 0.25): 141,224,337 parameters with 1024
    word pieces."""
    return citrinet("citrinet_1024", 1024, 1024, 0.25, num_labels)


PRESETS = {
    "quartznet_5x3": quartznet_5x3,
    "quartznet_5x5": quartznet_5x5,
    "quartznet_10x5": quartznet_10x5,
    "quartznet_15x5": quartznet_15x5,
    "jasper_10x5dr": jasper_10x5dr,
    "citrinet_256": citrinet_256,
    "citrinet_512": citrinet_512,
    "citrinet_1024": citrinet_1024,
}


def preset_config(name: str, num_labels: int | None = None) -> QuartzNetConfig:
    """Looks up a named preset (``num_labels`` None: the preset's own default); raises ValueError listing the
    known ones."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    return factory() if num_labels is None else factory(num_labels)
