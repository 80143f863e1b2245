"""Knowledge distillation (training.distill): the losses by hand, the teacher's cache, refusals, and a 2-worker run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from model.checkpoint import load_model, publish_model
from model.ensemble import EnsembleRecognizer
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import Registry
from model.vocabulary import Vocabulary
from tests.training.conftest import TINY_BLOCKS, write_config, write_manifest
from model.vocabulary import ENGLISH_LABELS as DEFAULT_LABELS
from training.distill import Teacher, TeacherTargets, kl_to_teacher, peak_frames, teacher_token_batch
from training.losses import fill_unlabelled


def _targets(log_probs: np.ndarray, ids=(), best_view: int = 0) -> TeacherTargets:
    views = log_probs if log_probs.ndim == 3 else log_probs[:, None]
    return TeacherTargets(torch.from_numpy(views.astype(np.float32)).to(torch.float16), tuple(ids), best_view)


# ---- the KL term, by hand ----


def test_kl_matches_a_hand_computation_on_two_frames():
    # One utterance, 2 valid frames (a third is padding), 2 classes. Teacher p, student q:
    #   frame 0: p = (0.5, 0.5), q = (0.25, 0.75) -> 0.5 ln 2 + 0.5 ln(2/3) = 0.143841
    #   frame 1: p = (1.0, 0.0), q = (0.5, 0.5)   -> ln 2 = 0.693147
    # summed over the utterance's 2 frames: 0.836988; a second utterance (1 frame, KL ln 2 as frame
    # 1) makes the batch mean (0.836988 + 0.693147) / 2 = 0.765068.
    student = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]],
                                      [[0.5, 0.5], [0.1, 0.9], [0.1, 0.9]]]))
    teacher = np.log(np.array([[0.5, 0.5], [1.0, 1e-30]]))
    one = kl_to_teacher(student[:1], torch.tensor([2]), [_targets(teacher)])
    assert float(one) == pytest.approx(0.836988, abs=4e-4)  # teacher stored in float16: 1e-3 relative
    two = kl_to_teacher(student, torch.tensor([2, 1]), [_targets(teacher), _targets(teacher[1:])])
    assert float(two) == pytest.approx(0.765068, abs=4e-4)


def test_temperature_softens_both_sides_and_scales_by_its_square():
    # T = 2 on log-probs (a, b): softmax((a, b) / 2). Teacher (ln 0.8, ln 0.2) -> (2/3, 1/3);
    # student (ln 0.2, ln 0.8) -> (1/3, 2/3). KL = (2/3) ln 2 + (1/3) ln(1/2) = (1/3) ln 2; x T^2 = 4.
    student = torch.log(torch.tensor([[[0.2, 0.8]]]))
    teacher = np.log(np.array([[0.8, 0.2]]))
    loss = kl_to_teacher(student, torch.tensor([1]), [_targets(teacher)], temperature=2.0)
    assert float(loss) == pytest.approx(4 * math.log(2) / 3, rel=2e-3)


def test_ensemble_targets_per_view_mean_and_best_view():
    # Two views that spike on different classes, one frame; the student is uniform.
    # per_view: mean of KL((1,0) || u) and KL((0,1) || u) = ln 2.  mean: KL((.5,.5) || u) = 0.
    # best_view 1: KL((0,1) || u) = ln 2.
    views = np.log(np.array([[[1.0, 1e-30], [1e-30, 1.0]]]))
    student = torch.log(torch.tensor([[[0.5, 0.5]]]))
    length = torch.tensor([1])
    assert float(kl_to_teacher(student, length, [_targets(views)], kind="per_view")) == pytest.approx(math.log(2), rel=1e-3)
    assert float(kl_to_teacher(student, length, [_targets(views)], kind="mean")) == pytest.approx(0.0, abs=1e-3)
    assert float(kl_to_teacher(student, length, [_targets(views, best_view=1)], kind="best_view")) == pytest.approx(
        math.log(2), rel=1e-3)
    with pytest.raises(ValueError, match="unknown distillation target"):
        kl_to_teacher(student, length, [_targets(views)], kind="max")


def test_kl_is_zero_when_the_student_is_the_teacher_and_has_its_gradient():
    log_probs = torch.log_softmax(torch.randn(2, 5, 4), dim=-1)
    targets = [_targets(log_probs[i].numpy()) for i in range(2)]
    student = log_probs.clone().requires_grad_(True)
    loss = kl_to_teacher(student, torch.tensor([5, 3]), targets)
    assert float(loss) == pytest.approx(0.0, abs=2e-3)  # float16 teacher
    other = torch.log_softmax(torch.randn(2, 5, 4), dim=-1).requires_grad_(True)
    kl_to_teacher(other, torch.tensor([5, 3]), targets).backward()
    assert other.grad[1, 3:].abs().max() == 0  # padding frames get no gradient
    assert other.grad[1, :3].abs().max() > 0


# ---- the token-level term ----

# Labels {a, b} and blank (index 2). Over 4 frames "a" peaks at frame 1 and "b" at frame 3.
_SPIKES = torch.log(torch.tensor([[0.05, 0.05, 0.9], [0.6, 0.2, 0.2], [0.05, 0.05, 0.9], [0.1, 0.7, 0.2]]))


def test_peak_frames_follow_the_viterbi_alignment():
    assert peak_frames(_SPIKES, (0, 1), blank=2).tolist() == [1, 3]
    # "b" held over two frames: its peak is the likelier of them.
    held = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.5, 0.4], [0.1, 0.8, 0.1]]))
    assert peak_frames(held, (0, 1), blank=2).tolist() == [0, 2]
    # "a a" needs a blank between the two: 3 frames hold it (a, blank, a), 2 do not.
    assert peak_frames(_SPIKES[:3], (0, 0), blank=2).tolist() == [0, 2]
    assert peak_frames(_SPIKES[:2], (0, 0), blank=2) is None
    assert peak_frames(_SPIKES, (), blank=2) is None


def _token_targets(at_peaks: np.ndarray, ids) -> TeacherTargets:
    """Targets carrying only the teacher's log-probs at its token peaks, (U, K, V+1)."""
    return TeacherTargets(torch.zeros(1, 1, at_peaks.shape[-1], dtype=torch.float16), tuple(ids), 0,
                          torch.from_numpy(np.log(at_peaks)).to(torch.float16))


