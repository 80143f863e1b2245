"""The inference form (model.inference) against the eager reference: every block kind, padded batches, precisions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import model.inference as inference_module
from model.checkpoint import load_model
from model.ensemble import EnsembleRecognizer
from model.features import MelFeaturizerConfig
from model.inference import InferenceEnsemble, InferenceRecognizer, for_inference
from model.network_config import BlockConfig, QuartzNetConfig
from model.precision import PrecisionError, cpu_has_native_bf16, cpu_has_native_fp16, resolve_precision
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import Registry
from model.vocabulary import Vocabulary
from tests.conftest import REPO_ROOT
from tests.model.test_quartznet import DENSE_CONFIG, SE_CONFIG, SEPARABLE_CONFIG, _randomise, an4_clips  # noqa: F401

# fp32 against fp32: the folded weights are computed in float64 and rounded once, and the
# products run in another order, so log-probs move by float32 rounding through ~20 layers.
# Near zero, where decoding looks, that is ~1e-5 (measured) against a bound of 1e-4. A trained
# model also emits log-probs near -1000, where one float32 ulp is 6e-5 to 1.2e-4: there the
# eager model itself is up to 5.9e-6 (relative) away from a float64 run of the same weights
# (measured on the starter's members), and so is this form, so two such runs may differ by
# twice that. The relative part, 3e-5, allows 2.5 times that. Masking or folding mistakes
# move log-probs by 1e-2 or more (test_a_wrong_mask_would_be_caught), and
# test_fp32_form_is_as_exact_as_the_eager_model checks accuracy against float64 directly.
FP32_ATOL, FP32_RTOL = 1e-4, 3e-5
PADDING_ATOL = 1e-5  # the same model, batched vs alone: what the eager model guarantees
SELF_CONDITIONED_CONFIG = QuartzNetConfig((
    BlockConfig(32, 1, 11, stride=2),
    BlockConfig(32, 2, 13, residual=True),
    BlockConfig(32, 2, 9, residual=True),
    BlockConfig(48, 1, 1, separable=False),
), num_labels=28, self_conditioning=(1,), name="tiny_self_conditioned")
CONFIGS = [SEPARABLE_CONFIG, DENSE_CONFIG, SELF_CONDITIONED_CONFIG, SE_CONFIG]


def _recognizer(config: QuartzNetConfig, seed: int = 2) -> SpeechRecognizer:
    torch.manual_seed(seed)
    model = SpeechRecognizer(RecognizerConfig(MelFeaturizerConfig(), config, Vocabulary()))
    with torch.no_grad():  # non-zero conditioning heads, so the fold of them is exercised
        for conditioner in model.network.conditioners.values():
            conditioner.back.bias.normal_(0, 0.3)
            conditioner.head.bias.normal_(0, 0.3)
    return _randomise(model, seed)


def _noise_clips(lengths=(16_000, 9_001, 23_456)) -> list[np.ndarray]:
    return [np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32) for i, n in enumerate(lengths)]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def assert_fp32_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """|got - want| <= FP32_ATOL + FP32_RTOL * |want| everywhere (see the constants' comment)."""
    assert [x.shape for x in got] == [y.shape for y in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_fp32_form_matches_the_eager_model_on_padded_batches(config, an4_clips):  # noqa: F811
    eager = _recognizer(config)
    fast = for_inference(eager, "fp32")
    assert isinstance(fast, InferenceRecognizer) and fast.precision == "fp32"
    for clips in (_noise_clips(), an4_clips):
        batched = fast.log_probs_batch(clips)
        assert_fp32_close(batched, eager.log_probs_batch(clips))
        assert _max_diff(batched, [fast.log_probs_batch([c])[0] for c in clips]) <= PADDING_ATOL


def test_masking_runs_only_in_batches_with_padding(monkeypatch):
    fast = for_inference(_recognizer(SEPARABLE_CONFIG), "fp32")
    calls = []
    original = inference_module._zero_padding
    monkeypatch.setattr(inference_module, "_zero_padding", lambda x, n: calls.append(1) or original(x, n))
    fast.log_probs_batch(_noise_clips((16_000,)))
    fast.log_probs_batch(_noise_clips((16_000, 16_000)))
    assert calls == []
    fast.log_probs_batch(_noise_clips((16_000, 8_000)))
    assert calls, "a padded batch must mask before its time convolutions"


@pytest.mark.parametrize("batch", [1, 3])
def test_dilated_convs_run_as_contiguous_phases(monkeypatch, batch):
    """A dilated depthwise conv runs as undilated convs over its phases, which must reach oneDNN contiguous:
    at batch 1 the phase reshape alone is a strided view, ~10x slower (21 ms vs 1.6 ms on a Zen 3 core pair)."""
    conv = torch.nn.Conv1d(16, 16, kernel_size=5, dilation=2, padding=4, groups=16, bias=False)
    time_conv = inference_module._TimeConv(conv.weight.detach(), None, conv)
    contiguous = []
    unsplit = inference_module._TimeConv._conv
    monkeypatch.setattr(inference_module._TimeConv, "_conv",
                        lambda self, x, *args: contiguous.append(x.is_contiguous()) or unsplit(self, x, *args))
    x = torch.randn(batch, 37, 16)
    with torch.no_grad():
        got, want = time_conv(x), conv(x.transpose(1, 2)).transpose(1, 2)
    assert contiguous == [True]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.skipif(not inference_module._ONEDNN_OPS, reason="this torch build has no oneDNN ops")
def test_weights_are_packed_once_and_repacked_when_they_change():
    """oneDNN gets its own layout of each weight, made on the first call and reused after it."""
    linear = inference_module._Linear(torch.randn(24, 16), torch.randn(24))
    x = torch.randn(1, 7, 16)
    with torch.no_grad():
        first = linear(x, relu=True)
        packed = linear.packed.tensor
        torch.testing.assert_close(first, torch.relu(torch.nn.functional.linear(x, linear.weight, linear.bias)),
                                   rtol=0, atol=1e-5)
        linear(torch.randn(3, 50, 16))  # another row count runs on the same packed weight
        assert linear.packed.tensor is packed
        linear.weight = linear.weight * 2  # new storage: packed again, not a stale copy of the old one
        doubled = linear(x)
        assert linear.packed.tensor is not packed
        torch.testing.assert_close(doubled, torch.nn.functional.linear(x, linear.weight, linear.bias),
                                   rtol=0, atol=1e-5)


def test_a_used_form_can_be_copied(an4_clips):  # noqa: F811
    """Packed weights are opaque oneDNN tensors; a deep copy packs its own on first use."""
    fast = for_inference(_recognizer(SEPARABLE_CONFIG), "fp32")
    want = fast.log_probs_batch(an4_clips[:2])
    clone = copy.deepcopy(fast)
    assert _max_diff(clone.log_probs_batch(an4_clips[:2]), want) == 0.0


def test_a_wrong_mask_would_be_caught(monkeypatch, an4_clips):  # noqa: F811
    """The parity test above can fail: without the masks, padded items' last frames change."""
    eager = _recognizer(SEPARABLE_CONFIG)
    fast = for_inference(eager, "fp32")
    monkeypatch.setattr(inference_module, "_zero_padding", lambda x, n: x)
    assert _max_diff(fast.log_probs_batch(an4_clips), eager.log_probs_batch(an4_clips)) > 1e-2


def test_building_the_form_leaves_the_eager_model_unchanged():
    eager = _recognizer(SELF_CONDITIONED_CONFIG)
    before = {k: v.clone() for k, v in eager.state_dict().items()}
    for_inference(eager, "fp32")
    assert all(torch.equal(before[k], v) for k, v in eager.state_dict().items())
    with pytest.raises(ValueError, match="eval mode"):
        inference_module.InferenceNetwork(eager.network.train())


def test_ensembles_with_speed_views_keep_their_outputs():
    members = [_recognizer(SEPARABLE_CONFIG, seed) for seed in (3, 4)]
    ensemble = EnsembleRecognizer.of(members, speeds=(0.95, 1.0, 1.05)).eval()
    fast = for_inference(ensemble, "fp32")
    assert isinstance(fast, InferenceEnsemble) and len(fast.members) == 2
    assert all(isinstance(m, InferenceRecognizer) for m in fast.members)
    clips = _noise_clips()
    got = fast.log_probs_batch(clips)
    assert got[0].shape[1] == 6  # 2 members x 3 speeds
    assert_fp32_close(got, ensemble.log_probs_batch(clips))


def _starter(version: int) -> SpeechRecognizer | EnsembleRecognizer:
    registry = REPO_ROOT / "starter" / "registry"
    if not (registry / "an4-quartznet" / str(version)).is_dir():
        pytest.skip("the starter registry is not in this checkout")
    return load_model(Registry(registry), f"an4-quartznet@{version}")[0]


@pytest.mark.parametrize("version", [6, 7])
def test_fp32_form_of_the_starter_matches_its_eager_model(version, an4_clips):  # noqa: F811
    eager = _starter(version)
    fast = for_inference(eager, "fp32")
    assert_fp32_close(fast.log_probs_batch(an4_clips), eager.log_probs_batch(an4_clips))


def test_fp32_form_is_as_exact_as_the_eager_model(an4_clips):  # noqa: F811
    """Against float64 arithmetic on the same weights, the form errs no more than the eager model does."""
    eager = _starter(6)
    fast = for_inference(eager, "fp32")
    exact = copy.deepcopy(eager.network).double()
    lengths = torch.tensor([len(c) for c in an4_clips])
    audio = torch.zeros(len(an4_clips), int(lengths.max()))
    for i, clip in enumerate(an4_clips):
        audio[i, :len(clip)] = torch.from_numpy(clip)
    with torch.inference_mode():
        features, feature_lengths = eager.featurizer(audio, lengths)
        want, out_lengths = exact(features.double(), feature_lengths)
        outputs = {"eager": eager.network(features, feature_lengths)[0], "fast": fast.network(features, feature_lengths)[0]}
    errors = {}
    for name, got in outputs.items():
        errors[name] = max(float((got[i, :n].double() - want[i, :n]).abs().max()) for i, n in enumerate(out_lengths.tolist()))
    assert errors["fast"] <= 2 * errors["eager"] + 1e-5, errors


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_form_transcribes_the_starter_clips_like_fp32(an4_clips):  # noqa: F811
    eager = _starter(6)
    bf16 = for_inference(eager, "bf16")
    assert bf16.precision == "bf16" and bf16.network.dtype == torch.bfloat16
    got, want = bf16.log_probs_batch(an4_clips), eager.log_probs_batch(an4_clips)
    assert all(g.dtype == np.float32 for g in got)  # log-softmax runs in float32 at every precision
    assert [t.text for t in bf16.transcribe(an4_clips)] == [t.text for t in eager.transcribe(an4_clips)]
    # bf16 keeps 8 significant bits, so log-probs do move (and by whole units near -1000, which
    # no decoder looks at); what decoding sees, the best label of each frame, stays.
    assert _max_diff(got, want) > 1e-3, "this is not running in bf16"
    agree = np.mean(np.concatenate([g.argmax(-1) == w.argmax(-1) for g, w in zip(got, want)]))
    assert agree >= 0.99


def test_auto_precision_follows_the_hardware():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(PrecisionError, match="unknown precision"):
        resolve_precision("fp64", "cpu")
    if not cpu_has_native_fp16():
        with pytest.raises(PrecisionError, match="fp16 on CPU needs"):
            resolve_precision("fp16", "cpu")
    if not cpu_has_native_bf16():
        with pytest.raises(PrecisionError, match="bf16 needs"):
            resolve_precision("bf16", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(PrecisionError, match="no usable CUDA"):
            resolve_precision("auto", "cuda")


def test_int8_form_quantizes_the_channel_mixing_and_keeps_transcripts(an4_clips):  # noqa: F811
    from model.int8 import _Int8Linear, calibration_clips

    eager = _starter(6)
    int8 = for_inference(eager, "int8")
    assert int8.precision == "int8"
    quantized = [m for m in int8.modules() if isinstance(m, _Int8Linear)]
    assert len(quantized) == sum(1 for b in eager.network.blocks for s in b.sub) + sum(
        len(b.residual) for b in eager.network.blocks)
    assert [t.text for t in int8.transcribe(an4_clips)] == [t.text for t in eager.transcribe(an4_clips)]
    assert len(calibration_clips(16_000)) == 12


def test_int8_products_equal_exact_integer_arithmetic(an4_clips):  # noqa: F811
    """Every int8 product of the starter, on real speech, equals the exact integer sum requantized: within
    one output level (the kernel rounds its float requantization multiplier differently). Without VNNI,
    fbgemm's 16-bit pair sums saturate on full 8-bit inputs and land up to 39 levels off here."""
    from model.int8 import _Int8Linear

    int8 = for_inference(_starter(6), "int8")
    layers = [m for m in int8.modules() if isinstance(m, _Int8Linear)]
    inputs = {}

    def keep_input(layer, args) -> None:
        inputs.setdefault(layer, args[0].clone())

    hooks = [layer.register_forward_pre_hook(keep_input) for layer in layers]
    int8.log_probs_batch(an4_clips[:1])
    for hook in hooks:
        hook.remove()
    for layer in layers:
        qx = torch.quantize_per_tensor(inputs[layer], layer.in_scale, layer.in_zero, torch.quint8)
        qw, bias = torch.ops.quantized.linear_unpack(layer._packed)
        x = (qx.int_repr().double() - layer.in_zero) * layer.in_scale
        w = qw.int_repr().double() * qw.q_per_channel_scales().double()[:, None]
        exact = torch.round((x @ w.T + (0.0 if bias is None else bias.double())) / layer.out_scale) + layer.out_zero
        got = torch.ops.quantized.linear(qx, layer._packed, layer.out_scale, layer.out_zero).int_repr().double()
        assert (got - exact.clamp(0, 255)).abs().max() <= 1


def _an4_test_wer(model, speech_root) -> float:
    import json

    from model.audio import decode_audio
    from model.decoding import greedy_decode
    from training.metrics import word_char_error_rates

    rows = [json.loads(line) for line in (speech_root / "an4_test.json").read_text().splitlines()]
    clips = [decode_audio(speech_root / r["audio_filepath"], model.sample_rate).samples for r in rows]
    hyps = [greedy_decode(lp, model.vocabulary.labels, model.frame_duration_s).text
            for lp in model.log_probs_sorted(clips, 16)]
    return word_char_error_rates([model.vocabulary.normalize(r["text"]) for r in rows], hyps)["wer"]


def test_reduced_precisions_keep_the_starters_an4_test_wer(speech_root):
    """The default starter's AN4 test WER at bf16 and int8 stays within 0.3 points of fp32 (773 words:
    0.3 points is 2 words)."""
    from cli.main import STARTER_MODEL

    registry = REPO_ROOT / "starter" / "registry"
    if not (registry / STARTER_MODEL).is_dir():
        pytest.skip("the starter registry is not in this checkout")
    eager = load_model(Registry(registry), STARTER_MODEL)[0]
    fp32 = _an4_test_wer(for_inference(eager, "fp32"), speech_root)
    for precision in (["bf16"] if cpu_has_native_bf16() else []) + ["int8"]:
        wer = _an4_test_wer(for_inference(eager, precision), speech_root)
        assert abs(wer - fp32) <= 0.003, (precision, wer, fp32)


def test_squeeze_excite_means_without_the_mask_would_be_caught(monkeypatch, an4_clips):  # noqa: F811
    """SE averages over time: in a padded batch its mean must leave out the padded frames (0.3 off without)."""
    eager = _recognizer(SE_CONFIG)
    fast = for_inference(eager, "fp32")
    assert_fp32_close(fast.log_probs_batch(an4_clips), eager.log_probs_batch(an4_clips))
    unmasked = inference_module._SqueezeExcite.forward
    monkeypatch.setattr(inference_module._SqueezeExcite, "forward", lambda se, x, n, mask: unmasked(se, x, n, None))
    assert _max_diff(fast.log_probs_batch(an4_clips), eager.log_probs_batch(an4_clips)) > 1e-2


def test_int8_form_of_squeeze_excite_blocks(an4_clips):  # noqa: F811
    from model.int8 import _Int8Linear

    eager = _recognizer(SE_CONFIG)
    int8 = for_inference(eager, "int8")
    quantized = [m for m in int8.modules() if isinstance(m, _Int8Linear)]
    assert len(quantized) == sum(len(b.sub) + len(b.residual) for b in eager.network.blocks)
    # The SE gates stay float32; only the pointwise products are quantized (measured: 0.008).
    assert _max_diff(int8.log_probs_batch(an4_clips), eager.log_probs_batch(an4_clips)) < 0.1
