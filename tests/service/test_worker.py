"""service.worker: pick_devices, and InferenceWorker's per-clip outputs, per-device replicas, warm-up and close."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import service.worker as worker_module
from model.precision import PrecisionError
from service.worker import InferenceWorker, WindowOutput, pick_devices
from tests.service.conftest import tiny_model

# The worker runs model.inference's fp32 form (BN folded into the convs in float64, rounded once), the
# reference is the eager model: they differ by float32 rounding through the layers, ~1e-5 on these
# log-probs; tests/model/test_inference.py justifies the same 1e-4 bound. A wrong clip-to-output
# mapping or padding leaking into valid frames moves log-probs by 1e-2 or more.
FP32_ATOL = 1e-4
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8_000, 3_200, 11_000)]


class FakeReplica:
    """Stands in for an inference form: records (thread, device) per call and returns fixed log-probs."""

    def __init__(self, device: torch.device, value: float = -1.0) -> None:
        self.device = device
        self.value = value
        self.calls: list[tuple[int, torch.device]] = []

    def log_probs_batch(self, clips, device=None):
        self.calls.append((threading.get_ident(), device))
        return [np.full((len(c) // 320, 29), self.value, dtype=np.float32) for c in clips]


@pytest.fixture
def fake_forms(monkeypatch) -> list[FakeReplica]:
    """Replaces model.inference.for_inference in the worker; the list holds every replica it built."""
    built: list[FakeReplica] = []

    def fake_for_inference(model, precision, device):
        built.append(FakeReplica(torch.device(device)))
        return built[-1]

    monkeypatch.setattr(worker_module, "for_inference", fake_for_inference)
    return built


# --- pick_devices -----------------------------------------------------------------------------------


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback on a machine without CUDA")
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_pick_devices_without_cuda_gives_the_cpu_once_per_worker(device) -> None:
    assert pick_devices(device, 3) == [torch.device("cpu")] * 3
    assert pick_devices(device, 1) == [torch.device("cpu")]


def test_pick_devices_cpu_ignores_any_gpu() -> None:
    assert pick_devices("cpu", 2) == [torch.device("cpu")] * 2


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_pick_devices_refuses_cuda_on_a_machine_without_it() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_devices("cuda", 2)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_pick_devices_with_cuda_gives_every_visible_gpu_once(device) -> None:
    expected = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    assert pick_devices(device, 5) == expected


def test_worker_refuses_a_device_it_cannot_run_on(model) -> None:
    with pytest.raises(PrecisionError, match="not supported"):
        InferenceWorker(model, [torch.device("meta")], precision="fp32")
    with pytest.raises(PrecisionError, match="unknown precision"):
        InferenceWorker(model, [torch.device("cpu")], precision="fp8")


# --- InferenceWorker on a real tiny model -------------------------------------------------------------


def test_worker_returns_one_window_output_per_clip_matching_the_model(model, clips) -> None:
    batch_seconds: list[float] = []
    worker = InferenceWorker(model, pick_devices("cpu", 2), precision="fp32", on_batch_done=batch_seconds.append)
    assert worker.precision == "fp32"
    before = time.monotonic()
    outputs = worker(clips)
    after = time.monotonic()
    expected = model.log_probs_batch(clips)
    assert len(outputs) == len(clips) and all(isinstance(o, WindowOutput) for o in outputs)
    for output, want in zip(outputs, expected):
        assert output.log_probs.dtype == np.float32 and output.log_probs.shape == want.shape
        np.testing.assert_allclose(output.log_probs, want, atol=FP32_ATOL)
    # Every item of a batch shares its batch's start time and compute seconds, reported once to the hook.
    assert len({o.started_at for o in outputs}) == 1 and len({o.inference_s for o in outputs}) == 1
    assert before <= outputs[0].started_at <= after
    assert batch_seconds == [outputs[0].inference_s] and 0 <= outputs[0].inference_s <= after - before
    worker.close()


def test_worker_output_of_a_clip_does_not_depend_on_its_batch(model, clips) -> None:
    worker = InferenceWorker(model, [torch.device("cpu")], precision="fp32")
    together = worker(clips)
    for clip, output in zip(clips, together):
        (alone,) = worker([clip])
        np.testing.assert_allclose(output.log_probs, alone.log_probs, atol=FP32_ATOL)
    worker.close()


def test_warm_up_then_close(model, clips) -> None:
    worker = InferenceWorker(model, [torch.device("cpu")], precision="fp32")
    worker.warm_up(model.sample_rate)
    assert len(worker(clips[:1])) == 1  # still serves after warming up
    worker.close()
    worker.close()  # closing twice is harmless


# --- InferenceWorker's device handling, with fake inference forms ----------------------------------------


def test_one_replica_is_built_per_distinct_device(model, fake_forms) -> None:
    InferenceWorker(model, [torch.device("cpu")] * 3, precision="fp32")
    assert [r.device for r in fake_forms] == [torch.device("cpu")]
    fake_forms.clear()
    InferenceWorker(model, [torch.device("cpu", 0), torch.device("cpu", 1), torch.device("cpu", 0)], precision="fp32")
    assert [r.device for r in fake_forms] == [torch.device("cpu", 0), torch.device("cpu", 1)]


def test_each_pool_thread_sticks_to_one_device_and_threads_do_not_share_one(model, fake_forms) -> None:
    devices = [torch.device("cpu", 0), torch.device("cpu", 1)]
    worker = InferenceWorker(model, devices, precision="fp32")
    both_running = threading.Barrier(2, timeout=5)  # makes the pool use two distinct threads

    def run_batches() -> int:
        both_running.wait()
        for _ in range(3):
            worker([np.zeros(3_200, dtype=np.float32)])
        return threading.get_ident()

    with ThreadPoolExecutor(2) as pool:
        threads = set(pool.map(lambda _: run_batches(), range(2)))
    assert len(threads) == 2
    by_thread: dict[int, set] = {}
    for replica in fake_forms:
        for thread, device in replica.calls:
            assert device == replica.device  # each replica runs on its own device
            by_thread.setdefault(thread, set()).add(device)
    assert set(by_thread) == threads
    assert all(len(used) == 1 for used in by_thread.values())  # one device per thread
    assert set.union(*by_thread.values()) == set(devices)  # and the two threads use different ones


def test_precision_resolving_differently_across_devices_is_refused(model, fake_forms, monkeypatch) -> None:
    monkeypatch.setattr(worker_module, "resolve_precision", lambda precision, device: "fp32" if device.index else "bf16")
    with pytest.raises(ValueError, match="resolves differently"):
        InferenceWorker(model, [torch.device("cpu", 0), torch.device("cpu", 1)], precision="auto")


def test_warm_up_runs_every_replica_and_refuses_non_finite_output(model, fake_forms) -> None:
    worker = InferenceWorker(model, [torch.device("cpu", 0), torch.device("cpu", 1)], precision="fp32")
    worker.warm_up(16_000)
    for replica in fake_forms:
        assert [device for _, device in replica.calls] == [replica.device]
    fake_forms[1].value = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        worker.warm_up(16_000)


def test_close_drops_the_replicas(model, fake_forms) -> None:
    worker = InferenceWorker(model, [torch.device("cpu")], precision="fp32")
    replica = weakref.ref(fake_forms.pop())
    worker([np.zeros(1_600, dtype=np.float32)])
    worker.close()
    gc.collect()
    assert replica() is None
