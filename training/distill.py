"""Knowledge distillation: a registry model (one network or an ensemble) teaches the student on the fly.

The teacher runs in eval mode through its inference form on the *clean* version of each
training utterance: the waveform after speed perturbation (and concatenation), before the
corruptions the student alone gets (band limiting, dither, SpecAugment). Speed perturbation
therefore never needs a frame mapping: teacher and student hear the same samples, and with the
same front end and subsampling (checked before training starts) they emit the same number of
frames; the few models whose front ends differ by a frame are compared over the shorter length.

Each clean utterance's targets are computed once and kept (keyed by a hash of its samples, so a
clip heard again at the same speed is never recomputed): the teacher's frame log-probs, its best
transcript (greedy; an ensemble picks among its views' candidates by CTC likelihood), and, for
an ensemble, which view explains that transcript best.

Losses (``DistillConfig``), mixed with the usual CTC:

* frame-level KL(teacher || student) at temperature T, times T^2, summed over an utterance's valid
  frames and averaged over the batch: the same scale as the CTC loss (training.loop.ctc_loss).
  An ensemble's views spike at different frames, so three targets are offered: ``per_view`` (the
  mean of the KLs to each view), ``mean`` (KL to the averaged posteriors, which blurs spikes) and
  ``best_view`` (KL to the view that explains the ensemble's transcript best);
* or token-level KL (``token``), which needs no agreement on frames: each view and the student
  are force-aligned to the teacher's transcript, and at each token's peak frame the label
  distribution (blank left out) of the student is pulled towards the views' mean there;
* sequence-level CTC on the teacher's best transcript; for lines without a transcript (unlabelled
  audio) it replaces the ground-truth CTC.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from model.checkpoint import load_artifact
from model.decoding import greedy_decode
from model.inference import for_inference
from model.rescoring import ctc_log_likelihood

TARGET_KINDS = ("per_view", "mean", "best_view", "token")


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's view of one clean utterance.

    Attributes:
        log_probs: (T, K, V+1) float16 frame log-probs, K views (1 for a single network).
        token_ids: the best transcript, encoded.
        best_view: the view under which that transcript is most likely.
        token_log_probs: (U, K, V+1) float16, each view's log-probs at its own peak frame of each
            of the transcript's U tokens (``peak_frames``); None unless the teacher was asked for
            them, or when a view's frames cannot hold the transcript.
    """

    log_probs: torch.Tensor
    token_ids: tuple[int, ...]
    best_view: int
    token_log_probs: torch.Tensor | None = None


class Teacher:
    """A frozen model producing distillation targets, with a bounded cache of what it already heard."""

    def __init__(self, model, *, cache_items: int = 50_000, token_peaks: bool = False) -> None:
        self.model = model
        self.blank = model.vocabulary.blank_id
        self.cache_items = cache_items
        self.token_peaks = token_peaks  # also keep each view's log-probs at its token peaks ("token" targets)
        self._cache: OrderedDict[bytes, TeacherTargets] = OrderedDict()
        self.computed = 0  # targets computed (not served from the cache), for the logs

    @classmethod
    def load(cls, folder: str | Path, *, precision: str = "auto", device: torch.device | str = "cpu",
             cache_items: int = 50_000, token_peaks: bool = False) -> "Teacher":
        """The teacher from an artifact folder, as its inference form on ``device``."""
        return cls(for_inference(load_artifact(Path(folder)), precision, device), cache_items=cache_items,
                   token_peaks=token_peaks)

    @property
    def frame_duration_s(self) -> float:
        return self.model.frame_duration_s

    def targets(self, clips: list[np.ndarray]) -> list[TeacherTargets]:
        """Targets for mono float32 clips at the teacher's sample rate, computing only those not cached."""
        keys = [hashlib.blake2b(np.ascontiguousarray(c, dtype=np.float32).tobytes(), digest_size=16).digest()
                for c in clips]
        missing = sorted({i for i, key in enumerate(keys) if key not in self._cache}, key=lambda i: len(clips[i]))
        if missing:
            outputs = self.model.log_probs_sorted([clips[i] for i in missing], batch_size=16)
            for i, log_probs in zip(missing, outputs):
                self._store(keys[i], self._describe(log_probs))
        found = []
        for key in keys:
            self._cache.move_to_end(key)
            found.append(self._cache[key])
        return found

    def _describe(self, log_probs: np.ndarray) -> TeacherTargets:
        views = log_probs if log_probs.ndim == 3 else log_probs[:, None]
        transcript = greedy_decode(log_probs, self.model.vocabulary.labels, self.frame_duration_s)
        ids = tuple(self.model.vocabulary.encode(transcript.text))
        best = 0
        if views.shape[1] > 1:
            best = int(np.argmax([ctc_log_likelihood(views[:, k], ids, self.blank) for k in range(views.shape[1])]))
        views = torch.from_numpy(np.ascontiguousarray(views))
        self.computed += 1
        at_peaks = _at_token_peaks(views, ids, self.blank) if self.token_peaks else None
        return TeacherTargets(views.to(torch.float16), ids, best, at_peaks)

    def _store(self, key: bytes, targets: TeacherTargets) -> None:
        self._cache[key] = targets
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)


