"""EnsembleRecognizer: independently trained models, and speed-changed views of the input, served as one model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from model.audio import resample_tensor, speed_resampling_rates
from model.recognizer import BatchInference, RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary

# Padded audio per forward pass up to which an ensemble's speeds share one pass (see _speed_groups).
_STACKED_AUDIO_S = 100.0

@dataclass(frozen=True)
class EnsembleConfig:
    """The members' configs (one vocabulary, sample rate and frame rate) and the input speeds each member hears.

    Attributes:
        members: the trained models.
        speeds: playback speeds of the input, 1.0 included (test-time augmentation); each member
            runs on each speed, so there are ``len(members) * len(speeds)`` views.
    """

    members: tuple[RecognizerConfig, ...]
    speeds: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least 1 member")
        if 1.0 not in self.speeds:
            raise ValueError(f"ensemble speeds must include 1.0 (the input as it is), got {list(self.speeds)}")
        if len(set(self.speeds)) != len(self.speeds):
            raise ValueError(f"ensemble speeds must not repeat, got {list(self.speeds)}")
        for speed in self.speeds:
            if not 0.5 <= speed <= 2.0:
                raise ValueError(f"ensemble speeds must lie in [0.5, 2], got {speed}")
        if len(self.members) * len(self.speeds) < 2:
            raise ValueError("an ensemble needs at least 2 members, or a speed besides 1.0")
        first = self.members[0]
        for i, member in enumerate(self.members[1:], start=1):
            if member.vocabulary.labels != first.vocabulary.labels:
                raise ValueError(f"ensemble member {i} has another vocabulary than member 0")
            if member.features.sample_rate != first.features.sample_rate:
                raise ValueError(f"ensemble member {i} expects {member.features.sample_rate} Hz, "
                                 f"member 0 {first.features.sample_rate} Hz")
            if member.frame_duration_s != first.frame_duration_s:
                raise ValueError(f"ensemble member {i} has {member.frame_duration_s} s output frames, "
                                 f"member 0 {first.frame_duration_s} s")

    @property
    def view_speeds(self) -> tuple[float, ...]:
        """Speeds in view order: 1.0 first, so decoders that time words by the first view use real time."""
        return (1.0,) + tuple(speed for speed in self.speeds if speed != 1.0)

    def to_dict(self) -> dict:
        return {"sample_rate": self.members[0].features.sample_rate,
                "ensemble": [member.to_dict() for member in self.members],
                "speeds": list(self.speeds)}

    @classmethod
    def from_dict(cls, data: dict) -> "EnsembleConfig":
        members = data.get("ensemble")
        if not isinstance(members, list):
            raise ValueError("'ensemble' must be a list of member configs")
        speeds = data.get("speeds", [1.0])
        if not isinstance(speeds, list) or not all(isinstance(s, (int, float)) for s in speeds):
            raise ValueError("'speeds' must be a list of numbers")
        return cls(tuple(RecognizerConfig.from_dict(member) for member in members), tuple(float(s) for s in speeds))


class EnsembleRecognizer(BatchInference, nn.Module):
    """Runs every member on the input at every speed; log-probs come out as (B, T, K, V+1), one slice per view.

    View ``k`` is member ``k % M`` at speed ``config.view_speeds[k // M]`` (M members). Decoders
    pick among the views' transcripts by their mean CTC likelihood (model.rescoring): views spike
    at different frames, so their posteriors cannot be averaged. Views at other speeds are mapped
    onto the frames of speed 1.0 (:func:`onto_frames`), so all views share one time axis.
    """

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(SpeechRecognizer(member) for member in config.members)

    @classmethod
    def of(cls, members: Sequence[SpeechRecognizer], speeds: Sequence[float] = (1.0,)) -> "EnsembleRecognizer":
        """An ensemble holding (copies of) these trained members' weights."""
        ensemble = cls(EnsembleConfig(tuple(member.config for member in members), tuple(speeds)))
        for target, member in zip(ensemble.members, members):
            target.load_state_dict(member.state_dict())
        return ensemble

    @property
    def vocabulary(self) -> Vocabulary:
        return self.config.members[0].vocabulary

    @property
    def sample_rate(self) -> int:
        return self.config.members[0].features.sample_rate

    @property
    def frame_duration_s(self) -> float:
        return self.config.members[0].frame_duration_s

    @property
    def num_views(self) -> int:
        """K of its (T, K, V+1) log-probs: every member at every speed."""
        return len(self.config.members) * len(self.config.speeds)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) audio + (B,) lengths -> log_probs (B, T', K, V+1), output_lengths (B,)."""
        batch, speeds = len(audio), self.config.view_speeds
        clips, clip_lengths = [audio], [audio_lengths]
        for speed in speeds[1:]:
            from_rate, to_rate = speed_resampling_rates(speed, self.sample_rate)
            clips.append(resample_tensor(audio, from_rate, to_rate))
            # torchaudio's output length, per clip of the padded batch.
            clip_lengths.append(torch.div(audio_lengths * to_rate + from_rate - 1, from_rate, rounding_mode="floor"))
        # per_speed[k][m]: member m's (log_probs, lengths) at speed k.
        per_speed: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in speeds]
        # Members trained here share one front end: compute it once, not once per member
        # (featurizing the same audio four times cost @7 over a third of its offline CPU time).
        shared = self._shared_featurizer()
        for group in self._speed_groups([c.shape[1] for c in clips], batch):
            if len(group) == 1:
                stacked, stacked_lengths = clips[group[0]], clip_lengths[group[0]]
            else:
                longest = max(clips[k].shape[1] for k in group)
                stacked = torch.cat([nn.functional.pad(clips[k], (0, longest - clips[k].shape[1])) for k in group])
                stacked_lengths = torch.cat([clip_lengths[k] for k in group])
            features = shared(stacked, stacked_lengths) if shared is not None else None
            for member in self.members:
                if features is None:
                    log_probs, out_lengths = member(stacked, stacked_lengths)
                else:
                    log_probs, out_lengths = member.network(*features)
                for j, k in enumerate(group):
                    rows = slice(j * batch, (j + 1) * batch)
                    per_speed[k].append((log_probs[rows], out_lengths[rows]))
        base = per_speed[0]
        # Members with other kernels or padding may differ by a frame; keep the common span.
        frames = min(int(out_lengths.max()) for _, out_lengths in base) if batch else 0
        lengths = torch.stack([out_lengths for _, out_lengths in base]).min(dim=0).values.clamp(max=frames)
        views = [log_probs[:, :frames] for log_probs, _ in base]
        for outputs in per_speed[1:]:
            for (log_probs, view_lengths), (own, _) in zip(outputs, base):
                view = own[:, :frames].clone()  # padding frames: the member's own at speed 1.0
                for i in range(batch):
                    view[i, : int(lengths[i])] = onto_frames(log_probs[i, : int(view_lengths[i])], int(lengths[i]))
                views.append(view)
        return torch.stack(views, dim=2), lengths

    def _shared_featurizer(self) -> nn.Module | None:
        """The first member's front end if every member's computes the same features (config and buffers), else None."""
        first = self.members[0].featurizer
        if first.training:  # training draws dither per call: each member keeps its own draw
            return None
        for member in self.members[1:]:
            other = member.featurizer
            if other.config != first.config or not all(
                    a.device == b.device and torch.equal(a, b) for a, b in zip(first.buffers(), other.buffers())):
                return None
        return first

    def _speed_groups(self, clip_samples: list[int], batch: int) -> list[list[int]]:
        """Speeds (indices) that share one forward pass per member.

        A small batch (a streaming window, one request) is overhead-bound on CPU: one pass over
        every speed costs about what one speed does (55 vs 107 ms for 12 views of a 0.3 s clip).
        A large batch is compute-bound, and padding every speed to the longest then costs ~15 %,
        so speeds are packed into passes of at most _STACKED_AUDIO_S of padded audio.
        """
        limit = _STACKED_AUDIO_S * self.sample_rate
        groups: list[list[int]] = [[]]
        size = 0
        for k, samples in enumerate(clip_samples):
            if groups[-1] and size + batch * samples > limit:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += batch * samples
        return groups


