"""Duration-bucketed batches: similar lengths together, a batch-size or audio-seconds cap, sharded by rank."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


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
