"""The utterance dataset (decode, perturb, encode) and the padding collate that makes batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from model.audio import AudioError, decode_audio
from training.augment import AugmentConfig, add_dither, band_limit, choose_speed_rate, speed_perturb
from training.manifest import ManifestEntry

# Silence between an utterance and the one concatenated to it (augment.concat_prob), in seconds.
_CONCAT_GAP_S = (0.05, 0.3)


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
