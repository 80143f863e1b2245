"""Turns the data section of a TrainConfig into train/validation utterance lists, reporting what was skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.errors import ASRError
from model.vocabulary import Vocabulary
from training.config import TrainConfig
from training.manifest import ManifestEntry, filter_by_duration, mix_manifests


class DataError(ASRError, ValueError):
    """No usable data (all lines bad, all filtered out); the message says why."""

    code = "bad_data"


@dataclass(frozen=True)
class Splits:
    train: list[ManifestEntry]
    val: list[ManifestEntry]


def speaker_of(entry: ManifestEntry) -> str:
    """The speaker id of an utterance: its audio file's parent folder name (AN4/LibriSpeech layout)."""
    return Path(entry.audio_filepath).parent.name


def load_splits(cfg: TrainConfig, vocabulary: Vocabulary, *, log: bool = True) -> Splits:
    """Reads, mixes and filters the manifests; holds out ``data.holdout_speakers`` for validation."""
    say = print if log else (lambda *a, **k: None)
    train, problems = mix_manifests([(m.path, m.weight) for m in cfg.data.train_manifests], seed=cfg.run.seed)
    for problem in problems[:20]:
        say(f"[data] skipped {problem}", flush=True)
    if len(problems) > 20:
        say(f"[data] ... and {len(problems) - 20} more bad manifest lines", flush=True)
    val: list[ManifestEntry] = []
    if cfg.data.val_manifests:
        val, val_problems = mix_manifests([(m.path, m.weight) for m in cfg.data.val_manifests], seed=cfg.run.seed)
        problems += val_problems
    holdout = set(cfg.data.holdout_speakers)
    if holdout:
        val += [e for e in train if speaker_of(e) in holdout]
        train = [e for e in train if speaker_of(e) not in holdout]
    train, report = filter_by_duration(train, max_duration_s=cfg.data.max_duration_s,
                                       min_duration_s=cfg.data.min_duration_s)
    # Utterances whose transcript has no character of the vocabulary cannot be CTC targets.
    no_text = [e for e in train if e.labelled and not vocabulary.encode(e.text)]
    train = [e for e in train if not e.labelled or vocabulary.encode(e.text)]
    unlabelled = sum(not e.labelled for e in train)
    if unlabelled and cfg.distill is None:
        raise DataError(f"{unlabelled} training lines have no text: unlabelled audio is only used for "
                        "distillation, where the teacher transcribes it (add a distill: section)")
    val = [e for e in val if e.labelled]  # validation scores against transcripts
    say(f"[data] train: {len(train)} utterances ({sum(e.duration_s for e in train) / 60:.1f} min, "
        f"{unlabelled} unlabelled); val: {len(val)}; skipped {len(problems)} bad manifest lines, "
        f"{report.num_skipped} outside [{cfg.data.min_duration_s}, {cfg.data.max_duration_s}] s, "
        f"{len(no_text)} with empty transcripts", flush=True)
    if not train:
        raise DataError("no usable training utterances after filtering (check the manifests and max_duration_s)")
    return Splits(train, val)
