"""Ensembles: CTC transcript likelihoods, member-candidate greedy decoding, the artifact round trip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.checkpoint import load_artifact, load_model, publish_model
from model.decoding import greedy_decode
from model.ensemble import EnsembleConfig, EnsembleRecognizer
from model.features import MelFeaturizerConfig
from model.quartznet import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import Registry
from model.rescoring import blank_frames, ctc_log_likelihood, ensemble_log_likelihood, mean_posteriors
from model.vocabulary import Vocabulary

LABELS = (" ", "a", "b")
BLANK = len(LABELS)


def brute_force_log_likelihood(log_probs: np.ndarray, ids: list[int]) -> float:
    """Sums the probability of every frame path that collapses to ``ids`` (CTC's definition)."""
    total = 0.0
    for path in itertools.product(range(log_probs.shape[1]), repeat=len(log_probs)):
        collapsed = [p for i, p in enumerate(path) if p != BLANK and (i == 0 or p != path[i - 1])]
        if collapsed == ids:
            total += float(np.exp(sum(log_probs[t, p] for t, p in enumerate(path))))
    return float(np.log(total)) if total > 0 else float("-inf")


def frames(*dists: dict[str, float]) -> np.ndarray:
    """(T, V+1) log-probs from per-frame {label: prob}; what is left goes to the blank ("")."""
    rows = []
    for dist in dists:
        row = np.full(len(LABELS) + 1, 1e-3)
        for label, p in dist.items():
            row[BLANK if label == "" else LABELS.index(label)] = p
        row[BLANK] += max(0.0, 1.0 - row.sum())
        rows.append(np.log(row / row.sum()))
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("ids", [[1, 2], [1, 1], [1, 0, 2], [], [2]])
def test_ctc_log_likelihood_sums_all_alignments(ids) -> None:
    rng = np.random.default_rng(len(ids))
    logits = rng.normal(size=(6, len(LABELS) + 1))
    log_probs = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
    assert ctc_log_likelihood(log_probs, ids, BLANK) == pytest.approx(brute_force_log_likelihood(log_probs, ids),
                                                                      abs=1e-4)


def test_a_transcript_too_long_for_the_frames_is_impossible() -> None:
    log_probs = frames({"a": 0.9}, {"": 0.9})
    assert ctc_log_likelihood(log_probs, [1, 1, 1], BLANK) == float("-inf")


# The members agree on "a b" but spike one frame apart, as independently trained models do.
EARLY = frames({"a": 0.9}, {}, {" ": 0.9}, {}, {"b": 0.9}, {}, {})
LATE = frames({}, {"a": 0.9}, {}, {" ": 0.9}, {}, {"b": 0.9}, {})


def test_shifted_members_agree_where_averaged_posteriors_delete_every_word() -> None:
    ensemble = np.stack([EARLY, LATE], axis=1)
    assert greedy_decode(EARLY, LABELS, 0.08).text == greedy_decode(LATE, LABELS, 0.08).text == "a b"
    # Why the ensemble never decodes the average: each member's blank outvotes the other's spike.
    assert greedy_decode(mean_posteriors(ensemble), LABELS, 0.08).text == ""
    result = greedy_decode(ensemble, LABELS, 0.08)
    assert result.text == "a b"
    assert [w.word for w in result.words] == ["a", "b"]
    assert [w.start_s for w in result.words] == [0.0, 0.32]  # the first member's timing


def test_disagreeing_members_pick_the_transcript_with_the_higher_mean_likelihood() -> None:
    # Member 0 reads "a b" with a weak "b"; member 1 hears "a" and only a trace of "b".
    weak_b = frames({"a": 0.9}, {}, {" ": 0.6}, {}, {"b": 0.55}, {}, {})
    no_b = frames({}, {"a": 0.9}, {}, {" ": 0.3}, {}, {"b": 0.35}, {})
    ensemble = np.stack([weak_b, no_b], axis=1)
    candidates = {greedy_decode(m, LABELS, 0.08).text for m in (weak_b, no_b)}
    assert candidates == {"a b", "a"}
    vocabulary = Vocabulary(LABELS)
    mean_ll = {text: np.mean([brute_force_log_likelihood(m, vocabulary.encode(text)) for m in (weak_b, no_b)])
               for text in candidates}
    expected = max(mean_ll, key=mean_ll.get)
    result = greedy_decode(ensemble, LABELS, 0.08)
    assert result.text == expected
    assert result.score == pytest.approx(mean_ll[expected], abs=1e-4)
    assert ensemble_log_likelihood(ensemble, expected, vocabulary) == pytest.approx(mean_ll[expected], abs=1e-4)
    # With member 1 alone, its own reading wins: the choice really depends on the members.
    assert greedy_decode(np.stack([no_b, no_b], axis=1), LABELS, 0.08).text == "a"


def test_endpointing_hears_speech_if_any_member_does() -> None:
    ensemble = np.stack([EARLY, LATE], axis=1)
    assert blank_frames(EARLY).tolist() == [False, True, False, True, False, True, True]
    assert blank_frames(ensemble).tolist() == [False, False, False, False, False, False, True]


def tiny(seed: int, labels: tuple[str, ...] | None = None, sample_rate: int = 16000) -> SpeechRecognizer:
    torch.manual_seed(seed)
    vocabulary = Vocabulary(labels) if labels else Vocabulary()
    cfg = RecognizerConfig(MelFeaturizerConfig(sample_rate=sample_rate), QuartzNetConfig(
        (BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 1, 7, residual=True), BlockConfig(64, 1, 1, separable=False)),
        num_labels=len(vocabulary.labels)), vocabulary)
    return SpeechRecognizer(cfg).eval()