def test_token_kl_matches_a_hand_computation():
    # The student's labels at its peaks, blank dropped and renormalised: frame 1 (0.75, 0.25),
    # frame 3 (0.125, 0.875). Two teacher views per token, averaged after the blank is dropped:
    #   "a": view 1 (0.25, 0.25 | blank 0.5) -> (0.5, 0.5); view 2 (0.9, 0.1 | 0) -> (0.9, 0.1);
    #        mean (0.7, 0.3): KL = 0.7 ln(0.7/0.75) + 0.3 ln(0.3/0.25) = 0.006400
    #   "b": both views (0, 1): KL = ln(1/0.875) = 0.133531
    # One utterance: 0.139931; with a second that cannot align (1 frame for 2 tokens) the batch
    # mean halves it: 0.069966.
    at_peaks = np.array([[[0.25, 0.25, 0.5], [0.9, 0.1, 1e-6]], [[1e-6, 0.5, 0.5], [1e-6, 0.9, 0.1]]])
    target = _token_targets(at_peaks, (0, 1))
    one = kl_to_teacher(_SPIKES[None], torch.tensor([4]), [target], kind="token")
    # The teacher is stored in float16: each log-prob is off by at most 2^-11 of itself (1.1e-3 for
    # ln 0.1), which moves view 2's renormalised (0.9, 0.1) by ~1e-4 and the KL by ~3e-5 (the
    # 1e-6 floors add ~2e-5): 1e-4 covers both.
    assert float(one) == pytest.approx(0.139931, abs=1e-4)
    batch = torch.stack([_SPIKES, _SPIKES])
    two = kl_to_teacher(batch, torch.tensor([4, 1]), [target, target], kind="token")
    assert float(two) == pytest.approx(float(one) / 2, rel=1e-6)