def onto_frames(log_probs: torch.Tensor, frames: int) -> torch.Tensor:
    """Maps a speed-changed view's (T_s, V+1) log-probs onto ``frames`` frames of the input's time axis.

    A CTC model spikes each label on about one frame and fills the rest with blanks, so frames
    are dropped (T_s > frames) or duplicated (T_s < frames) where the blank is most likely, one
    per evenly spaced stretch. Each frame then lands within about a frame of its time in the
    input, and a spike is lost only if a whole stretch (about 20 frames at speed 0.95) has no
    frame where the blank is likelier than it.
    """
    have = log_probs.shape[0]
    if have == frames:
        return log_probs
    if have == 0:  # a clip too short for this view: silence
        silent = log_probs.new_full((frames, log_probs.shape[1]), -1e4)
        silent[:, -1] = 0.0
        return silent
    blank = log_probs[:, -1]
    counts = torch.ones(have, dtype=torch.long, device=log_probs.device)
    change = abs(have - frames)
    if change > have:  # only when the view has under half the frames: spread copies evenly
        counts = torch.tensor([(i + 1) * frames // have - i * frames // have for i in range(have)],
                              device=log_probs.device)
    else:
        for j in range(change):  # stretch j is [j*T_s//change, (j+1)*T_s//change), never empty
            start, stop = j * have // change, (j + 1) * have // change
            counts[start + int(blank[start:stop].argmax())] += 1 if frames > have else -1
    return log_probs.repeat_interleave(counts, dim=0)
