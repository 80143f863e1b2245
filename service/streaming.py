"""Buffered CTC streaming: a growing audio stream in, interim and final transcripts out.

The method is NeMo's buffered CTC inference (FrameBatchASR), run incrementally:

* The stream is cut into *segments* at endpoints: ``silence_ms`` of consecutive blank CTC frames
  after some speech. Each segment gets exactly one final result.
* Inside a segment, each time ``chunk_s`` of new audio has arrived, the model runs on one
  window: ``left_context_s`` of already-settled audio, then everything not yet settled. Window
  starts are multiples of the model's frame stride, so window frame ``t`` is global frame
  ``start // samples_per_frame + t``. Frames of whole chunks that have at least
  ``right_context_s`` of look-ahead inside the window are *committed* (kept for good); the later
  frames are a *tentative* tail, recomputed next time. An interim result is one global greedy
  CTC merge (collapse repeats, drop blanks) over committed + tentative frames.
* A final result must equal what offline ``Recognize`` gives for the same audio. The model
  normalises features per utterance, over all valid frames, so frames computed on 2-3 s windows
  are close to, but not the same as, one pass over the whole utterance. So a segment of at most
  ``max_redecode_s`` is finalised by running the model once over the segment's audio *plus up
  to ``final_left_context_s`` of the audio before it* (earlier segments included) and keeping
  the segment's frames. For a stream with no endpoint, or for the last segment of a stream no
  longer than that context, this is exactly the offline computation; an earlier segment differs
  from offline only in the normalisation statistics (its pass cannot see the audio after its
  endpoint) and in the right context of its last frames, which are silence. A longer segment is
  finalised from its committed frames plus one flush window whose right context is all the
  remaining audio (buffered inference proper).

Every model run goes through ``Engine.log_probs``, so stream windows batch with other work. For an
ensemble, the windows (interims and endpointing) run its cheap path, the first member alone
(``interim=True``): the window work, several times the audio, shrinks by the ensemble's view count
(12 for the default model), while each final is still the whole ensemble's one pass over the
segment, so finals (and their WER) are unchanged. The exception is a segment longer than
``max_redecode_s`` without an endpoint, finalised from its committed frames: those are the cheap
path's, one view's.
Endpointing reads committed frames only, so a silence is declared after ``silence_ms`` plus at
most ``right_context_s + chunk_s`` of audio.

Committed frames go into an incremental greedy decoder (model.decoding.GreedyDecoder) as they
are committed, which holds at most a 30 s segment of them: a stream's memory is bounded by its
audio buffer (``max_redecode_s`` plus ``final_left_context_s``) however long a segment runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from model.decoding import GreedyDecoder, Transcript, WordTiming, greedy_decode
from model.segments import blank_frames
from service.domain import LogProbsResult, RequestError, TranscriptionRequest, TranscriptionResult
from service.stream_audio import StreamAudio, pcm16_to_float32

__all__ = ["MAX_STREAM_BACKLOG_S", "StreamingOptions", "StreamResult", "StreamingSession", "pcm16_to_float32"]

# Audio a stream may have received ahead of its model runs before its transport stops reading the
# client (whose sends then wait on flow control): a client pushing an hour at once holds seconds.
MAX_STREAM_BACKLOG_S = 5.0

# Interim results are split where the committed frames end. Text on committed frames changes
# only if the final one-pass decode (other normalisation statistics) disagrees; the tail can
# change with every new chunk of audio.
STABLE_STABILITY = 0.9
TAIL_STABILITY = 0.1


class LogProbsEngine(Protocol):
    """The part of service.engine.Engine a stream needs."""

    async def log_probs(self, audio: np.ndarray, model: str | None, *, deadline_s: float | None = None,
                        api: str = "grpc", interim: bool = False) -> LogProbsResult: ...

    async def decode(self, lp: LogProbsResult, req: TranscriptionRequest) -> TranscriptionResult: ...


@dataclass(frozen=True)
class StreamingOptions:
    """How a stream is chunked, endpointed and finalised.

    Attributes:
        interim_results: produce interim (``is_final=False``) results.
        word_timestamps: put word times and confidences on final results.
        silence_ms: trailing blank frames (in ms) after speech that end a segment; None disables
            endpointing (one segment, finalised at the end of the stream).
        chunk_s: audio between two model runs, and the unit in which frames are committed.
        left_context_s: settled audio put in front of each window (not re-committed).
        right_context_s: look-ahead a frame needs inside its window before it is committed.
        first_step_s: audio needed for the first run of a segment (sets the first-interim latency).
        max_redecode_s: segments up to this long are finalised by one pass over their audio.
        final_left_context_s: audio before the segment included in that pass (then dropped).
        max_leading_silence_s: speech-free audio at the start of a segment beyond this is dropped.
        hotwords: (phrase, boost) pairs; a segment's final is then decoded as Recognize decodes with them (a beam
            over the segment's frames), interims stay greedy. Segments longer than ``max_redecode_s`` are
            finalised greedily.
    """

    interim_results: bool = True
    word_timestamps: bool = True
    silence_ms: int | None = 800
    chunk_s: float = 0.32
    left_context_s: float = 1.6
    right_context_s: float = 0.64
    first_step_s: float = 0.2
    max_redecode_s: float = 30.0
    final_left_context_s: float = 10.0
    max_leading_silence_s: float = 10.0
    hotwords: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.silence_ms is not None and self.silence_ms <= 0:
            raise ValueError(f"silence_ms must be positive or None, got {self.silence_ms}")
        if min(self.chunk_s, self.first_step_s, self.max_redecode_s) <= 0:
            raise ValueError(f"chunk_s, first_step_s and max_redecode_s must be positive: {self}")
        if min(self.left_context_s, self.right_context_s, self.final_left_context_s) < 0:
            raise ValueError(f"context lengths must not be negative: {self}")
        if self.max_leading_silence_s < self.left_context_s:
            raise ValueError(f"max_leading_silence_s must be at least left_context_s: {self}")


@dataclass(frozen=True)
class StreamResult:
    """One result of a stream.

    Attributes:
        text: words separated by single spaces.
        words: per-word times (seconds from the start of the stream); finals only.
        is_final: the segment is over and this text will not change.
        stability: interims only, in (0, 1): how likely the text is to stay; 0 for finals.
        confidence: finals only: mean word confidence in [0, 1].
        audio_processed_s: seconds of stream audio transcribed when this result was made.
    """

    text: str
    words: tuple[WordTiming, ...]
    is_final: bool
    stability: float
    confidence: float
    audio_processed_s: float


class StreamingSession:
    """One stream's state: call ``add_audio`` as audio arrives, ``step`` when ``ready``, then ``finish``.

    Not thread-safe; one coroutine drives it (audio may be added between awaits).

    Args:
        engine: runs the acoustic model (``Engine`` or anything with its ``log_probs``).
        model: the pinned NAME@VERSION every window of this stream uses.
        model_rate: the model's sample rate in Hz.
        source_rate: the rate of the audio passed to ``add_audio``, in Hz.
        options: chunking, endpointing and finalisation settings.
        deadline_s: ``time.monotonic()`` deadline of the whole stream, or None.
        api: metrics label passed to the engine.
    """

    def __init__(self, engine: LogProbsEngine, model: str, model_rate: int, source_rate: int,
                 options: StreamingOptions | None = None, *, deadline_s: float | None = None,
                 api: str = "grpc_stream") -> None:
        if not MIN_SAMPLE_RATE <= source_rate <= MAX_SAMPLE_RATE:
            raise RequestError(f"sample_rate_hertz must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}, "
                               f"got {source_rate}")
        self.engine = engine
        self.model = model
        self.options = options or StreamingOptions()
        self.deadline_s = deadline_s
        self.api = api
        self.model_rate = model_rate
        self._audio = StreamAudio(source_rate, model_rate)
        self._labels: tuple[str, ...] = ()
        self._frame_shape: tuple[int, ...] = ()  # one frame's log-probs: (V+1,), an ensemble's (K, V+1)
        self._frame_s = 0.0
        self._spf = 0  # model-rate samples per output frame; known after the first model run
        self._num_finals = 0
        self._start_segment(0)

    # ---- public API -----------------------------------------------------------------------

    @property
    def segment_start_s(self) -> float:
        """Where the open segment starts, in seconds from the start of the stream."""
        return self._seg_start / self.model_rate

    @property
    def audio_received_s(self) -> float:
        return self._audio.end / self.model_rate

    @property
    def backlog_s(self) -> float:
        """Audio received that no model run has covered yet, in seconds."""
        covered = self._seg_start if self._last_run_end is None else self._last_run_end
        return max(0, self._audio.end - covered) / self.model_rate

    @property
    def held_s(self) -> float:
        """What the stream holds, in the memory budget's seconds (service.budget): its audio buffer's
        float32 samples (at the source rate, so 48 kHz counts thrice) plus the frames its decoder holds."""
        pending = self._decoder.pending_frames if self._decoder is not None else 0
        return self._audio.held_samples / self.model_rate + pending * self._frame_s

    def add_audio(self, samples: np.ndarray) -> None:
        """Appends mono float32 samples at ``source_rate``."""
        if len(samples):
            self._audio.append(np.asarray(samples, dtype=np.float32))

    def ready(self) -> bool:
        """Whether enough new audio has arrived for ``step`` to run the model."""
        end = self._audio.end
        if self._last_run_end is None:
            return end - self._seg_start >= self.options.first_step_s * self.model_rate
        return end - self._last_run_end >= self.options.chunk_s * self.model_rate

    async def step(self) -> list[StreamResult]:
        """Runs the model on the newest window; returns a final (on an endpoint) or an interim.

        The interim list holds the committed prefix (stability 0.9) and the tentative tail
        (stability 0.1), either of which may be left out when empty; nothing is returned when
        the interim text has not changed since the last one.
        """
        end = self._audio.end
        window_start = max(self._seg_start, self._commit - self._left_samples())
        self._last_run_end = end
        if end - window_start < max(self._spf, 1):
            return []
        frames = await self._run(window_start, end)
        if not self._spf:
            return []  # too little audio for a frame yet
        first_frame = window_start // self._spf
        num_chunks = max(0, (end - self._right_samples() - self._commit) // self._chunk_samples())
        new_commit = self._commit + num_chunks * self._chunk_samples()
        old_commit = self._commit
        settled = frames[old_commit // self._spf - first_frame: new_commit // self._spf - first_frame]
        self._commit = new_commit
        position = old_commit
        # A candidate the whole model does not confirm leaves the count at the blanks it hears; the frames
        # after the candidate are counted on from there (and may hold the confirmed endpoint).
        while (cut := self._scan_for_endpoint(settled)) is not None:
            self._feed(settled[:cut])
            position += cut * self._spf
            ended, final = await self._endpoint_final(position, end)
            if ended:
                return [] if final is None else [final]
            settled = settled[cut:]
        self._feed(settled)
        tail = frames[new_commit // self._spf - first_frame:]
        self._trim()
        if not self.options.interim_results:
            return []
        return self._interim(tail)

    async def finish(self) -> list[StreamResult]:
        """Flushes the open segment at the end of the stream; returns its final (if any)."""
        end = self._audio.end
        had_final = self._num_finals > 0
        if end <= self._seg_start and had_final:
            return []
        final = self._final_result((await self._segment_transcript(end, end))[0])
        # Trailing silence after an endpoint is not worth an empty final; a stream without
        # any final still gets one, so every stream ends with is_final=True.
        return [] if had_final and not final.text else [final]

    # ---- segments and frames --------------------------------------------------------------

    def _start_segment(self, start: int) -> None:
        self._seg_start = start
        self._commit = start  # committed frames cover [seg_start, commit), fed to _decoder
        self._decoder: GreedyDecoder | None = None
        self._has_speech = False
        self._trailing_blanks = 0
        self._last_run_end: int | None = None
        self._last_interim: tuple[str, str] | None = None

    def _chunk_samples(self) -> int:
        return max(1, round(self.options.chunk_s * self.model_rate / self._spf)) * self._spf

    def _left_samples(self) -> int:
        return round(self.options.left_context_s * self.model_rate / self._spf) * self._spf if self._spf else 0

    def _final_context_samples(self) -> int:
        return round(self.options.final_left_context_s * self.model_rate / self._spf) * self._spf if self._spf else 0

    def _aligned(self, position: int) -> int:
        """``position`` rounded up to a frame boundary."""
        return -(-position // self._spf) * self._spf if self._spf else position

    def _right_samples(self) -> int:
        return round(self.options.right_context_s * self.model_rate / self._spf) * self._spf

    async def _run(self, start: int, end: int, *, full: bool = False) -> np.ndarray:
        """Log-probs of model-rate samples [start, end) (``start`` frame-aligned): the cheap path's (T, V+1)
        for windows, or with ``full`` the whole model's (an ensemble's (T, K, V+1)) for a segment's final."""
        result = await self.engine.log_probs(self._audio.read(start, end), self.model,
                                             deadline_s=self.deadline_s, api=self.api, interim=not full)
        if not full and not self._frame_shape and len(result.log_probs):
            self._frame_shape = result.log_probs.shape[1:]  # the decoder's frames: the windows'
        if not self._spf and len(result.log_probs):
            self._labels = tuple(result.labels)
            self._frame_s = float(result.frame_duration_s)
            self._spf = max(1, round(self._frame_s * self.model_rate))
        return result.log_probs

    def _scan_for_endpoint(self, frames: np.ndarray) -> int | None:
        """Counts speech and blanks in newly settled frames; returns how many lead up to a candidate endpoint."""
        if not len(frames):
            return None
        silence_ms = self.options.silence_ms
        needed = math.ceil(silence_ms / 1000.0 / self._frame_s - 1e-9) if silence_ms is not None else None
        cut = None
        for t, blank in enumerate(blank_frames(frames).tolist()):
            if not blank:
                self._has_speech = True
                self._trailing_blanks = 0
                continue
            self._trailing_blanks += 1
            if cut is None and needed is not None and self._has_speech and self._trailing_blanks >= needed:
                cut = t + 1
        return cut

    def _feed(self, frames: np.ndarray) -> None:
        """Hands settled frames to the segment's decoder."""
        if self._decoder is None:
            self._decoder = GreedyDecoder(self._labels, self._frame_s, time_offset_s=self._seg_start / self.model_rate)
        self._decoder.feed(frames)

    def _trim(self) -> None:
        """Bounds memory: drops leading silence, and audio a long segment will never reread."""
        left = self._left_samples()
        if (not self._has_speech
                and self._commit - self._seg_start > self.options.max_leading_silence_s * self.model_rate):
            # Keep the last left_context of blank frames; the segment now starts there, and its decoder
            # (which has seen only blanks) starts afresh at the next frame to be committed.
            self._seg_start = self._commit - left
            self._decoder = GreedyDecoder(self._labels, self._frame_s, time_offset_s=self._commit / self.model_rate)
            self._trailing_blanks = left // self._spf
        keep_from = min(self._commit - left, self._audio.end - self._final_context_samples())
        if self._audio.end - self._seg_start <= self.options.max_redecode_s * self.model_rate:
            keep_from = min(keep_from, self._seg_start)  # the one-pass final reads the whole segment
        self._audio.drop_before(max(0, keep_from))

    def _interim(self, tail: np.ndarray) -> list[StreamResult]:
        if not self._labels or (self._decoder is None and not len(tail)):
            return []
        if self._decoder is None:
            self._feed(tail[:0])
        transcript = self._decoder.preview(tail)
        settled_s = self._commit / self.model_rate + 1e-6
        stable = " ".join(w.word for w in transcript.words if w.end_s <= settled_s)
        unstable = " ".join(w.word for w in transcript.words if w.end_s > settled_s)
        if (stable, unstable) == self._last_interim:
            return []
        first = self._last_interim is None
        self._last_interim = (stable, unstable)
        processed = self._last_run_end / self.model_rate
        results = [StreamResult(text, (), False, stability, 0.0, processed)
                   for text, stability in ((stable, STABLE_STABILITY), (unstable, TAIL_STABILITY)) if text]
        if not results and first and self._num_finals == 0:
            # The stream's first interim is sent even when empty, so clients see it is live.
            results = [StreamResult("", (), False, TAIL_STABILITY, 0.0, processed)]
        return results

    async def _endpoint_final(self, cut: int, read_to: int) -> tuple[bool, StreamResult | None]:
        """Ends the segment at ``cut`` unless the one-pass decode disagrees: (ended, its final or None).

        The candidate comes from window frames; the one-pass decode (which reads all audio
        received, ``read_to``) must also see ``silence_ms`` of blanks before ``cut``. If it
        hears speech there, the segment goes on and the blank count starts again.
        """
        transcript, last_frames = await self._segment_transcript(cut, read_to)
        needed = math.ceil(self.options.silence_ms / 1000.0 / self._frame_s - 1e-9)
        if last_frames is not None:
            tail = last_frames[-needed:]
            if len(tail) < needed or not blank_frames(tail).all():
                # Count on from the blanks the whole model does hear before the cut: the windows' cheap path
                # may hear silence a frame or two before every view of an ensemble does.
                blanks = blank_frames(last_frames)
                self._trailing_blanks = len(blanks) - (int(np.flatnonzero(~blanks)[-1]) + 1 if (~blanks).any() else 0)
                return False, None
        # The frames after the cut are recomputed as the start of the next segment.
        self._start_segment(cut)
        # Frames that spell no word (a lone separator, a stray frame of noise) end no utterance: no empty final.
        return True, (self._final_result(transcript) if transcript.text else None)

    async def _segment_transcript(self, end: int, read_to: int) -> tuple[Transcript, np.ndarray | None]:
        """The final transcript of the segment [seg_start, end), reading the audio up to ``read_to``, and the
        frames it was decoded from (None where they are the committed frames, which endpointing already read).

        A segment of at most ``max_redecode_s``: one model pass over
        [seg_start - final_left_context_s, read_to). A longer one: its committed frames (already in
        the decoder) plus a flush window over the rest.
        """
        start = self._seg_start
        if end - start > self.options.max_redecode_s * self.model_rate or start < self._audio.start:
            if not self._labels:
                return Transcript(""), None
            self._feed(np.zeros((0, *self._frame_shape), dtype=np.float32))  # the decoder exists
            if end > self._commit:
                window_start = max(start, self._commit - self._left_samples())
                flushed = await self._run(window_start, end)
                first = (self._commit - window_start) // self._spf
                self._decoder.feed(flushed[first: first + -(-(end - self._commit) // self._spf)])
            return self._decoder.finish(), None
        if end - start < max(self._spf, 1):
            return Transcript(""), None
        context_start = max(start - self._final_context_samples(), self._aligned(self._audio.start))
        frames = await self._run(context_start, read_to, full=True)
        if not self._spf:  # too little audio for one frame
            return Transcript(""), None
        first = (start - context_start) // self._spf
        frames = frames[first: first + -(-(end - start) // self._spf)]
        if not self._labels:
            return Transcript(""), frames
        if self.options.hotwords:
            return await self._boosted(frames, start / self.model_rate), frames
        return greedy_decode(frames, self._labels, self._frame_s, time_offset_s=start / self.model_rate), frames

    async def _boosted(self, frames: np.ndarray, offset_s: float) -> Transcript:
        """A segment's frames decoded with the stream's hotwords, as Recognize decodes a clip with them."""
        name, _, version = self.model.rpartition("@")
        result = await self.engine.decode(
            LogProbsResult(frames, self._frame_s, self._labels, name, int(version)),
            TranscriptionRequest(np.zeros(0, dtype=np.float32), model=self.model, hotwords=self.options.hotwords,
                                 deadline_s=self.deadline_s, api=self.api))
        return Transcript(result.text, tuple(replace(w, start_s=round(w.start_s + offset_s, 3),
                                                     end_s=round(w.end_s + offset_s, 3)) for w in result.words))

    def _final_result(self, transcript: Transcript) -> StreamResult:
        self._num_finals += 1
        processed = self._audio.end / self.model_rate
        words = transcript.words
        confidence = round(float(np.mean([w.confidence for w in words])), 4) if words else 0.0
        return StreamResult(transcript.text, words if self.options.word_timestamps else (), True, 0.0,
                            confidence, processed)
