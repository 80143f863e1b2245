"""Ensembles: CTC transcript likelihoods, member-candidate greedy decoding, speed views, the artifact round trip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.audio import change_speed
from model.checkpoint import artifact_files, load_artifact, load_model, publish_model
from model.decoding import greedy_decode
import model.ensemble as ensemble_module
from model.ensemble import EnsembleConfig, EnsembleRecognizer, onto_frames
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import Registry
from model.rescoring import ctc_log_likelihood, ensemble_log_likelihood, mean_posteriors
from model.segments import blank_frames
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
    with pytest.raises(ValueError, match="at least 2 members, or a speed"):
        EnsembleConfig((tiny(0).config,))
    with pytest.raises(ValueError, match="vocabulary"):
        EnsembleConfig((tiny(0).config, tiny(1, labels=(" ", "a", "b")).config))
    with pytest.raises(ValueError, match="8000 Hz"):
        EnsembleConfig((tiny(0).config, tiny(1, sample_rate=8000).config))
    unstrided = RecognizerConfig(MelFeaturizerConfig(), QuartzNetConfig(
        (BlockConfig(32, 1, 11), BlockConfig(64, 1, 1, separable=False)), num_labels=28), Vocabulary())
    with pytest.raises(ValueError, match="output frames"):
        EnsembleConfig((tiny(0).config, unstrided))


def test_batched_ensemble_likelihood_is_the_mean_of_the_views() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(9, 3, len(LABELS) + 1))
    log_probs = (logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))).astype(np.float32)
    vocabulary = Vocabulary(LABELS)
    for text in ("a b", "a", "", "b b a"):
        ids = vocabulary.encode(text)
        want = np.mean([ctc_log_likelihood(log_probs[:, k], ids, BLANK) for k in range(3)])
        assert ensemble_log_likelihood(log_probs, text, vocabulary) == pytest.approx(want, abs=1e-4)
    assert ensemble_log_likelihood(log_probs[:2], "a b a b", vocabulary) == float("-inf")


# A view to stretch or shrink: "a", " " and "b" spike at frames 1, 3 and 4; frame 2 is the surest blank.
SPIKY = frames({"": 0.6, "a": 0.3}, {"a": 0.9}, {"": 0.99}, {" ": 0.9}, {"b": 0.9}, {"": 0.8})


@pytest.mark.parametrize("target", [3, 4, 5, 6, 7, 8, 11, 12])
def test_onto_frames_changes_the_length_at_blank_frames_and_keeps_every_spike(target) -> None:
    view = torch.from_numpy(SPIKY)
    out = onto_frames(view, target)
    assert out.shape == (target, len(LABELS) + 1)
    rows = {tuple(row) for row in out.numpy().round(5)}
    assert rows <= {tuple(row) for row in SPIKY.round(5)}  # frames are only dropped or copied
    assert greedy_decode(out.numpy(), LABELS, 0.08).text == "a b"
    if target == 5:  # one frame dropped: the surest blank (frame 2), not a spike
        np.testing.assert_array_equal(out.numpy(), SPIKY[[0, 1, 3, 4, 5]])
    if target == 7:  # one frame copied: the surest blank again
        np.testing.assert_array_equal(out.numpy(), SPIKY[[0, 1, 2, 2, 3, 4, 5]])
    assert onto_frames(view, 6) is view


def test_onto_frames_of_an_empty_view_is_silence() -> None:
    out = onto_frames(torch.zeros(0, 4), 3)
    assert out.shape == (3, 4)
    assert greedy_decode(out.numpy(), LABELS, 0.08).text == ""
    assert onto_frames(torch.from_numpy(SPIKY), 0).shape == (0, 4)


def test_speed_views_run_each_member_on_speed_changed_audio(tmp_path) -> None:
    members = [tiny(0), tiny(1)]
    ensemble = EnsembleRecognizer.of(members, speeds=(0.9, 1.0, 1.1)).eval()
    assert ensemble.config.view_speeds == (1.0, 0.9, 1.1)
    clips = [np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32),
             np.random.default_rng(1).normal(0, 0.1, 7000).astype(np.float32)]
    outputs = ensemble.log_probs_batch(clips)
    for clip, out in zip(clips, outputs):
        own = [m.log_probs_batch([clip])[0] for m in members]
        assert out.shape == (len(own[0]), 6, 29)  # 2 members x 3 speeds, on the speed-1.0 frames
        for k, speed in enumerate(ensemble.config.view_speeds):
            for i, member in enumerate(members):
                # The padded batch's resampling equals resampling the clip alone.
                alone = member.log_probs_batch([change_speed(clip, speed, 16000)])[0]
                want = onto_frames(torch.from_numpy(alone), len(own[i])).numpy()
                np.testing.assert_allclose(out[:, k * 2 + i], want, atol=1e-4)
    single = EnsembleRecognizer.of([members[0]], speeds=(1.0, 1.05)).eval()
    assert single.log_probs_batch(clips)[0].shape[1] == 2
    registry = Registry(tmp_path / "registry")
    loaded, _, _ = load_model(registry, str(publish_model(registry, "tta", ensemble, source="ensemble")))
    assert loaded.config.speeds == (0.9, 1.0, 1.1)
    for got, want in zip(loaded.log_probs_batch(clips), outputs):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("inference_form", [False, True], ids=["eager", "inference form"])
def test_members_with_one_front_end_featurize_each_batch_once(monkeypatch, inference_form) -> None:
    from model.features import MelFeaturizer
    from model.inference import for_inference

    members = [tiny(0), tiny(1), tiny(2)]
    ensemble = EnsembleRecognizer.of(members, speeds=(1.0, 1.1)).eval()
    ensemble = for_inference(ensemble, "fp32") if inference_form else ensemble
    clips = [np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32) for i, n in enumerate((16000, 7000))]
    calls = []
    featurize = MelFeaturizer.forward
    monkeypatch.setattr(MelFeaturizer, "forward", lambda self, *a: calls.append(self) or featurize(self, *a))
    shared = ensemble.log_probs_batch(clips)
    assert len(calls) == 1  # both speeds share one pass here, and all three members its features
    # A member whose filterbank differs (an imported model can carry its own) keeps its own front end.
    with torch.no_grad():
        ensemble.members[2].featurizer.fb[..., ::2] *= 2  # not a plain scale, which normalisation cancels
    calls.clear()
    separate = ensemble.log_probs_batch(clips)
    assert len(calls) == 3
    for got, want in zip(separate, shared):
        np.testing.assert_array_equal(got[:, [0, 1, 3, 4]], want[:, [0, 1, 3, 4]])
        assert not np.allclose(got[:, [2, 5]], want[:, [2, 5]], atol=1e-3)  # views: speed-major, member-minor


def test_speeds_share_a_forward_pass_only_in_small_batches(monkeypatch) -> None:
    ensemble = EnsembleRecognizer.of([tiny(0), tiny(1)], speeds=(0.9, 1.0, 1.1)).eval()
    clips = [np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32) for i, n in enumerate((16000, 5000, 11000))]
    assert ensemble._speed_groups([16000, 17800, 14600], 3) == [[0, 1, 2]]
    assert ensemble._speed_groups([16000 * 60, 17800 * 60, 14600 * 60], 3) == [[0], [1], [2]]
    together = ensemble.log_probs_batch(clips)
    monkeypatch.setattr(ensemble_module, "_STACKED_AUDIO_S", 0.5)
    assert ensemble._speed_groups([16000, 17800, 14600], 3) == [[0], [1], [2]]
    for got, want in zip(ensemble.log_probs_batch(clips), together):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_artifacts_without_speeds_hear_speed_one_and_bad_speeds_are_refused() -> None:
    config = EnsembleRecognizer.of([tiny(0), tiny(1)]).config.to_dict()
    del config["speeds"]  # as written before speed views existed
    assert EnsembleConfig.from_dict(config).speeds == (1.0,)
    member = (tiny(0).config,)
    with pytest.raises(ValueError, match="must include 1.0"):
        EnsembleConfig(member, (0.9, 1.1))
    with pytest.raises(ValueError, match="must not repeat"):
        EnsembleConfig(member, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"\[0.5, 2\]"):
        EnsembleConfig(member, (1.0, 3.0))
    with pytest.raises(ValueError, match="list of numbers"):
        EnsembleConfig.from_dict({**config, "speeds": "fast"})
