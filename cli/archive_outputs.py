"""Where `asr transcribe-batch` writes, and how a rerun knows what is done.

Each input's results go to ``OUT/<key>.<format>`` for every format asked for (``jsonl``'s per-file
record is ``<key>.json``), each written to a temporary name and renamed into place, so no partial
result file ever exists. The ``.json`` is written last: it is the mark that the file is done, and a
rerun skips every file that has one. ``OUT/run.json`` (the run manifest: done and failed files with
reasons) and ``OUT/results.jsonl`` (every done file's record, in key order) are rewritten at the end
of each run, also atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from model.decoding import Transcript, WordTiming
from model.subtitles import build_segments, to_srt, to_vtt

FORMATS = ("jsonl", "srt", "vtt", "txt")
RUN_MANIFEST = "run.json"
RESULTS = "results.jsonl"


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partial_files(out: Path) -> None:
    """Deletes the temporary files of a run that was killed while writing (never a finished result)."""
    if out.is_dir():
        for tmp in out.rglob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def done_marker(out: Path, key: str) -> Path:
    return out / f"{key}.json"


def is_done(out: Path, key: str) -> bool:
    return done_marker(out, key).is_file()


def record(key: str, path: str, duration_s: float, transcript: Transcript, model: str) -> dict:
    """The per-file JSON record: `asr transcribe --json`'s fields plus the key and the model."""
    return {"key": key, "file": path, "model": model, "text": transcript.text, "duration": round(duration_s, 3),
            "words": [{"word": w.word, "start": w.start_s, "end": w.end_s, "confidence": w.confidence}
                      for w in transcript.words]}


def write_result(out: Path, formats: tuple[str, ...], rec: dict) -> None:
    """Every asked-for format of one file's record, then its ``.json`` (the done mark)."""
    words = tuple(WordTiming(w["word"], w["start"], w["end"], w["confidence"]) for w in rec["words"])
    segments = build_segments(words, rec["text"], rec["duration"])
    renderings = {"srt": lambda: to_srt(segments), "vtt": lambda: to_vtt(segments), "txt": lambda: rec["text"] + "\n"}
    for fmt in formats:
        if fmt in renderings:
            write_atomic(out / f"{rec['key']}.{fmt}", renderings[fmt]())
    write_atomic(done_marker(out, rec["key"]), json.dumps(rec) + "\n")


def read_record(out: Path, key: str) -> dict:
    return json.loads(done_marker(out, key).read_text(encoding="utf-8"))


def write_run_files(out: Path, keys: list[str], failed: dict[str, str], summary: dict, with_results: bool) -> None:
    """The run manifest, and results.jsonl when jsonl was asked for, both in key order."""
    done = [k for k in keys if k not in failed and is_done(out, k)]
    if with_results:
        write_atomic(out / RESULTS, "".join(json.dumps(read_record(out, k)) + "\n" for k in done))
    manifest = {**summary, "done": done, "failures": [{"key": k, "reason": failed[k]} for k in sorted(failed)]}
    write_atomic(out / RUN_MANIFEST, json.dumps(manifest, indent=1) + "\n")