def test_token_kl_is_zero_for_a_matching_student_and_reaches_only_its_peak_frames():
    at_peaks = torch.stack([_SPIKES[1], _SPIKES[3]])[:, None].exp().numpy()
    target = _token_targets(at_peaks, (0, 1))
    assert float(kl_to_teacher(_SPIKES[None], torch.tensor([4]), [target], kind="token")) == pytest.approx(0, abs=1e-4)
    student = torch.log(torch.tensor([[[0.05, 0.05, 0.9], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9], [0.3, 0.4, 0.3]]]))
    student.requires_grad_(True)
    kl_to_teacher(student, torch.tensor([4]), [target], kind="token").backward()
    moved = (student.grad[0].abs().sum(dim=1) > 0).tolist()
    assert moved == [False, True, False, True]
    assert student.grad[0, :, 2].abs().max() == 0  # blank is left out


class _TwoViews:
    """A stand-in ensemble over labels {a, b}: two views that say "ab", spiking one frame apart."""

    vocabulary = Vocabulary(("a", "b"))
    frame_duration_s = 0.08

    def log_probs_sorted(self, clips, batch_size):
        first = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.7, 0.2], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]
        second = [[0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]
        return [np.log(np.array([first, second], dtype=np.float32)).transpose(1, 0, 2) for _ in clips]


def test_the_teacher_keeps_each_view_at_its_own_token_peaks_only_when_asked():
    clip = [np.zeros(1600, dtype=np.float32)]
    assert Teacher(_TwoViews()).targets(clip)[0].token_log_probs is None
    taught = Teacher(_TwoViews(), token_peaks=True).targets(clip)[0]
    assert taught.token_ids == (0, 1)
    views = taught.log_probs.float()
    want = torch.stack([views[[0, 2], 0], views[[1, 3], 1]], dim=1)  # (tokens, views, labels + blank)
    assert torch.equal(taught.token_log_probs.float(), want)


# ---- the pseudo-label term ----


def test_pseudo_labels_replace_only_the_unlabelled_rows():
    targets = torch.tensor([[3, 4, 5], [0, 0, 0]])
    lengths = torch.tensor([3, 0])
    teacher_ids, teacher_lengths = teacher_token_batch([_targets(np.zeros((2, 3)), ids=(7,)),
                                                        _targets(np.zeros((2, 3)), ids=(1, 2, 1, 2))], torch.device("cpu"))
    filled, filled_lengths = fill_unlabelled(targets, lengths, torch.tensor([True, False]), teacher_ids,
                                              teacher_lengths)
    assert filled.tolist() == [[3, 4, 5, 0], [1, 2, 1, 2]] and filled_lengths.tolist() == [3, 4]


def test_pseudo_label_ctc_equals_ctc_on_the_teachers_transcript_by_hand():
    # Two frames, labels {a, blank}: the transcript "a" has the alignments (a, a), (a, blank),
    # (blank, a): P = .6*.7 + .6*.3 + .4*.7 = 0.88, so the CTC loss is -ln 0.88 = 0.127833.
    from training.losses import ctc_loss

    log_probs = torch.log(torch.tensor([[[0.6, 0.4], [0.7, 0.3]]]))
    ids, lengths = teacher_token_batch([_targets(np.zeros((2, 2)), ids=(0,))], torch.device("cpu"))
    assert float(ctc_loss(log_probs, torch.tensor([2]), ids, lengths, blank_id=1)) == pytest.approx(0.127833, abs=1e-5)


# ---- the teacher ----


def _tiny_recognizer(seed: int, stride: int = 2, labels=DEFAULT_LABELS) -> SpeechRecognizer:
    torch.manual_seed(seed)
    blocks = tuple(BlockConfig(**{k: v for k, v in b.items()}) for b in TINY_BLOCKS)
    if stride != 2:
        blocks = (BlockConfig(32, 1, 11, stride=stride, residual=False),) + blocks[1:]
    config = QuartzNetConfig(blocks, num_labels=len(labels), name="tiny")
    return SpeechRecognizer(RecognizerConfig(MelFeaturizerConfig(), config, Vocabulary(tuple(labels)))).eval()


def test_the_teacher_computes_each_clean_clip_once(monkeypatch):
    members = [_tiny_recognizer(1), _tiny_recognizer(2)]
    teacher = Teacher(EnsembleRecognizer.of(members, speeds=(0.95, 1.0)).eval(), cache_items=3)
    clips = [np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32) for i, n in enumerate((8000, 12000))]
    first = teacher.targets(clips)
    assert teacher.computed == 2 and first[0].log_probs.shape[1:] == (4, 29)  # 2 members x 2 speeds
    again = teacher.targets(list(reversed(clips)))
    assert teacher.computed == 2 and again[1] is first[0]
    assert all(0 <= t.best_view < 4 for t in first)
    teacher.targets([clips[0] + 0.01, clips[0] + 0.02])  # two new clips: the cache holds at most 3
    assert teacher.computed == 4 and len(teacher._cache) == 3


