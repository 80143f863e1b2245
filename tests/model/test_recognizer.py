"""model.recognizer: RecognizerConfig round trip and frame arithmetic, and BatchInference's batching contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.decoding import Transcript, greedy_decode
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary

# A clip alone and the same clip zero-padded in a batch run the same float32 ops over the same valid
# samples (the featurizer and every conv mask the padding), but batched convolutions may sum in a
# different order: a few float32 ulps through ~10 layers, measured 5e-7 on these log-probs
# (magnitudes up to ~4). 1e-4 leaves a wide margin; padding leaking into valid frames (a broken
# mask or normalisation over padded frames) moves them by 1e-2 or more.
PADDING_ATOL = 1e-4

BLOCKS = (BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 2, 7, residual=True),
          BlockConfig(64, 1, 1, separable=False))


def _config(**features) -> RecognizerConfig:
    return RecognizerConfig(MelFeaturizerConfig(**features), QuartzNetConfig(BLOCKS, num_labels=28), Vocabulary())


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    torch.manual_seed(0)
    return SpeechRecognizer(_config()).eval()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Five clips of different lengths (0.15-0.8 s), not sorted by length."""
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8_000, 2_400, 12_800, 4_500, 6_173)]


@pytest.fixture(scope="module")
def alone(recognizer, clips) -> list[np.ndarray]:
    """Each clip's valid log-probs from the model's own forward on that clip alone (no padding)."""
    return [_alone(recognizer, clip) for clip in clips]


def _alone(model: SpeechRecognizer, clip: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        log_probs, lengths = model(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
    return log_probs[0, : int(lengths[0])].numpy()


# --- RecognizerConfig -------------------------------------------------------------------------------


def test_config_round_trips_through_its_dict() -> None:
    config = RecognizerConfig(MelFeaturizerConfig(sample_rate=8_000, num_mels=40),
                              QuartzNetConfig(BLOCKS, num_labels=4, feat_in=40, name="small"),
                              Vocabulary(("a", "b", "c", " ")))
    data = config.to_dict()
    assert data["sample_rate"] == 8_000 and data["vocabulary"] == ["a", "b", "c", " "]
    assert RecognizerConfig.from_dict(data) == config
    assert RecognizerConfig.from_dict(data).network.name == "small"  # name is not compared, so check it


def test_config_from_dict_refuses_a_vocabulary_that_does_not_fit_the_network() -> None:
    data = _config().to_dict()
    data["vocabulary"] = data["vocabulary"][:-1]
    with pytest.raises(ValueError, match="28 labels but the vocabulary has 27"):
        RecognizerConfig.from_dict(data)


def test_frame_duration_is_hop_times_subsampling_over_the_rate() -> None:
    assert _config().frame_duration_s == pytest.approx(160 * 2 / 16_000)  # the stock 20 ms
    strided = RecognizerConfig(MelFeaturizerConfig(sample_rate=8_000, window_stride_s=0.0125),
                               QuartzNetConfig((BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 1, 5, stride=2),
                                                BlockConfig(64, 1, 1, separable=False)), num_labels=28),
                               Vocabulary())
    assert strided.features.hop_length == 100 and strided.network.subsampling == 4
    assert strided.frame_duration_s == pytest.approx(100 * 4 / 8_000)


def test_recognizer_exposes_its_configs_rate_vocabulary_and_frame_duration(recognizer) -> None:
    assert recognizer.sample_rate == 16_000
    assert recognizer.vocabulary is recognizer.config.vocabulary
    assert recognizer.frame_duration_s == recognizer.config.frame_duration_s


# --- BatchInference ---------------------------------------------------------------------------------


def test_log_probs_batch_of_nothing_is_empty(recognizer) -> None:
    assert recognizer.log_probs_batch([]) == []


def test_log_probs_batch_equals_each_clip_run_alone(recognizer, clips, alone) -> None:
    batched = recognizer.log_probs_batch(clips)
    assert len(batched) == len(clips)
    for lp, want in zip(batched, alone):
        assert lp.dtype == np.float32 and lp.shape == want.shape  # only the valid frames come back
        assert lp.shape[1] == 29  # 28 labels + blank
        np.testing.assert_allclose(lp, want, atol=PADDING_ATOL)


def test_log_probs_batch_accepts_a_device_and_float64_clips(recognizer, clips) -> None:
    as_float64 = [clip.astype(np.float64) for clip in clips[:2]]
    for got, want in zip(recognizer.log_probs_batch(as_float64, device="cpu"), recognizer.log_probs_batch(clips[:2])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batch_size", [1, 2, 10])
def test_log_probs_sorted_returns_results_in_input_order(recognizer, clips, alone, batch_size) -> None:
    out = recognizer.log_probs_sorted(clips, batch_size)
    assert len(out) == len(clips)
    for lp, want in zip(out, alone):
        assert lp.shape == want.shape
        np.testing.assert_allclose(lp, want, atol=PADDING_ATOL)


def test_log_probs_sorted_batches_clips_of_similar_length(recognizer, clips, monkeypatch) -> None:
    seen: list[list[int]] = []
    original = type(recognizer).log_probs_batch

    def recording(self, batch, device=None):
        seen.append([len(c) for c in batch])
        return original(self, batch, device)

    monkeypatch.setattr(type(recognizer), "log_probs_batch", recording)
    recognizer.log_probs_sorted(clips, 2)
    assert seen == [[2_400, 4_500], [6_173, 8_000], [12_800]]


def test_transcribe_returns_one_greedy_transcript_per_clip(recognizer, clips) -> None:
    transcripts = recognizer.transcribe(clips)
    assert len(transcripts) == len(clips) and all(isinstance(t, Transcript) for t in transcripts)
    for transcript, lp in zip(transcripts, recognizer.log_probs_batch(clips)):
        assert transcript == greedy_decode(lp, recognizer.vocabulary.labels, recognizer.frame_duration_s)


def test_transcribe_runs_in_eval_mode_and_restores_training_mode(clips) -> None:
    torch.manual_seed(3)
    model = SpeechRecognizer(_config(dither=0.5))  # a large dither, so train-mode inference would differ
    model.eval()
    expected = model.transcribe(clips[:2])
    model.train()
    assert model.transcribe(clips[:2]) == expected
    assert model.training and model.featurizer.training
