"""Long audio on a real server with the default model: memory, decoding time and head-of-line latency.

Starts ``python -m service.server`` (default model and settings unless a flag says otherwise) and
runs the parts asked for:

* ``memory``: 59 minutes of 48 kHz stereo, as digital silence in FLAC (a 0.7 MB file) and as
  speech in Ogg Vorbis and in WebM/Opus (read through PyAV) (AN4 training utterances end to end,
  upsampled, both channels; ``--files`` picks among the three); for each,
  the server's peak RSS growth for one upload, then for four at once, and its RSS 60 s after the
  burst, all against its RSS before. Peak: VmHWM, reset through /proc/PID/clear_refs.
* ``decode``: 150, 600, 1,200 and 3,540 s of speech (16 kHz FLAC) one at a time; the
  ``timings`` the server reports (``decode_s`` is the decoder's time, ``inference_s`` the model's).
* ``hol``: two 20-minute speech uploads at once, and one client posting 4 s AN4 clips back to back
  until both finish; latency percentiles of the clips, and of the same clips on an idle server.

    python bench/long_audio.py memory decode hol --out bench/results/long_audio_<date>.json
    python bench/long_audio.py memory --code /tmp/before     # another checkout, for before/after

The speech comes from ../shared/speech's AN4 *training* set (never the test sets).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import REPO, SPEECH, free_port, machine, make_clips, wav  # noqa: E402

MB = 1024 * 1024


class Server:
    """A server process from checkout ``code`` with ``env`` on top of the environment; ready when built."""

    def __init__(self, code: Path, registry: Path, model: str | None, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "service.server", "--host", "127.0.0.1", "--port", str(self.port),
               "--grpc-port", "0", "--registry", str(registry)] + (["--model", model] if model else [])
        self.log = tempfile.NamedTemporaryFile(prefix="long_audio_server_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, cwd=code, env={**os.environ, "PYTHONPATH": str(code), **env},
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready; see {self.log.name}")

    def kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def rss_mb(self) -> float:
        return self.kb("VmRSS") / 1024

    def peak_growth_mb(self, action) -> float:
        before = self.kb("VmRSS")
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        action()
        return round((self.kb("VmHWM") - before) / 1024, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@functools.cache
def _an4_train_16k() -> np.ndarray:
    """Every AN4 training utterance at 16 kHz, end to end (about 50 minutes)."""
    from model.audio import decode_audio

    lines = [json.loads(line) for line in (SPEECH / "an4_train.json").read_text().splitlines() if line.strip()]
    return np.concatenate([decode_audio(SPEECH / entry["audio_filepath"], 16_000).samples for entry in lines])


def speech(seconds: float, rate: int = 16_000) -> np.ndarray:
    """AN4 training utterances end to end (repeated as needed), cut to ``seconds``, at ``rate``."""
    from model.audio import resample

    whole = _an4_train_16k()
    repeats = int(np.ceil(seconds * 16_000 / len(whole)))
    clip = np.tile(whole, repeats)[: int(seconds * 16_000)]
    return clip if rate == 16_000 else resample(clip, 16_000, rate)


def write(path: Path, samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> Path:
    with sf.SoundFile(path, "w", rate, samples.shape[1] if samples.ndim == 2 else 1, format=fmt,
                      subtype=subtype) as out:
        for i in range(0, len(samples), 8192):  # libsndfile's Vorbis encoder overflows its stack on large writes
            out.write(samples[i:i + 8192])
    return path


def write_webm(path: Path, mono: np.ndarray, rate: int) -> Path:
    """Stereo Opus in WebM (the same signal on both channels), encoded a second at a time with PyAV."""
    import av

    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=rate, layout="stereo")
        for i in range(0, len(mono), rate):
            block = np.ascontiguousarray(np.stack([mono[i:i + rate]] * 2), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def post(base: str, path: Path, timeout: float = 3600) -> tuple[int, dict, float]:
    started = time.monotonic()
    with open(path, "rb") as handle:
        r = httpx.post(f"{base}/transcribe", files={"file": (path.name, handle)}, timeout=timeout)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, body, round(time.monotonic() - started, 3)


def memory_part(server: Server, path: Path) -> dict:
    baseline = server.rss_mb()
    one: list = []
    alone = server.peak_growth_mb(lambda: one.append(post(server.base, path)))
    four: list = []

    def burst() -> None:
        threads = [threading.Thread(target=lambda: four.append(post(server.base, path))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    before_burst = server.rss_mb()
    together = server.peak_growth_mb(burst)
    time.sleep(60)
    after = server.rss_mb()
    return {"file_mb": round(path.stat().st_size / MB, 2), "rss_mb_before": round(baseline, 1),
            "one": {"status": one[0][0], "seconds": one[0][2], "peak_growth_mb": alone,
                    "error": one[0][1].get("error")},
            "four": {"statuses": [r[0] for r in four], "seconds": [r[2] for r in four],
                     "errors": [r[1].get("error") for r in four if r[0] != 200], "peak_growth_mb": together,
                     "rss_mb_before": round(before_burst, 1)},
            "rss_mb_60s_after_burst": round(after, 1), "rss_growth_60s_after_mb": round(after - baseline, 1)}


def run_memory(args, tmp: Path) -> dict:
    files = {}
    if "silence_flac" in args.files:
        files["silence_flac"] = write(tmp / "silence_48k_stereo.flac",
                                      np.zeros((int(59 * 60 * 48_000), 2), dtype=np.float32), 48_000, "FLAC")
    mono = speech(59 * 60, 48_000)
    if "speech_ogg" in args.files:
        files["speech_ogg"] = write(tmp / "speech_48k_stereo.ogg", np.stack([mono, mono], axis=1), 48_000, "OGG",
                                    "VORBIS")
    if "speech_webm" in args.files:  # Chrome's MediaRecorder: Opus in WebM, read through PyAV
        files["speech_webm"] = write_webm(tmp / "speech_48k_stereo.webm", mono, 48_000)
    del mono
    results = {}
    for name, path in files.items():
        server = Server(args.code, args.registry, args.model, dict(args.env))  # a fresh process for each
        try:
            results[name] = memory_part(server, path)
        finally:
            server.stop()
        print(name, json.dumps(results[name]), flush=True)
    return results


def run_decode(args, tmp: Path) -> dict:
    env = {"ASR_MAX_AUDIO_BYTES": str(300 * MB), **dict(args.env)}  # 3,540 s of 16 kHz FLAC is ~70 MB
    server = Server(args.code, args.registry, args.model, env)
    results = {}
    try:
        for seconds in (150, 600, 1200, 3540):
            path = write(tmp / f"speech_{seconds}.flac", speech(seconds), 16_000, "FLAC")
            status, body, wall = post(server.base, path)
            results[str(seconds)] = {"status": status, "wall_s": wall, "timings": body.get("timings"),
                                     "words": len(body.get("text", "").split()), "error": body.get("error")}
            print(seconds, json.dumps(results[str(seconds)]), flush=True)
    finally:
        server.stop()
    return results


async def clip_latencies(base: str, payloads: list[bytes], stop: threading.Event | None, count: int,
                         failures: list[str]) -> list[float]:
    """Seconds per 4 s clip posted back to back; a clip that fails (or waits over 120 s) goes to ``failures``."""
    latencies = []
    async with httpx.AsyncClient(timeout=120) as client:
        i = 0
        while (stop is None and i < count) or (stop is not None and not stop.is_set()):
            started = time.monotonic()
            try:
                r = await client.post(f"{base}/transcribe", content=payloads[i % len(payloads)],
                                      headers={"Content-Type": "audio/wav"})
                if r.status_code == 200:
                    latencies.append(time.monotonic() - started)
                else:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f} s")
            i += 1
    return latencies


def percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_s": round(statistics.median(ordered), 3), "p90_s": round(pick(0.9), 3),
            "p99_s": round(pick(0.99), 3), "max_s": round(ordered[-1], 3)}


def run_hol(args, tmp: Path) -> dict:
    long_path = write(tmp / "speech_1200.flac", speech(1200), 16_000, "FLAC")
    payloads = [wav(c) for c in make_clips(SPEECH / "an4_train.json", 4.0, 32)]
    server = Server(args.code, args.registry, args.model, dict(args.env))
    failures: list[str] = []
    try:
        idle = asyncio.run(clip_latencies(server.base, payloads, None, 40, failures))
        done = threading.Event()
        long_results: list = []

        def long_request() -> None:
            long_results.append(post(server.base, long_path))

        threads = [threading.Thread(target=long_request) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # both are reading and queueing windows

        def watch() -> None:
            for thread in threads:
                thread.join()
            done.set()

        threading.Thread(target=watch).start()
        during = asyncio.run(clip_latencies(server.base, payloads, done, 0, failures))
    finally:
        server.stop()
    result = {"idle": percentiles(idle), "during_two_20_min_requests": percentiles(during) if during else None,
              "short_clip_failures": failures,
              "long_requests": [{"status": r[0], "seconds": r[2], "timings": r[1].get("timings")}
                                for r in long_results]}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=("memory", "decode", "hol"))
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose server runs (default: this one)")
    parser.add_argument("--registry", type=Path, default=REPO / "registry")
    parser.add_argument("--model", default=None, help="default: the server's own default model")
    parser.add_argument("--env", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)),
                        help="NAME=VALUE for the server's environment (repeatable)")
    parser.add_argument("--files", nargs="+", default=["silence_flac", "speech_ogg", "speech_webm"],
                        choices=("silence_flac", "speech_ogg", "speech_webm"), help="the memory part's uploads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "code": str(args.code), "model": args.model or "default (an4-quartznet)", "env": dict(args.env)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"memory": run_memory, "decode": run_decode, "hol": run_hol}
        for part in args.parts:
            report[part] = runs[part](args, Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