def test_ensemble_outputs_each_members_log_probs_and_round_trips(tmp_path) -> None:
    members = [tiny(0), tiny(1)]
    ensemble = EnsembleRecognizer.of(members).eval()
    clips = [np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32),
             np.random.default_rng(1).normal(0, 0.1, 9000).astype(np.float32)]
    outputs = ensemble.log_probs_batch(clips)
    for i, member in enumerate(members):
        for clip_out, own in zip(outputs, member.log_probs_batch(clips)):
            assert clip_out.shape == (len(own), 2, 29)
            np.testing.assert_allclose(clip_out[:, i], own, atol=1e-5)
    registry = Registry(tmp_path / "registry")
    ref = publish_model(registry, "ens", ensemble, source="ensemble", dtype=torch.float16)
    loaded, _, _ = load_model(registry, str(ref))
    assert isinstance(loaded, EnsembleRecognizer) and len(loaded.members) == 2
    assert loaded.vocabulary == ensemble.vocabulary and loaded.frame_duration_s == ensemble.frame_duration_s
    for got, want in zip(loaded.log_probs_batch(clips), outputs):
        np.testing.assert_allclose(got, want, atol=0.05)  # fp16 storage
    assert [t.text for t in loaded.transcribe(clips)] == [greedy_decode(o, loaded.vocabulary.labels, 0.04).text
                                                          for o in loaded.log_probs_batch(clips)]
    assert isinstance(load_artifact(ref.path), EnsembleRecognizer)


def test_members_must_match() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleConfig((tiny(0).config,))
    with pytest.raises(ValueError, match="vocabulary"):
        EnsembleConfig((tiny(0).config, tiny(1, labels=(" ", "a", "b")).config))
    with pytest.raises(ValueError, match="8000 Hz"):
        EnsembleConfig((tiny(0).config, tiny(1, sample_rate=8000).config))
    unstrided = RecognizerConfig(MelFeaturizerConfig(), QuartzNetConfig(
        (BlockConfig(32, 1, 11), BlockConfig(64, 1, 1, separable=False)), num_labels=28), Vocabulary())
    with pytest.raises(ValueError, match="output frames"):
        EnsembleConfig((tiny(0).config, unstrided))