def kl_to_teacher(student_log_probs: torch.Tensor, student_lengths: torch.Tensor, targets: list[TeacherTargets],
                  *, kind: str = "per_view", temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(teacher || student) summed over each utterance's valid frames, averaged over the batch.

    Both distributions are softened at temperature T first.

    Args:
        student_log_probs: (B, T, V+1) log-probs of the student's head.
        student_lengths: (B,) its valid frames.
        targets: the teacher's, one per item; frames past the shorter of the two are ignored.
        kind: how an ensemble's K views become one target (module docstring).
        temperature: T > 0; 1 keeps the distributions as they are.
    """
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown distillation target {kind!r}; choose one of {', '.join(TARGET_KINDS)}")
    if kind == "token":
        return token_kl(student_log_probs, student_lengths, targets, temperature=temperature)
    total = student_log_probs.new_zeros(())
    for i, target in enumerate(targets):
        n = min(int(student_lengths[i]), target.log_probs.shape[0])
        if n == 0:
            continue
        student = torch.log_softmax(student_log_probs[i, :n].float() / temperature, dim=-1)  # (n, V+1)
        views = target.log_probs[:n].to(student.device).float()  # (n, K, V+1)
        if kind == "best_view":
            views = views[:, target.best_view:target.best_view + 1]
        teacher = torch.log_softmax(views / temperature, dim=-1)
        if kind == "mean":
            teacher = torch.logsumexp(teacher, dim=1, keepdim=True) - np.log(teacher.shape[1])
        per_view = (teacher.exp() * (teacher - student[:, None])).sum(-1)  # (n, K)
        total = total + per_view.mean(dim=1).sum()
    return total * temperature**2 / max(len(targets), 1)


def peak_frames(log_probs: torch.Tensor, token_ids: tuple[int, ...], blank: int) -> torch.Tensor | None:
    """Each token's frame in the Viterbi CTC alignment of ``token_ids``: its likeliest frame within its run.

    ``log_probs`` is one utterance's (T, V+1). None when there are no tokens, or when T frames
    cannot hold them (CTC needs a blank between repeated labels).
    """
    if not token_ids:
        return None
    scores = log_probs.detach().float().cpu().contiguous()  # a few hundred frames: CPU is quick enough
    try:
        path, _ = AF.forced_align(scores[None], torch.tensor([token_ids], dtype=torch.int32), blank=blank)
    except RuntimeError:  # torchaudio's "targets length is too long for CTC"
        return None
    path, scores = path[0].tolist(), scores.numpy()
    frames, token, previous = [0] * len(token_ids), -1, blank
    for t, label in enumerate(path):
        if label != blank and label != previous:  # a new token's run starts
            token += 1
            frames[token] = t
        elif label != blank and scores[t, label] > scores[frames[token], label]:
            frames[token] = t
        previous = label
    return torch.tensor(frames)


def _at_token_peaks(views: torch.Tensor, token_ids: tuple[int, ...], blank: int) -> torch.Tensor | None:
    """(T, K, V+1) log-probs -> (U, K, V+1): each view at its own peak frame of each token; None if one cannot align."""
    rows = []
    for k in range(views.shape[1]):
        frames = peak_frames(views[:, k], token_ids, blank)
        if frames is None:
            return None
        rows.append(views[frames, k])
    return torch.stack(rows, dim=1).to(torch.float16)


def token_kl(student_log_probs: torch.Tensor, student_lengths: torch.Tensor, targets: list[TeacherTargets],
             *, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(teacher || student) over the labels at each token's peak, summed per utterance, batch mean.

    The student is force-aligned to the teacher's transcript on its own frames, so the two never
    need to spike at the same frame. At a token's peak the student's label distribution with
    blank left out, softened at T, is compared with the mean over the teacher's views of theirs
    at their own peaks of that token. Items whose transcript does not fit the student's frames,
    or that have no token peaks, add nothing (they still count in the batch mean).
    """
    blank = student_log_probs.shape[-1] - 1
    total = student_log_probs.new_zeros((), dtype=torch.float32)
    for i, target in enumerate(targets):
        if target.token_log_probs is None:
            continue
        student = student_log_probs[i, :int(student_lengths[i])]
        frames = peak_frames(student, target.token_ids, blank)
        if frames is None:
            continue
        ours = torch.log_softmax(student[frames.to(student.device), :blank].float() / temperature, dim=-1)
        views = target.token_log_probs[:, :, :blank].to(student.device).float()
        theirs = torch.softmax(views / temperature, dim=-1).mean(dim=1)  # (U, V)
        total = total + (torch.xlogy(theirs, theirs) - theirs * ours).sum()
    return total * temperature**2 / max(len(targets), 1)


def teacher_token_batch(targets: list[TeacherTargets], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The teachers' transcripts as a padded (B, U) id tensor and (B,) lengths, like a Batch's targets."""
    lengths = torch.tensor([len(t.token_ids) for t in targets], dtype=torch.int64)
    ids = torch.zeros(len(targets), max(1, int(lengths.max()) if len(targets) else 1), dtype=torch.int64)
    for i, target in enumerate(targets):
        ids[i, :len(target.token_ids)] = torch.tensor(target.token_ids, dtype=torch.int64)
    return ids.to(device), lengths.to(device)
