"""`asr bench`: how fast a model runs here, timed on the path the service runs (front end, network, greedy decode)."""

from __future__ import annotations

import os
import platform
import statistics

import numpy as np
import torch

from cli.timing import timed
from model.decoding import greedy_decode

MIN_RUNS = 5
MAX_CLIP_SECONDS = 3600.0


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic_batch(batch_size: int, clip_seconds: float, sample_rate: int, seed: int = 0) -> list[np.ndarray]:
    """Speech-like test signals: a few drifting harmonics under noise, at a speaking level (-20 dBFS RMS).

    Only the timing matters; compute does not depend on what is said, but the greedy decoder's cost
    grows with the number of non-blank frames, so silence would flatter it.
    """
    rng = np.random.default_rng(seed)
    n = int(round(clip_seconds * sample_rate))
    t = np.arange(n) / sample_rate
    clips = []
    for _ in range(batch_size):
        pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        signal = voiced + 0.3 * rng.standard_normal(n)
        clips.append((0.1 * signal / np.sqrt(np.mean(signal**2))).astype(np.float32))
    return clips


def run_bench(model, *, batch_size: int, clip_seconds: float, runs: int, warmup: int = 2) -> dict:
    """Median wall time of ``runs`` timed batches after ``warmup`` untimed ones."""
    clips = synthetic_batch(batch_size, clip_seconds, model.sample_rate)
    labels, frame_s = model.vocabulary.labels, model.frame_duration_s

    def once() -> None:
        with torch.inference_mode():
            outputs = model.log_probs_batch(clips)
        for log_probs in outputs:
            greedy_decode(log_probs, labels, frame_s)

    times = timed(once, runs, warmup)
    median_s = statistics.median(times)
    return {"x_realtime": round(batch_size * clip_seconds / median_s, 2), "ms_per_batch": round(median_s * 1e3, 3),
            "ms_per_batch_min": round(min(times) * 1e3, 3), "runs": runs}


def bench_report(model, ref, *, batch_size: int, clip_seconds: float, threads: int, precision: str, device,
                 runs: int) -> dict:
    """The JSON `asr bench --json` prints: the timing plus everything needed to compare machines."""
    timing = run_bench(model, batch_size=batch_size, clip_seconds=clip_seconds, runs=runs)
    return {"model": str(ref), **timing, "batch_size": batch_size, "clip_seconds": clip_seconds,
            "precision": precision, "threads": threads, "device": str(device), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}