# ---- refusals before Ray starts, and unlabelled lines ----


def _publish_teacher(registry: Path, name: str, model) -> str:
    return str(publish_model(Registry(registry), name, model, source="trained"))


@pytest.mark.parametrize("make, fragment", [
    (lambda: _tiny_recognizer(1, stride=4), "frame every 40 ms, the student every 20 ms"),
    (lambda: _tiny_recognizer(1, labels=list("abc")), "another vocabulary"),
])
def test_a_teacher_that_cannot_teach_is_refused_in_one_line(make, fragment, an4_pick, tmp_path, capfd):
    registry = tmp_path / "registry"
    spec = _publish_teacher(registry, "teacher", make())
    manifest = write_manifest(tmp_path / "train.json", an4_pick(4))
    config = write_config(tmp_path, manifest, distill={"teacher": spec},
                          run={"output_dir": str(tmp_path / "out"), "publish_name": "student"})
    code = main(["--registry", str(registry), "train", str(config)])
    err = capfd.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert "ray" not in err.lower() and not (tmp_path / "out" / "ray").exists()


def test_unlabelled_lines_are_refused_for_plain_training(an4_pick, tmp_path, capfd):
    rows = an4_pick(4)
    unlabelled = [json.dumps({"audio_filepath": r["audio_filepath"], "duration": r["duration"]}) for r in rows[2:]]
    manifest = write_manifest(tmp_path / "train.json", rows[:2], extra_lines=unlabelled)
    config = write_config(tmp_path, manifest, run={"output_dir": str(tmp_path / "out")})
    code = main(["--registry", str(tmp_path / "registry"), "train", str(config)])
    err = capfd.readouterr().err
    assert code == 2 and "2 lines" in err and "only used for distillation" in err
    assert len(err.strip().splitlines()) == 1


# ---- a real run ----


def test_two_worker_distillation_uses_unlabelled_audio_and_publishes(ray_cluster, an4_pick, tmp_path, capfd):
    registry = tmp_path / "registry"
    teacher_spec = _publish_teacher(registry, "teacher", EnsembleRecognizer.of(
        [_tiny_recognizer(1), _tiny_recognizer(2)], speeds=(0.95, 1.0)))
    rows = an4_pick(8)
    unlabelled = [json.dumps({"audio_filepath": r["audio_filepath"], "duration": r["duration"]}) for r in rows[6:]]
    manifest = write_manifest(tmp_path / "train.json", rows[:6], extra_lines=unlabelled)
    config = write_config(tmp_path, manifest, optim={"epochs": 2}, sync_bn=True,
                          augment={"speed_prob": 0.5, "narrowband_prob": 0.5},
                          distill={"teacher": teacher_spec, "kl_weight": 1.0, "pseudo_label_weight": 0.5,
                                   "temperature": 2.0, "targets": "best_view"},
                          run={"output_dir": str(tmp_path / "out"), "publish_name": "student", "log_every_steps": 1})
    code = main(["--registry", str(registry), "train", str(config), "--run-name", "distill",
                 "--set", "scaling.num_workers=2", "--set", "scaling.cpus_per_worker=1"])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    assert "2 unlabelled" in out
    model, ref, meta = load_model(Registry(registry), "student")
    assert isinstance(model, SpeechRecognizer) and meta["extra"]["distilled_from"] == teacher_spec
    assert meta["extra"]["train_config"]["distill"]["targets"] == "best_view"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "step"]
    assert losses and all(math.isfinite(v) for v in losses)
    code = main(["--registry", str(registry), "transcribe", rows[0]["audio_filepath"], "--model", "student"])
    assert code == 0, capfd.readouterr().err
