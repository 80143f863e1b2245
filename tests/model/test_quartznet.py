"""Tests for model.quartznet: preset sizes, networks built from block tables, length arithmetic, padding invariance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model.audio import decode_audio
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.presets import (PRESETS, citrinet_256, jasper_10x5dr, preset_config, quartznet_5x3, quartznet_5x5,
                           quartznet_10x5, quartznet_15x5)
from model.quartznet import QuartzNet, SqueezeExcite, count_parameters
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary

# Trainable parameters with the 28-letter English vocabulary (29 outputs with the blank); these
# match NeMo's published QuartzNet/Jasper configs.
EXPECTED_PARAMETERS = {
    "quartznet_5x3": 6_407_005,
    "quartznet_5x5": 6_713_181,
    "quartznet_10x5": 12_818_781,
    "quartznet_15x5": 18_924_381,
    "jasper_10x5dr": 332_632_349,
}

# Small configs exercising every block feature: separable convs with stride, dilation and
# residual panes; and Jasper's full convs with dense residual connections.
SEPARABLE_CONFIG = QuartzNetConfig((
    BlockConfig(32, 1, 11, stride=2),
    BlockConfig(32, 2, 13, residual=True),
    BlockConfig(48, 2, 15, dilation=2, residual=True),
    BlockConfig(64, 1, 7, dilation=2),
    BlockConfig(64, 1, 1, separable=False),
), num_labels=28, name="tiny_quartznet")
DENSE_CONFIG = QuartzNetConfig((
    BlockConfig(32, 1, 11, stride=2, separable=False, dropout=0.2),
    BlockConfig(32, 2, 7, residual=True, residual_dense=True, separable=False, dropout=0.2),
    BlockConfig(48, 2, 9, residual=True, residual_dense=True, separable=False, dropout=0.2),
    BlockConfig(48, 2, 11, residual=True, residual_dense=True, separable=False, dropout=0.2),
    BlockConfig(64, 1, 13, dilation=2, separable=False, dropout=0.2),
    BlockConfig(64, 1, 1, separable=False, dropout=0.2),
), num_labels=28, name="tiny_jasper_dr")
# Citrinet's block kinds, tiny: SE everywhere, three 2x reductions in the last sub-block of a
# residual block (whose 1x1 pane strides too), a short SE context in one block (training only).
SE_CONFIG = QuartzNetConfig((
    BlockConfig(32, 1, 5, se=True),
    BlockConfig(32, 2, 11, stride=2, stride_last=True, residual=True, se=True),
    BlockConfig(32, 2, 7, residual=True, se=True, se_context_size=8),
    BlockConfig(48, 3, 9, stride=2, stride_last=True, residual=True, se=True, se_reduction_ratio=4),
    BlockConfig(48, 2, 11, stride=2, stride_last=True, residual=True, se=True),
    BlockConfig(64, 1, 13, se=True),
), num_labels=28, name="tiny_citrinet")


# ---- sizes ----


@pytest.mark.parametrize("factory", [quartznet_5x3, quartznet_5x5, quartznet_10x5, quartznet_15x5],
                         ids=lambda f: f.__name__)
def test_quartznet_preset_parameter_counts(factory):
    config = factory()
    assert count_parameters(QuartzNet(config)) == EXPECTED_PARAMETERS[config.name]


def test_jasper_10x5dr_parameter_count_on_meta_device():
    with torch.device("meta"):  # 333M parameters: count them without allocating 1.3 GB
        model = QuartzNet(jasper_10x5dr())
    assert count_parameters(model) == EXPECTED_PARAMETERS["jasper_10x5dr"]


def test_presets_table_and_lookup():
    # Citrinet's counts come from NeMo-built models (tests/interop/test_citrinet.py).
    assert set(PRESETS) == set(EXPECTED_PARAMETERS) | {"citrinet_256", "citrinet_512", "citrinet_1024"}
    assert preset_config("citrinet_256") == citrinet_256() and citrinet_256().num_labels == 1024
    assert preset_config("quartznet_15x5") == quartznet_15x5()
    assert preset_config("quartznet_5x5", num_labels=40).num_labels == 40
    with pytest.raises(ValueError, match="quartznet_15x5"):  # the message lists the known presets
        preset_config("quartznet_99x9")


def test_count_parameters_excludes_batchnorm_buffers_and_frozen_weights():
    model = QuartzNet(SEPARABLE_CONFIG)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.decoder.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.decoder.weight.numel()


# ---- custom block tables ----


def test_custom_block_table_builds_and_runs():
    model = QuartzNet(SEPARABLE_CONFIG).eval()
    features = torch.randn(2, 64, 50)
    log_probs, lengths = model(features, torch.tensor([50, 37]))
    assert log_probs.shape == (2, 25, 29)
    assert lengths.tolist() == [25, 19]
    assert model.blank_id == 28
    assert SEPARABLE_CONFIG.subsampling == 2
    # log-softmax rows sum to one in probability space
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 25))


def test_custom_config_builds_the_same_network_after_round_trip():
    torch.manual_seed(0)
    model = QuartzNet(DENSE_CONFIG).eval()
    clone = QuartzNet(QuartzNetConfig.from_dict(DENSE_CONFIG.to_dict())).eval()
    clone.load_state_dict(model.state_dict(), strict=True)  # identical parameter names and shapes
    # ... and the same computation: the weights loaded, the outputs are the original's bit for bit.
    feats, lengths = torch.randn(2, 64, 50), torch.tensor([50, 31])
    with torch.no_grad():
        assert torch.equal(clone(feats, lengths)[0], model(feats, lengths)[0])


def test_recognizer_config_rejects_vocabulary_mismatch():
    data = RecognizerConfig(MelFeaturizerConfig(), SEPARABLE_CONFIG, Vocabulary()).to_dict()
    data["vocabulary"] = data["vocabulary"][:-1]
    with pytest.raises(ValueError, match="labels"):
        RecognizerConfig.from_dict(data)


# ---- lengths ----


def test_output_lengths_are_ceil_half_for_stride_two():
    model = QuartzNet(SEPARABLE_CONFIG).eval()
    lengths = torch.arange(1, 41)
    with torch.no_grad():
        log_probs, out = model(torch.randn(len(lengths), 64, 40), lengths)
    assert out.tolist() == [math.ceil(t / 2) for t in lengths.tolist()]
    assert log_probs.shape[1] == math.ceil(40 / 2)
    assert out.dtype == torch.int64


@pytest.mark.parametrize("frames", [1, 2, 7, 8, 101])
def test_stock_preset_output_length(frames):
    config = QuartzNetConfig(quartznet_5x5().blocks[:2] + quartznet_5x5().blocks[-1:], num_labels=28)
    model = QuartzNet(config).eval()
    with torch.no_grad():
        _, out = model(torch.randn(1, 64, frames), torch.tensor([frames]))
    assert out.item() == math.ceil(frames / 2)


# ---- padding invariance ----


def _randomise(model: SpeechRecognizer, seed: int) -> SpeechRecognizer:
    """Random weights plus non-trivial BatchNorm statistics, so masking mistakes cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.3 * torch.randn(n, generator=gen))
        model.network.decoder.bias.copy_(torch.randn(model.network.decoder.bias.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def an4_clips(speech_root) -> list[np.ndarray]:
    """Three real AN4 test clips of clearly different lengths (shortest, middle, longest of 30)."""
    rows = [json.loads(line) for line in (speech_root / "an4_test.json").read_text().splitlines()[:30]]
    rows.sort(key=lambda r: r["duration"])
    chosen = [rows[0], rows[len(rows) // 2], rows[-1]]
    clips = [decode_audio(speech_root / r["audio_filepath"], 16_000).samples for r in chosen]
    assert len({len(c) for c in clips}) == 3
    return clips


def _assert_batch_matches_alone(model, clips, output_frames) -> None:
    """Each clip's log-probs in one padded batch equal its log-probs alone (within float32 rounding)."""
    batched = model.log_probs_batch(clips)
    for clip, in_batch in zip(clips, batched):
        alone = model.log_probs_batch([clip])[0]
        assert in_batch.shape == alone.shape == (output_frames(len(clip) // 160), 29)
        assert np.isfinite(alone).all()
        assert np.abs(in_batch - alone).max() <= 1e-5


# Only "nemo25" is tested for invariance. "nemo24" reproduces NeMo <= 2.4, which reflect-pads the
# *batch* tensor for the STFT and applies pre-emphasis without masking: a shorter clip's last
# frames then see its zero padding (and -0.97 * its last sample leaks into the padding), and via
# the per-feature mean/std every frame shifts a little. That is a NeMo property we copy on
# purpose so that old checkpoints keep their accuracy, not a bug.
@pytest.mark.parametrize("config", [SEPARABLE_CONFIG, DENSE_CONFIG], ids=lambda c: c.name)
def test_padding_invariance_on_real_clips(config, an4_clips):
    recognizer = RecognizerConfig(MelFeaturizerConfig(frontend="nemo25", pad_to=16), config, Vocabulary())
    torch.manual_seed(1)
    model = _randomise(SpeechRecognizer(recognizer), seed=2)
    _assert_batch_matches_alone(model, an4_clips, lambda frames: math.ceil(frames / 2))


def test_nemo24_longest_clip_is_unaffected_by_batching(an4_clips):
    # The clip that sets the batch length carries no padding, so even nemo24 must match exactly;
    # the shorter ones differ near their end by design (see the comment above).
    recognizer = RecognizerConfig(MelFeaturizerConfig(frontend="nemo24"), SEPARABLE_CONFIG, Vocabulary())
    torch.manual_seed(1)
    model = _randomise(SpeechRecognizer(recognizer), seed=3)
    longest = max(range(len(an4_clips)), key=lambda i: len(an4_clips[i]))
    batched = model.log_probs_batch(an4_clips)
    alone = model.log_probs_batch([an4_clips[longest]])[0]
    assert batched[longest].shape == alone.shape
    assert np.abs(batched[longest] - alone).max() <= 1e-5
    for clip, out in zip(an4_clips, batched):  # nemo24 keeps one extra feature frame
        assert out.shape[0] == math.ceil((len(clip) // 160 + 1) / 2)


def test_encode_with_taps_returns_the_inner_blocks_outputs_and_the_same_encoding():
    config = QuartzNetConfig((BlockConfig(16, kernel=5, stride=2, residual=False), BlockConfig(16, repeat=2, kernel=3),
                              BlockConfig(24, kernel=3, stride=2), BlockConfig(32, kernel=1, residual=False)),
                             num_labels=5, feat_in=8)
    net = QuartzNet(config).eval()
    feats, lengths = torch.randn(2, 8, 40), torch.tensor([40, 29])
    encoded, out_lengths = net.encode(feats, lengths)
    tapped_encoded, tapped_lengths, taps, conditioning = net.encode_with_taps(feats, lengths, (1, 2))
    assert torch.equal(encoded, tapped_encoded) and torch.equal(out_lengths, tapped_lengths)
    assert conditioning == []
    (inner1, lengths1), (inner2, lengths2) = taps
    assert inner1.shape == (2, 16, 20) and lengths1.tolist() == [20, 15]  # before the second stride
    assert inner2.shape == (2, 24, 10) and lengths2.tolist() == [10, 8]
    xs, expected_lengths = [feats], lengths
    for block in net.blocks[:2]:
        xs, expected_lengths = block(xs, expected_lengths)
    assert torch.equal(inner1, xs[-1]) and torch.equal(lengths1, expected_lengths)


SC_BLOCKS = (BlockConfig(16, kernel=5, stride=2, residual=False), BlockConfig(16, repeat=2, kernel=3, residual=True),
             BlockConfig(16, repeat=2, kernel=3, residual=True), BlockConfig(24, kernel=1, residual=False))


def test_self_conditioning_heads_feed_their_posteriors_to_later_blocks():
    plain = QuartzNet(QuartzNetConfig(SC_BLOCKS, num_labels=5, feat_in=8))
    torch.manual_seed(0)
    net = QuartzNet(QuartzNetConfig(SC_BLOCKS, num_labels=5, feat_in=8, self_conditioning=(2, 1))).eval()
    assert net.config.self_conditioning == (1, 2)
    extra = set(net.state_dict()) - set(plain.state_dict())
    assert extra == {f"conditioners.{b}.{layer}.{p}" for b in (1, 2) for layer in ("head", "back")
                     for p in ("weight", "bias")}
    feats, lengths = torch.randn(2, 8, 40), torch.tensor([40, 29])
    encoded = net.encode_with_taps(feats, lengths, ())
    assert [tuple(logits.shape) for logits, _ in encoded.conditioning_logits] == [(2, 6, 20), (2, 6, 20)]
    assert all(n.tolist() == [20, 15] for _, n in encoded.conditioning_logits)
    # The first head's logits are block 1's output read by its head, and block 2 sees that output
    # plus the projected posteriors: zeroing the back-projection changes what follows.
    xs, n = net.blocks[0]([feats], lengths)
    xs, n = net.blocks[1](xs, n)
    assert torch.allclose(encoded.conditioning_logits[0][0], net.conditioners["1"].head(xs[-1]))
    log_probs, _ = net(feats, lengths)
    with torch.no_grad():
        net.conditioners["1"].back.weight.zero_()
        net.conditioners["1"].back.bias.zero_()
    unconditioned, _ = net(feats, lengths)
    assert (log_probs - unconditioned).abs().max() > 1e-3


def test_self_conditioning_keeps_padding_invariance():
    net = QuartzNet(QuartzNetConfig(SC_BLOCKS, num_labels=5, feat_in=8, self_conditioning=(1,))).eval()
    feats = torch.randn(1, 8, 29)
    alone, alone_lengths = net(feats, torch.tensor([29]))
    padded, padded_lengths = net(torch.cat([feats, torch.randn(1, 8, 11)], dim=2), torch.tensor([29]))
    assert torch.equal(alone_lengths, padded_lengths)
    assert torch.allclose(alone[0, :alone_lengths[0]], padded[0, :padded_lengths[0]], atol=1e-5)


# ---- Citrinet: SE blocks and 8x reduction ----


def test_stride_last_moves_the_stride_to_the_last_sub_block():
    assert [BlockConfig(8, 3, 5, stride=2).stride_of(i) for i in range(3)] == [2, 1, 1]
    assert [BlockConfig(8, 3, 5, stride=2, stride_last=True).stride_of(i) for i in range(3)] == [1, 1, 2]
    block = QuartzNet(SE_CONFIG).blocks[3]
    assert [sub.depthwise.stride[0] for sub in block.sub] == [1, 1, 2]
    assert block.residual[0].conv.stride[0] == 2  # NeMo's residual_mode "stride_add"
    assert block.se.squeeze.weight.shape == (12, 48) and block.se.excite.weight.shape == (48, 12)


@pytest.mark.parametrize("frames", [1, 2, 7, 8, 9, 101, 203])
def test_citrinet_output_length_is_three_ceil_halvings(frames):
    model = QuartzNet(SE_CONFIG).eval()
    assert SE_CONFIG.subsampling == 8
    with torch.no_grad():
        log_probs, out = model(torch.randn(1, 64, frames), torch.tensor([frames]))
    assert out.item() == math.ceil(math.ceil(math.ceil(frames / 2) / 2) / 2) == log_probs.shape[1]


def test_squeeze_excite_gates_by_the_mean_of_the_valid_frames_and_zeroes_padding():
    torch.manual_seed(0)
    se = SqueezeExcite(8, 2).eval()
    x, lengths = torch.randn(2, 8, 10), torch.tensor([10, 6])
    y = se(x, lengths)
    mean = x[1, :, :6].mean(dim=1)
    gate = torch.sigmoid(se.excite(torch.relu(se.squeeze(mean))))
    torch.testing.assert_close(y[1, :, :6], x[1, :, :6] * gate[:, None])
    assert torch.equal(y[1, :, 6:], torch.zeros(8, 4))
    # What the padded frames hold cannot reach the valid ones.
    x[1, :, 6:] = 1e3
    torch.testing.assert_close(se(x, lengths)[1], y[1])


def test_squeeze_excite_context_size_pools_a_random_window_in_training_only():
    torch.manual_seed(0)
    se = SqueezeExcite(4, 2, context_size=3)
    x, lengths = torch.randn(1, 4, 12), torch.tensor([12])
    assert torch.equal(se.eval()._pool(x, lengths), x.mean(dim=-1, keepdim=True))
    torch.manual_seed(5)
    start = int(torch.randint(0, 12 - 3, (1,)))
    torch.manual_seed(5)
    window = se.train()._pool(x, lengths)
    torch.testing.assert_close(window, x[:, :, start:start + 3].sum(-1, keepdim=True) / (3 + 1e-8))


def test_squeeze_excite_blocks_keep_padding_invariance(an4_clips):
    recognizer = RecognizerConfig(MelFeaturizerConfig(frontend="nemo25", pad_to=16), SE_CONFIG, Vocabulary())
    torch.manual_seed(1)
    model = _randomise(SpeechRecognizer(recognizer), seed=4)
    # Three stride-2 blocks.
    _assert_batch_matches_alone(model, an4_clips, lambda frames: math.ceil(math.ceil(math.ceil(frames / 2) / 2) / 2))
