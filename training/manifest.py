"""NeMo JSON-lines manifests: reading them, mixing several by weight, and filtering by duration."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_REQUIRED_KEYS = ("audio_filepath", "duration")


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance of a manifest.

    Attributes:
        audio_filepath: absolute path (relative manifest paths resolved against the manifest's folder).
        duration_s: length of the audio in seconds, as the manifest states it.
        text: the transcript, unnormalised; None for a line without one (unlabelled audio, which
            only distillation can use: its teacher provides the transcript).
    """

    audio_filepath: str
    duration_s: float
    text: str | None

    @property
    def labelled(self) -> bool:
        return self.text is not None


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest line that was skipped: where it is and why (one line)."""

    manifest: str
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line_number}: {self.reason}"


@dataclass(frozen=True)
class DurationFilterReport:
    """How many entries :func:`filter_by_duration` dropped, by reason."""

    num_too_short: int
    num_too_long: int

    @property
    def num_skipped(self) -> int:
        return self.num_too_short + self.num_too_long


def read_manifest(path: str | os.PathLike) -> tuple[list[ManifestEntry], list[ManifestProblem]]:
    """Reads a NeMo manifest: one JSON object per line with audio_filepath, duration and (optionally) text.

    Bad lines (invalid JSON, not an object, missing or mistyped keys, non-positive
    duration, audio file not found) are skipped and reported; blank lines are ignored.

    Args:
        path: the manifest file.

    Returns:
        (entries, problems), entries in file order.

    Raises:
        FileNotFoundError: the manifest itself does not exist.
    """
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    entries: list[ManifestEntry] = []
    problems: list[ManifestProblem] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            entry_or_reason = _parse_line(line, base_dir)
            if isinstance(entry_or_reason, str):
                problems.append(ManifestProblem(path, line_number, entry_or_reason))
            else:
                entries.append(entry_or_reason)
    return entries, problems


def _parse_line(line: str, base_dir: str) -> ManifestEntry | str:
    """A ManifestEntry, or a one-line reason the line is unusable."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [key for key in _REQUIRED_KEYS if key not in record]
    if missing:
        return f"missing key(s): {', '.join(missing)}"
    audio, duration, text = record["audio_filepath"], record["duration"], record.get("text")
    if not isinstance(audio, str) or not audio:
        return "audio_filepath must be a non-empty string"
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        return f"duration must be a number, got {duration!r}"
    if duration <= 0:
        return f"duration must be positive, got {duration}"
    if text is not None and not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    audio_path = audio if os.path.isabs(audio) else os.path.join(base_dir, audio)
    if not os.path.isfile(audio_path):
        return f"audio file not found: {audio_path}"
    return ManifestEntry(os.path.normpath(audio_path), float(duration), text)


def mix_manifests(specs: Sequence[tuple[str | os.PathLike, float]], *, seed: int = 0,
                  ) -> tuple[list[ManifestEntry], list[ManifestProblem]]:
    """Reads several manifests and mixes them with repeat weights.

    A weight is a repeat factor: 2.0 lists each entry twice, 0.5 keeps a random half
    (drawn without replacement), 1.5 lists every entry once plus a random half again.

    Args:
        specs: (manifest path, weight >= 0) pairs.
        seed: seeds the draw for fractional weights, so every rank mixes identically.

    Returns:
        (entries, problems) over all manifests, manifests in the given order.

    Raises:
        ValueError: a negative or non-finite weight.
    """
    rng = np.random.default_rng(seed)
    entries: list[ManifestEntry] = []
    problems: list[ManifestProblem] = []
    for path, weight in specs:
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"manifest weight must be a finite number >= 0, got {weight} for {path}")
        found, bad = read_manifest(path)
        problems.extend(bad)
        whole, fraction = divmod(weight, 1.0)
        entries.extend(found * int(whole))
        num_extra = round(fraction * len(found))
        if num_extra:
            picked = np.sort(rng.choice(len(found), size=num_extra, replace=False))
            entries.extend(found[i] for i in picked)
    return entries, problems


def filter_by_duration(entries: Sequence[ManifestEntry], *, max_duration_s: float | None = None,
                       min_duration_s: float = 0.0) -> tuple[list[ManifestEntry], DurationFilterReport]:
    """Keeps entries with ``min_duration_s <= duration_s <= max_duration_s``.

    Args:
        entries: manifest entries.
        max_duration_s: longest kept utterance in seconds; None keeps any length.
        min_duration_s: shortest kept utterance in seconds. (Default: 0.0)

    Returns:
        (kept entries in order, counts of what was dropped).
    """
    kept: list[ManifestEntry] = []
    too_short = too_long = 0
    for entry in entries:
        if entry.duration_s < min_duration_s:
            too_short += 1
        elif max_duration_s is not None and entry.duration_s > max_duration_s:
            too_long += 1
        else:
            kept.append(entry)
    return kept, DurationFilterReport(too_short, too_long)
