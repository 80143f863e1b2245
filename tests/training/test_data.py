"""Manifests, the dataset's failure handling, collate padding and the duration bucket sampler."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from training.augment import AugmentConfig
from training.data import ManifestDataset, collate
from training.manifest import ManifestEntry, filter_by_duration, mix_manifests, read_manifest
from training.sampler import DurationBucketSampler

SAMPLE_RATE = 16_000


def _wav(path, seconds: float) -> None:
    sf.write(path, np.full(int(seconds * SAMPLE_RATE), 0.1, dtype=np.float32), SAMPLE_RATE)


def _encode(text: str) -> list[int]:
    return [ord(c) - ord("a") for c in text]


@pytest.fixture
def manifest(tmp_path):
    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "audio" / "a.wav", 0.5)
    _wav(tmp_path / "audio" / "b.wav", 0.25)
    lines = [
        json.dumps({"audio_filepath": "audio/a.wav", "duration": 0.5, "text": "abc"}),
        "{not json",
        json.dumps({"audio_filepath": "audio/b.wav", "duration": 0.25}),
        "",
        json.dumps({"audio_filepath": "audio/missing.wav", "duration": 1.0, "text": "x"}),
        json.dumps({"audio_filepath": str(tmp_path / "audio" / "b.wav"), "duration": 0.25, "text": "de"}),
        json.dumps({"audio_filepath": "audio/a.wav", "duration": "long", "text": "x"}),
    ]
    path = tmp_path / "train.json"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_skipped_and_counted(manifest, tmp_path):
    entries, problems = read_manifest(manifest)
    # A line without text is unlabelled audio (distillation uses it; plain training refuses it).
    assert [e.text for e in entries] == ["abc", None, "de"]
    assert [e.labelled for e in entries] == [True, False, True]
    assert entries[0].audio_filepath == str(tmp_path / "audio" / "a.wav")
    assert [p.line_number for p in problems] == [2, 5, 7]
    assert "invalid JSON" in problems[0].reason
    assert "not found" in problems[1].reason
    assert "duration" in problems[2].reason


def test_mix_weights_repeat_and_subsample(manifest):
    twice, _ = mix_manifests([(manifest, 2.0)])
    assert len(twice) == 6
    half, _ = mix_manifests([(manifest, 1.5)], seed=3)
    assert len(half) == 5  # 3 entries, plus round(0.5 * 3) = 2 of them again
    assert mix_manifests([(manifest, 0.5)], seed=3)[0] == mix_manifests([(manifest, 0.5)], seed=3)[0]


def test_filter_by_duration_reports_skips():
    entries = [ManifestEntry("x", d, "t") for d in (0.1, 1.0, 5.0, 20.0)]
    kept, report = filter_by_duration(entries, max_duration_s=16.7, min_duration_s=0.5)
    assert [e.duration_s for e in kept] == [1.0, 5.0]
    assert (report.num_too_short, report.num_too_long, report.num_skipped) == (1, 1, 2)


def test_unreadable_audio_is_dropped_not_fatal(manifest, tmp_path):
    entries, _ = read_manifest(manifest)
    entries = [e for e in entries if e.labelled]
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF garbage")
    entries.append(ManifestEntry(str(tmp_path / "audio" / "broken.wav"), 1.0, "zz"))
    dataset = ManifestDataset(entries, encode=_encode)
    batch = collate([dataset[i] for i in range(len(dataset))])
    audio, audio_lengths, targets, target_lengths, num_dropped = batch[:5]
    assert num_dropped == 1
    assert audio.shape == (2, 8000) and audio.dtype == torch.float32
    assert audio_lengths.tolist() == [8000, 4000] and audio_lengths.dtype == torch.int64
    assert (audio[1, 4000:] == 0).all()
    assert targets.tolist() == [[0, 1, 2], [3, 4, 0]] and target_lengths.tolist() == [3, 2]
    assert batch.clean is None and batch.labelled.tolist() == [True, True]
    assert collate([None]).audio.shape == (0, 0)


def test_speed_perturbation_is_seeded_per_epoch_and_index(manifest):
    entries, _ = read_manifest(manifest)
    augment = AugmentConfig(speed_rates=(0.9, 1.1), speed_prob=1.0, dither=1e-3)
    dataset = ManifestDataset(entries, encode=_encode, augment=augment, seed=5)
    first = dataset[0].audio
    assert np.array_equal(first, dataset[0].audio)
    assert abs(len(first) - 8000) > 500  # 8000 / 0.9 or 8000 / 1.1
    lengths = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        lengths.add(len(dataset[0].audio))
    assert len(lengths) == 2


def test_narrowband_is_seeded_and_keeps_the_length(tmp_path):
    noise = np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE).astype(np.float32)  # wideband
    sf.write(tmp_path / "noise.wav", noise, SAMPLE_RATE)
    entries = [ManifestEntry(str(tmp_path / "noise.wav"), 1.0, "abc")]
    plain = ManifestDataset(entries, encode=_encode, augment=AugmentConfig(), seed=5)[0].audio
    narrow = ManifestDataset(entries, encode=_encode, augment=AugmentConfig(narrowband_prob=1.0), seed=5)
    assert np.array_equal(narrow[0].audio, narrow[0].audio)
    assert len(narrow[0].audio) == len(plain)
    # Half of white noise's power lies above 4 kHz; band-limiting removes it.
    assert float(np.sum(narrow[0].audio ** 2)) < 0.6 * float(np.sum(plain ** 2))


def test_concat_appends_a_not_longer_utterance_and_its_transcript(tmp_path):
    specs = (("a", 0.5, "ab"), ("b", 0.25, "cd"), ("c", 0.4, "e"), ("d", 0.4, "fg"))
    for name, seconds, _ in specs:
        _wav(tmp_path / f"{name}.wav", seconds)
    entries = [ManifestEntry(str(tmp_path / f"{n}.wav"), d, t) for n, d, t in specs]
    durations = {t: d for _, d, t in specs}
    space = _encode(" ")[0]
    partners = {e.text: set() for e in entries}
    for seed in range(12):
        dataset = ManifestDataset(entries, encode=_encode, augment=AugmentConfig(concat_prob=1.0), seed=seed)
        for index, entry in enumerate(entries):
            item = dataset[index]
            ids = item.target_ids.tolist()
            if len(ids) == len(entry.text):  # alone: only the shortest has no partner
                assert entry.text == "cd" and len(item.audio) == SAMPLE_RATE // 4
                continue
            # The entry's own words, a space, then one *other* entry's transcript.
            assert ids[:len(entry.text)] == _encode(entry.text) and ids[len(entry.text)] == space
            partner = "".join(chr(i + ord("a")) for i in ids[len(entry.text) + 1:])
            assert partner != entry.text and durations[partner] <= entry.duration_s
            partners[entry.text].add(partner)
            gap_s = len(item.audio) / SAMPLE_RATE - entry.duration_s - durations[partner]
            assert 0.05 - 1e-3 <= gap_s <= 0.3 + 1e-3
            assert np.array_equal(dataset[index].audio, item.audio)  # seeded
    # Every shorter-or-equal utterance gets drawn; equal durations pair both ways.
    assert partners == {"ab": {"cd", "e", "fg"}, "cd": set(), "e": {"cd", "fg"}, "fg": {"cd", "e"}}
    never = ManifestDataset(entries, encode=_encode, augment=AugmentConfig(), seed=2)
    assert never[0].target_ids.tolist() == _encode("ab") and len(never[0].audio) == SAMPLE_RATE // 2


def test_concat_skips_an_unreadable_partner(tmp_path):
    _wav(tmp_path / "a.wav", 0.5)
    entries = [ManifestEntry(str(tmp_path / "a.wav"), 0.5, "ab"), ManifestEntry(str(tmp_path / "gone.wav"), 0.4, "x")]
    dataset = ManifestDataset(entries, encode=_encode, augment=AugmentConfig(concat_prob=1.0))
    item = dataset[0]
    assert item.target_ids.tolist() == _encode("ab") and len(item.audio) == SAMPLE_RATE // 2
    assert dataset[1] is None


def _padding_fraction(batches, durations) -> float:
    padded = sum(len(b) * max(durations[i] for i in b) for b in batches)
    return 1.0 - sum(durations) / padded


def test_bucketed_batches_pad_less_than_random():
    durations = np.random.default_rng(0).uniform(1.0, 16.0, size=1000).tolist()
    bucketed = list(DurationBucketSampler(durations, batch_size=16, num_buckets=50, seed=1))
    order = np.random.default_rng(1).permutation(1000)
    random_batches = [order[i:i + 16].tolist() for i in range(0, 1000, 16)]
    assert sorted(i for b in bucketed for i in b) == list(range(1000))
    assert _padding_fraction(bucketed, durations) < 0.05 < 0.3 < _padding_fraction(random_batches, durations)


def test_audio_seconds_cap_is_respected():
    durations = np.random.default_rng(0).uniform(1.0, 16.0, size=300).tolist()
    batches = list(DurationBucketSampler(durations, max_batch_audio_s=60.0, seed=0))
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) * max(durations[i] for i in b) <= 60.0 for b in batches if len(b) > 1)


def test_shards_are_disjoint_equal_and_deterministic():
    durations = np.random.default_rng(0).uniform(1.0, 16.0, size=203).tolist()

    def shards(epoch, drop_uneven=True):
        result = []
        for rank in range(3):
            sampler = DurationBucketSampler(durations, batch_size=8, seed=4, rank=rank, world_size=3,
                                            drop_uneven=drop_uneven)
            sampler.set_epoch(epoch)
            result.append(list(sampler))
        return result

    epoch0 = shards(0)
    assert len({len(s) for s in epoch0}) == 1
    flat = [i for s in epoch0 for b in s for i in b]
    assert len(flat) == len(set(flat))
    assert epoch0 == shards(0)
    assert epoch0 != shards(1)
    padded = shards(0, drop_uneven=False)
    assert len({len(s) for s in padded}) == 1
    assert {i for s in padded for b in s for i in b} == set(range(203))


def test_resume_skips_batches_once():
    durations = [float(d) for d in range(1, 101)]
    sampler = DurationBucketSampler(durations, batch_size=10, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip_batches(4)
    assert len(sampler) == len(full) - 4
    assert list(sampler) == full[4:]
    assert list(sampler) == full


@pytest.mark.parametrize("done", [0, 1, 3, 5])
def test_an_epoch_interrupted_on_two_ranks_trains_each_utterance_exactly_once(done):
    """What Ray Train's restart after a lost node does: every rank resumes after the batches its checkpoint
    recorded (TrainState.batches_done, the same on every rank), so the epoch's utterances are each trained
    once across the two attempts: none repeated, none skipped."""
    durations = [1.0 + (i * 7 % 13) / 10 for i in range(48)]  # 24 batches of 2: 12 per rank, none dropped

    def shard(rank: int) -> DurationBucketSampler:
        sampler = DurationBucketSampler(durations, batch_size=2, num_buckets=4, seed=3, rank=rank, world_size=2)
        sampler.set_epoch(1)
        return sampler

    before = [list(shard(rank))[:done] for rank in (0, 1)]  # trained, then the checkpoint, then the failure
    after = []
    for rank in (0, 1):
        sampler = shard(rank)
        sampler.skip_batches(done)
        after.append(list(sampler))
    trained = [i for batches in before + after for batch in batches for i in batch]
    assert sorted(trained) == list(range(len(durations)))
    assert [b + a for b, a in zip(before, after)] == [list(shard(0)), list(shard(1))]  # the same order as unbroken
