"""InferenceWorker: runs one batch of audio windows through a model version (featurize -> forward).

The batcher calls a worker from its inference thread pool. The worker knows nothing about
HTTP, gRPC or decoding; it returns the valid log-prob frames of each window.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from model.recognizer import SpeechRecognizer

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class WindowOutput:
    """Result of one batch item.

    Attributes:
        log_probs: (T, V+1) float32, valid frames only.
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
    """Callable batch function over one model version, replicated once per distinct device.

    Args:
        model: the loaded model (eval mode, CPU); moved or copied to each device.
        devices: one entry per worker thread (see ``pick_devices``).
        precision: "fp32", "fp16" or "bf16"; autocast applies on CUDA only.
        on_batch_done: called with each batch's compute seconds (metrics).
        batch_hook: called before every batch in the worker thread (tests inject delays/faults).
    """

    def __init__(self, model: SpeechRecognizer, devices: list[torch.device], *, precision: str = "fp32",
                 on_batch_done: Callable[[float], None] = lambda s: None,
                 batch_hook: Callable[[], None] | None = None) -> None:
        self.devices = devices
        self.precision = precision
        self._replicas: dict[torch.device, SpeechRecognizer] = {}
        for device in dict.fromkeys(devices):  # distinct, in order
            self._replicas[device] = model if device.type == "cpu" else _copy_to(model, device)
        self._local = threading.local()
        self._next_index = itertools.count()
        self._on_batch_done = on_batch_done
        self.batch_hook = batch_hook

    def _device(self) -> torch.device:
        # Each pool thread sticks to one device, so N threads on N GPUs never share a replica.
        index = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = next(self._next_index)
        return self.devices[index % len(self.devices)]

    def __call__(self, clips: list[np.ndarray]) -> list[WindowOutput]:
        """Args: clips: (L_i,) float32 windows at the model's rate. Returns: one WindowOutput each."""
        if self.batch_hook is not None:
            self.batch_hook()
        device = self._device()
        model = self._replicas[device]
        started = time.monotonic()
        with torch.inference_mode(), self._autocast(device):
            outputs = model.log_probs_batch(clips, device=device)
        elapsed = time.monotonic() - started
        self._on_batch_done(elapsed)
        return [WindowOutput(lp, started, elapsed) for lp in outputs]

    def _autocast(self, device: torch.device):
        if device.type == "cuda" and self.precision in _AUTOCAST_DTYPES:
            return torch.autocast("cuda", dtype=_AUTOCAST_DTYPES[self.precision])
        return contextlib.nullcontext()

    def warm_up(self, sample_rate: int) -> None:
        """Runs every replica once on silence, so the first request pays no lazy-init cost."""
        clips = [np.zeros(sample_rate, dtype=np.float32), np.zeros(sample_rate // 2, dtype=np.float32)]
        for device, model in self._replicas.items():
            with torch.inference_mode(), self._autocast(device):
                outputs = model.log_probs_batch(clips, device=device)
            if any(not np.isfinite(lp).all() for lp in outputs):
                raise RuntimeError("warm-up produced non-finite log-probs")

    def close(self) -> None:
        """Drops the replicas; on GPU also returns cached blocks to the driver."""
        on_gpu = any(d.type == "cuda" for d in self._replicas)
        self._replicas.clear()
        if on_gpu:
            torch.cuda.empty_cache()


def _copy_to(model: SpeechRecognizer, device: torch.device) -> SpeechRecognizer:
    import copy

    return copy.deepcopy(model).to(device).eval()
