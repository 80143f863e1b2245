"""InferenceWorker: runs one batch of audio windows through a model version's inference form.

The batcher calls a worker from its inference thread pool. The worker knows nothing about
HTTP, gRPC or decoding; it returns the valid log-prob frames of each window. Each device gets
its own inference form (model.inference) at the configured precision, built once at load time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from model.inference import Recognizer, for_inference
from model.precision import resolve_precision
from service.admission import RateEstimate


@dataclass(frozen=True)
class WindowOutput:
    """Result of one batch item.

    Attributes:
        log_probs: (T, V+1) float32 (an ensemble's (T, K, V+1)), valid frames only.
        started_at: ``time.monotonic()`` when its batch began computing (ends its queue wait).
        inference_s: compute seconds of the whole batch it ran in.
    """

    log_probs: np.ndarray
    started_at: float
    inference_s: float


def pick_devices(device: str, num_cpu_workers: int) -> list[torch.device]:
    """One device per worker: every visible GPU for "cuda"/"auto" with CUDA, else the CPU N times."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")] * num_cpu_workers


class InferenceWorker:
    """Callable batch function over one model version, one inference form per distinct device.

    Args:
        model: the loaded eager model (eval mode, CPU); its inference form is built per device.
        devices: one entry per worker thread (see ``pick_devices``).
        precision: "fp32", "bf16", "fp16", "int8" or "auto" (model.precision); the resolved one is
            ``self.precision``. A precision a device cannot run raises PrecisionError here.
        on_batch_done: called with each batch's compute seconds (metrics).

    Attributes:
        rate: audio seconds per compute second on long batches (service.admission), seeded by ``warm_up``.
    """

    def __init__(self, model: Recognizer, devices: list[torch.device], *, precision: str = "auto",
                 on_batch_done: Callable[[float], None] = lambda s: None) -> None:
        self.devices = devices
        distinct = list(dict.fromkeys(devices))
        resolved = {resolve_precision(precision, device) for device in distinct}
        if len(resolved) != 1:  # cannot happen with pick_devices (one device type), but say so if it does
            raise ValueError(f"precision {precision!r} resolves differently across {distinct}: {sorted(resolved)}")
        self.precision = resolved.pop()
        self._replicas = {device: for_inference(model, self.precision, device) for device in distinct}
        self.sample_rate = model.sample_rate
        self.rate = RateEstimate()
        self._local = threading.local()
        self._next_index = itertools.count()
        self._on_batch_done = on_batch_done

    def _device(self) -> torch.device:
        # Each pool thread sticks to one device, so N threads on N GPUs never share a replica.
        index = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = next(self._next_index)
        return self.devices[index % len(self.devices)]

    def __call__(self, clips: list[np.ndarray]) -> list[WindowOutput]:
        """Args: clips: (L_i,) float32 windows at the model's rate. Returns: one WindowOutput each."""
        device = self._device()
        model = self._replicas[device]
        started = time.monotonic()
        with torch.inference_mode():
            outputs = model.log_probs_batch(clips, device=device)
        elapsed = time.monotonic() - started
        self._on_batch_done(elapsed)
        self.rate.observe(sum(len(clip) for clip in clips) / self.sample_rate, elapsed)
        return [WindowOutput(lp, started, elapsed) for lp in outputs]

    def warm_up(self, sample_rate: int, long_window_s: float | None = None) -> None:
        """Runs every replica once on silence, so the first request pays no lazy-init cost.

        With ``long_window_s``, one window of that length runs twice more, the second time timed: the
        first measure of ``rate``, so long requests are admitted by a measured speed from the start.
        """
        clips = [np.zeros(sample_rate, dtype=np.float32), np.zeros(sample_rate // 2, dtype=np.float32)]
        for device in self._replicas:
            if any(not np.isfinite(lp).all() for lp in self.outputs(clips, device)):
                raise RuntimeError("warm-up produced non-finite log-probs")
        if long_window_s:
            window = [np.zeros(round(long_window_s * sample_rate), dtype=np.float32)]
            self.outputs(window)
            started = time.monotonic()
            self.outputs(window)
            self.rate.observe(long_window_s, time.monotonic() - started)

    def outputs(self, clips: list[np.ndarray], device: torch.device | None = None) -> list[np.ndarray]:
        """Log-probs of ``clips`` from one replica (the first by default), outside the batcher's accounting."""
        device = device if device is not None else next(iter(self._replicas))
        with torch.inference_mode():
            return self._replicas[device].log_probs_batch(clips, device=device)

    def close(self) -> None:
        """Drops the replicas; on GPU also returns cached blocks to the driver."""
        on_gpu = any(d.type == "cuda" for d in self._replicas)
        self._replicas.clear()
        if on_gpu:
            torch.cuda.empty_cache()
