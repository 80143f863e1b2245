"""Word timings as Whisper-style segments, and segments as SRT and WebVTT subtitles.

The OpenAI API's verbose_json, srt and vtt responses (service.openai_api) and `asr transcribe-batch`'s
.srt and .vtt files (cli.archive_outputs) are made here, so they agree.
"""

from __future__ import annotations

import math

from model.decoding import WordTiming

# A segment ends at a pause this long, or before it would grow past SEGMENT_MAX_S.
SEGMENT_PAUSE_S = 1.0
SEGMENT_MAX_S = 30.0


def build_segments(words: tuple[WordTiming, ...], text: str, duration_s: float) -> list[dict]:
    """Groups words into Whisper-style segments, breaking at pauses and at SEGMENT_MAX_S."""
    groups: list[list[WordTiming]] = []
    for word in words:
        if (not groups or word.start_s - groups[-1][-1].end_s >= SEGMENT_PAUSE_S
                or word.end_s - groups[-1][0].start_s > SEGMENT_MAX_S):
            groups.append([])
        groups[-1].append(word)
    if not groups:
        spans = [(0.0, duration_s, text, 0.0)] if text else []
    else:
        spans = [(g[0].start_s, g[-1].end_s, " ".join(w.word for w in g),
                  sum(w.confidence for w in g) / len(g)) for g in groups]
    return [{"id": i, "seek": 0, "start": start, "end": end, "text": seg_text, "tokens": [], "temperature": 0.0,
             "avg_logprob": round(math.log(max(conf, 1e-6)), 4), "compression_ratio": 1.0, "no_speech_prob": 0.0}
            for i, (start, end, seg_text, conf) in enumerate(spans)]


def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_srt(segments: list[dict]) -> str:
    return "".join(f"{i + 1}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text']}\n\n"
                   for i, s in enumerate(segments))


def to_vtt(segments: list[dict]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text']}\n\n"
                                  for s in segments)
