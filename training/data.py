"""Training data: NeMo JSON-lines manifests, the utterance dataset, padding collate and duration bucketing."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from model.audio import AudioError, decode_audio
from training.augment import AugmentConfig, add_dither, band_limit, choose_speed_rate, speed_perturb

# Silence between an utterance and the one concatenated to it (augment.concat_prob), in seconds.
_CONCAT_GAP_S = (0.05, 0.3)

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


class Utterance(NamedTuple):
    """One decoded, augmented and encoded training example.

    Attributes:
        audio: samples at the dataset's rate, shape (L,), float32.
        target_ids: encoded transcript, shape (U,), int64 (empty for unlabelled audio).
        clean: the same utterance before band limiting and dither (what a distillation teacher
            hears; same length as ``audio``), or None when the dataset does not keep it.
        labelled: False for a manifest line without text.
    """

    audio: np.ndarray
    target_ids: np.ndarray
    clean: np.ndarray | None = None
    labelled: bool = True


class Batch(NamedTuple):
    """A padded batch: (audio, audio_lengths, targets, target_lengths, num_dropped, clean, labelled).

    Attributes:
        audio: zero-padded samples, shape (B, Lmax), float32.
        audio_lengths: valid samples per item, shape (B,), int64.
        targets: padded label ids, shape (B, Umax), int64 (padding is 0; read only up to
            ``target_lengths``).
        target_lengths: labels per item, shape (B,), int64.
        num_dropped: items whose audio could not be decoded and were left out.
        clean: the items' clean versions as numpy arrays (distillation), or None.
        labelled: (B,) bool, False where the manifest line had no text.
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    num_dropped: int
    clean: list[np.ndarray] | None = None
    labelled: torch.Tensor | None = None


class ManifestDataset(Dataset):
    """Decodes, speed-perturbs and encodes manifest entries on demand.

    An entry whose audio cannot be decoded yields None instead of raising, so one bad
    file never ends an epoch; :func:`collate` drops it and counts it. Randomness comes
    from ``numpy.random.default_rng((seed, epoch, index))``: the same item in the same
    epoch is perturbed identically whichever loader worker fetches it.

    With ``DataLoader(persistent_workers=True)`` workers keep the epoch they were started
    with; call :meth:`set_epoch` before creating each epoch's iterator and leave
    persistent workers off, or augmentation repeats across epochs.

    Args:
        entries: the utterances.
        encode: transcript -> label ids (the vocabulary's encoder).
        sample_rate: rate the audio is decoded to, in Hz. (Default: 16000)
        augment: waveform augmentation; None means none (use None for evaluation).
        seed: base seed of the per-item generators. (Default: 0)
        keep_clean: also return each utterance before band limiting and dither (distillation).
    """

    def __init__(self, entries: Sequence[ManifestEntry], *, encode: Callable[[str], list[int]],
                 sample_rate: int = 16_000, augment: AugmentConfig | None = None, seed: int = 0,
                 keep_clean: bool = False) -> None:
        self.entries = list(entries)
        self.keep_clean = keep_clean
        self.encode = encode
        self.sample_rate = sample_rate
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        if augment is not None and augment.concat_prob > 0:
            # Concatenation partners are never longer than the utterance itself, so a batch planned
            # from manifest durations grows at most twofold (plus the gap).
            durations = np.array([e.duration_s for e in self.entries], dtype=np.float64)
            self._by_duration = np.argsort(durations, kind="stable")
            self._sorted_durations = durations[self._by_duration]
            self._rank = np.empty(len(self.entries), dtype=np.int64)
            self._rank[self._by_duration] = np.arange(len(self.entries))

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random perturbations :meth:`__getitem__` draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Utterance | None:
        entry = self.entries[index]
        samples = self._decode(index)
        if samples is None:
            return None
        text, clean = entry.text, samples
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            clean, samples = self._perturb(samples, rng)
            # Drawn only when enabled, so runs without it keep their random streams. Unlabelled
            # audio is never concatenated: the pair would have half a transcript.
            if (self.augment.concat_prob > 0 and entry.labelled and rng.random() < self.augment.concat_prob):
                partner_index = self._concat_partner(index, rng)
                partner = None if partner_index is None else self._decode(partner_index)
                if partner is not None and self.entries[partner_index].labelled:
                    gap = np.zeros(int(rng.uniform(*_CONCAT_GAP_S) * self.sample_rate), dtype=np.float32)
                    partner_clean, partner_samples = self._perturb(partner, rng)
                    clean = np.concatenate([clean, gap, partner_clean])
                    samples = np.concatenate([samples, gap, partner_samples])
                    text = f"{text} {self.entries[partner_index].text}"
            samples = add_dither(samples, self.augment.dither, rng)
        target_ids = np.asarray(self.encode(text) if text is not None else [], dtype=np.int64)
        return Utterance(samples, target_ids, clean if self.keep_clean else None, entry.labelled)

    def _concat_partner(self, index: int, rng: np.random.Generator) -> int | None:
        """A uniformly random other entry no longer than ``index``'s; None if there is none."""
        not_longer = int(np.searchsorted(self._sorted_durations, self.entries[index].duration_s, side="right"))
        if not_longer < 2:
            return None
        pick = int(rng.integers(not_longer - 1))
        if pick >= self._rank[index]:  # skip the utterance itself
            pick += 1
        return int(self._by_duration[pick])

    def _decode(self, index: int) -> np.ndarray | None:
        try:
            return decode_audio(self.entries[index].audio_filepath, self.sample_rate).samples
        except AudioError:
            return None

    def _perturb(self, samples: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(clean, corrupted): speed-perturbed, then (the second only) band-limited."""
        rate = choose_speed_rate(self.augment, rng)
        if rate != 1.0:
            samples = speed_perturb(samples, rate, self.sample_rate)
        clean = samples
        # Drawn only when enabled, so runs without it keep their random streams.
        if self.augment.narrowband_prob > 0 and rng.random() < self.augment.narrowband_prob:
            samples = band_limit(samples, self.sample_rate, self.augment.narrowband_rate_hz)
        return clean, samples


def collate(batch: Sequence[Utterance | None]) -> Batch:
    """Pads a list of utterances into tensors, dropping the Nones of undecodable audio.

    Args:
        batch: what :class:`ManifestDataset` returned for each index of a batch.

    Returns:
        A :class:`Batch`. If every item was dropped its tensors have B = 0; under DDP the
        loop must still take part in the step (e.g. with a zero loss) so ranks stay in step.
    """
    items = [item for item in batch if item is not None]
    num_dropped = len(batch) - len(items)
    audio_lengths = torch.tensor([len(item.audio) for item in items], dtype=torch.int64)
    target_lengths = torch.tensor([len(item.target_ids) for item in items], dtype=torch.int64)
    max_samples = int(audio_lengths.max()) if items else 0
    max_labels = int(target_lengths.max()) if items else 0
    audio = torch.zeros(len(items), max_samples, dtype=torch.float32)
    targets = torch.zeros(len(items), max_labels, dtype=torch.int64)
    for row, item in enumerate(items):
        audio[row, :len(item.audio)] = torch.from_numpy(np.asarray(item.audio, dtype=np.float32))
        targets[row, :len(item.target_ids)] = torch.from_numpy(item.target_ids)
    keep_clean = bool(items) and all(item.clean is not None for item in items)
    clean = [np.asarray(item.clean, dtype=np.float32) for item in items] if keep_clean else None
    labelled = torch.tensor([item.labelled for item in items], dtype=torch.bool)
    return Batch(audio, audio_lengths, targets, target_lengths, num_dropped, clean, labelled)


class DurationBucketSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, reshuffled each epoch and sharded across ranks.

    Each epoch: indices are sorted by duration and cut into ``num_buckets`` buckets of equal
    count; each bucket is shuffled and cut into batches (``batch_size`` items, or as many
    as fit ``max_batch_audio_s`` of *padded* audio, i.e. items x longest duration); the
    batch order is shuffled; rank ``r`` takes batches ``r, r + W, r + 2W, ...``. All ranks
    compute the same list from (seed, epoch), so their shards are disjoint. With
    ``drop_uneven=True`` the at most W - 1 trailing batches that would give ranks unequal
    counts are dropped (they differ every epoch); otherwise batches from the start of the
    list are repeated to fill the last round, which suits evaluation.

    Use as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)``.

    Args:
        durations: seconds per dataset index.
        batch_size: items per batch; with ``max_batch_audio_s`` also set, the most items per batch.
        max_batch_audio_s: cap on items x longest item per batch, in seconds; an item
            longer than the cap gets a batch of its own.
        num_buckets: duration buckets; more buckets means less padding, less mixing.
        shuffle: False keeps buckets and batches in duration order (for evaluation).
        seed: shuffling seed, the same on every rank.
        rank: this process's rank, 0 <= rank < world_size.
        world_size: number of data-parallel processes.
        drop_uneven: drop (True) or repeat (False) batches to equalise the ranks' counts.
    """

    def __init__(self, durations: Sequence[float], *, batch_size: int | None = None,
                 max_batch_audio_s: float | None = None, num_buckets: int = 30, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_uneven: bool = True) -> None:
        if batch_size is None and max_batch_audio_s is None:
            raise ValueError("set batch_size or max_batch_audio_s")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_audio_s is not None and max_batch_audio_s <= 0:
            raise ValueError(f"max_batch_audio_s must be positive, got {max_batch_audio_s}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size = batch_size
        self.max_batch_audio_s = max_batch_audio_s
        self.num_buckets = max(1, num_buckets)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_uneven = drop_uneven
        self.epoch = 0
        self._skip = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose shuffle the next iteration uses; call before each epoch."""
        self.epoch = epoch

    def skip_batches(self, num_batches: int) -> None:
        """Makes the next iteration start after this rank's first ``num_batches`` batches (resume)."""
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self._skip = num_batches

    def __len__(self) -> int:
        return max(0, len(self._rank_batches()) - self._skip)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        # The skip applies to one iteration only, so the next epoch starts from its beginning.
        skip, self._skip = self._skip, 0
        yield from batches[skip:]

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._shard(self._epoch_batches()))
        return self._cache[1]

    def _epoch_batches(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = np.argsort(self.durations, kind="stable")
        batches: list[list[int]] = []
        for bucket in np.array_split(order, min(self.num_buckets, max(1, len(order)))):
            if self.shuffle:
                bucket = rng.permutation(bucket)
            batches.extend(self._fill(bucket))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _fill(self, bucket: np.ndarray) -> list[list[int]]:
        """Cuts one bucket's (ordered) indices into batches."""
        if self.max_batch_audio_s is None:
            assert self.batch_size is not None
            return [bucket[i:i + self.batch_size].tolist() for i in range(0, len(bucket), self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for index in bucket.tolist():
            new_longest = max(longest, float(self.durations[index]))
            full = self.batch_size is not None and len(current) >= self.batch_size
            if current and (full or (len(current) + 1) * new_longest > self.max_batch_audio_s):
                batches.append(current)
                current, new_longest = [], float(self.durations[index])
            current.append(index)
            longest = new_longest
        if current:
            batches.append(current)
        return batches

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        if self.world_size == 1:
            return batches
        if self.drop_uneven:
            usable = len(batches) - len(batches) % self.world_size
            batches = batches[:usable]
        elif batches and len(batches) % self.world_size:
            missing = self.world_size - len(batches) % self.world_size
            batches = batches + [batches[i % len(batches)] for i in range(missing)]
        return batches[self.rank::self.world_size]
