"""Engine: the one object both transports call; owns models, batchers, worker pools and decoding.

Flow of ``transcribe``: check the request -> lease a model version -> cut long audio into
windows -> queue each window on that version's DynamicBatcher -> an InferenceWorker runs
the batch -> stitch the windows' log-probs -> decode in the decode pool -> result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lm.model_lm import recorded_lm
from model.audio_stream import AudioStream
from model.card import model_card
from model.checkpoint import load_model, read_config
from model.precision import resolve_precision
from model.registry import RegistryError, Registry
from service.batcher import BatcherHooks, DynamicBatcher
from service.config import ServiceConfig
from service.decoding import CTCDecoding, DecodingPlan, plan_decoding
from service.domain import (Alternative, DeadlineExceededError, LogProbsResult, PayloadTooLargeError, QueueFullError,
                            RequestError, WrongModelKindError,
                            ServiceUnavailableError, TranscriptionRequest, TranscriptionResult)
from service.long_audio import plan_windows, stitch_log_probs
from service.metrics import Metrics
from service.model_slot import LoadedModel, ModelLoadError, ModelSlot
from service.worker import InferenceWorker, WindowOutput, pick_devices

log = logging.getLogger(__name__)


_PATH = re.compile(r"(?<![\w.])/[^\s:'\"()]+")


def without_paths(message: str) -> str:
    """A message with the server's file paths taken out: clients learn what failed, not where files live."""
    return " ".join(_PATH.sub("<path>", message).split())


class Engine:
    """Serves transcriptions for every transport. Build it with ``await Engine.start(config)``.

    Attributes:
        config: the ServiceConfig it was started with.
        metrics: Prometheus metrics (the gRPC layer updates ``metrics.active_streams``).
        slot: loaded model versions and the active pointer.
    """

    def __init__(self, config: ServiceConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.registry = Registry(config.registry)
        self.devices = pick_devices(config.device, config.num_cpu_workers)
        # A precision this hardware cannot run is a configuration error: refuse to start, never fall back.
        self.precision = resolve_precision(config.precision, self.devices[0])
        self._inference_pool = ThreadPoolExecutor(len(self.devices), thread_name_prefix="asr-infer")
        self._decode_pool = ThreadPoolExecutor(config.beam_pool_workers, thread_name_prefix="asr-decode")
        self.decoding = CTCDecoding(self.registry, max_cached_lms=config.beam.max_cached_lms)
        self.slot = ModelSlot(self.registry, self._load_version, self._unload_version,
                              max_loaded=config.max_loaded_models, on_change=self._publish_model_info)
        self.startup_error: str | None = None
        self._draining = False
        self._in_flight = 0
        self._buffered_s = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    async def start(cls, config: ServiceConfig, *, metrics: Metrics | None = None) -> "Engine":
        """Builds an engine and loads + warms its models (see ``load_initial_models``)."""
        engine = cls(config, metrics)
        await engine.load_initial_models()
        return engine

    async def load_initial_models(self) -> None:
        """Loads and warms the default model (made active) and every ``preload_models`` entry.

        Raises:
            UnknownModelError / ModelLoadError: the default model is missing or broken
            (the message is also kept in ``startup_error`` for /health/ready).
        """
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        try:
            name, _, version = self.config.default_model.partition("@")
            await self.slot.activate(name, int(version) if version and version != "latest" else None)
            for spec in self.config.preload_models:
                await self.slot.get(self.slot.resolve_key(spec))
        except Exception as e:
            self.startup_error = f"default model {self.config.default_model!r} failed to load: {e}"
            raise

    # --- state --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a model is loaded and warmed, until draining starts."""
        return self.slot.active is not None and not self._draining

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def resolve_model(self, spec: str | None) -> tuple[str, int, int]:
        """Maps NAME[@VERSION] (None/"default" = active) to (name, version, sample_rate); loads nothing.

        Raises:
            UnknownModelError: no such model or version. RequestError: malformed spec.
        """
        name, version = self.slot.resolve_key(spec)
        for model in self.slot.loaded():
            if model.key == (name, version):
                return name, version, model.sample_rate
        try:
            ref = self.registry.resolve(f"{name}@{version}")
            kind = self.registry.metadata(ref).get("kind", "model")
            if kind != "model":
                raise WrongModelKindError(
                    f"{name}@{version} is a {'language model' if kind == 'lm' else repr(kind)}, not an acoustic "
                    "model" + (": pass it as lm, with the beam decoder" if kind == "lm" else ""))
            config = read_config(ref.path)
        except RegistryError as e:
            log.warning("cannot read %s@%s: %s", name, version, e)
            raise ModelLoadError(f"cannot read model {name}@{version}: {without_paths(str(e))}") from None
        return name, version, int(config["sample_rate"])

    def list_models(self) -> list[dict]:
        """Loaded versions: name, version, state (active|loaded), sample_rate, frame_duration_s, default_lm."""
        active = self.slot.active
        return [{"name": m.name, "version": m.version, "state": "active" if m is active else "loaded",
                 "sample_rate": m.sample_rate, "frame_duration_s": m.frame_duration_s,
                 "default_lm": m.default_lm, "in_flight": m.leases, "card": m.card} for m in self.slot.loaded()]

    def registry_models(self) -> list[dict]:
        """Every acoustic-model version in the registry with its state: active, loaded or available."""
        states = {(m["name"], m["version"]): m["state"] for m in self.list_models()}
        entries = []
        for entry in self.registry.list():
            if entry.get("kind", "model") != "model":
                continue
            state = states.get((entry["name"], entry["version"]), "available")
            entries.append({k: entry.get(k) for k in ("name", "version", "created_at", "source", "metrics", "error")}
                           | {"state": state, "card": self._card(entry["name"], entry["version"])})
        return entries

    def _card(self, name: str, version: int) -> dict | None:
        try:
            ref = self.registry.resolve(f"{name}@{version}")
            return model_card(self.registry.metadata(ref), read_config(ref.path))
        except RegistryError:
            return None  # a broken version is still listed, with its error

    async def activate(self, name: str, version: int | None = None) -> LoadedModel:
        """Hot-swaps the active model (see ModelSlot.activate)."""
        return await self.slot.activate(name, version)

    async def rollback(self) -> LoadedModel:
        return await self.slot.rollback()

    # --- requests -----------------------------------------------------------------------

    async def transcribe(self, req: TranscriptionRequest) -> TranscriptionResult:
        """Transcribes one clip end to end.

        Transports call it inside ``admit()``, which is what counts a request as in flight.

        Raises:
            RequestError and subclasses (bad parameters, unknown model, queue full, deadline,
            too long, unavailable); any other exception is an internal error.
        """
        started = time.monotonic()
        deadline = self._deadline(req.deadline_s, started)
        async with self.slot.lease(req.model) as model:
            plan = plan_decoding(req, self.config.beam, model.recorded_lm)
            self.decoding.check_lm(plan.lm.spec)
            duration_s = self._check_audio(req.audio, model.sample_rate)
            with self._buffered_audio(self._window_budget_s(duration_s)):
                log_probs, queue_s, inference_s = await self._acoustic(model, req.audio, deadline)
            decode_started = time.monotonic()
            alternatives = await self._decode_in_pool(log_probs, model, plan)
            decode_s = time.monotonic() - decode_started
        self.metrics.audio_seconds.inc(duration_s)
        if duration_s > 0:
            self.metrics.real_time_factor.observe((inference_s + decode_s) / duration_s)
        best = alternatives[0]
        timings = {"queue_s": round(queue_s, 6), "inference_s": round(inference_s, 6), "decode_s": round(decode_s, 6),
                   "total_s": round(time.monotonic() - started, 6), "precision": model.precision}
        return TranscriptionResult(best.text, best.words, alternatives, round(duration_s, 4), model.name,
                                   model.version, req.decoder, timings)

    async def log_probs(self, audio: np.ndarray, model: str | None, *, deadline_s: float | None = None,
                        api: str = "grpc") -> LogProbsResult:
        """Acoustic model only, batched like ``transcribe``; for streaming and custom decoders.

        Args:
            audio: (L,) float32 mono at the model's sample rate (see ``resolve_model``).
            model: NAME[@VERSION]; None/"default" = the active model.
            deadline_s: absolute ``time.monotonic()`` deadline (None: request_timeout_s from now).
            api: transport label (kept for symmetry with TranscriptionRequest).
        """
        started = time.monotonic()
        async with self.slot.lease(model) as loaded:
            self._check_audio(audio, loaded.sample_rate)
            log_probs, _, _ = await self._acoustic(loaded, audio, self._deadline(deadline_s, started))
        return LogProbsResult(log_probs, loaded.frame_duration_s, loaded.labels, loaded.name, loaded.version)

    async def decode(self, lp: LogProbsResult, req: TranscriptionRequest) -> TranscriptionResult:
        """Decodes log-probs from ``log_probs`` with ``req``'s decoder settings, in the decode pool."""
        plan = self._plan_for(lp, req)
        started = time.monotonic()
        alternatives = await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, self.decoding.decode, lp.log_probs, lp.labels, lp.frame_duration_s, plan)
        return self._result_from(lp, req, alternatives, time.monotonic() - started)

    # --- internals ----------------------------------------------------------------------

    def _plan_for(self, lp: LogProbsResult, req: TranscriptionRequest) -> DecodingPlan:
        recorded = next((m.recorded_lm for m in self.slot.loaded()
                         if m.key == (lp.model_name, lp.model_version)), {})
        plan = plan_decoding(req, self.config.beam, recorded)
        self.decoding.check_lm(plan.lm.spec)
        return plan

    @staticmethod
    def _result_from(lp: LogProbsResult, req: TranscriptionRequest, alternatives: tuple[Alternative, ...],
                     decode_s: float) -> TranscriptionResult:
        best = alternatives[0]
        return TranscriptionResult(best.text, best.words, alternatives,
                                   round(len(lp.log_probs) * lp.frame_duration_s, 4), lp.model_name,
                                   lp.model_version, req.decoder, {"decode_s": round(decode_s, 6)})

    def _deadline(self, deadline_s: float | None, now: float) -> float:
        budget = now + self.config.request_timeout_s
        return budget if deadline_s is None else min(deadline_s, budget)

    def _check_audio(self, audio: np.ndarray | AudioStream, sample_rate: int) -> float:
        if isinstance(audio, AudioStream):
            if audio.sample_rate != sample_rate:
                raise RequestError(f"audio was opened at {audio.sample_rate} Hz for a {sample_rate} Hz model")
            samples = audio.num_samples
        else:
            if not isinstance(audio, np.ndarray) or audio.ndim != 1:
                raise RequestError("audio must be a 1-D array of mono samples")
            samples = audio.size
        if samples == 0:
            raise RequestError("audio is empty (0 samples)")
        duration_s = samples / sample_rate
        self.check_duration(duration_s)
        return duration_s

    def check_duration(self, duration_s: float) -> None:
        """Refuses audio over ``max_audio_duration_s`` (413); transports call it on a file's header."""
        if duration_s > self.config.max_audio_duration_s:
            raise PayloadTooLargeError(f"audio is {duration_s:.1f} s long; the limit is "
                                       f"{self.config.max_audio_duration_s:.0f} s")

    @contextlib.asynccontextmanager
    async def admit(self):
        """A request's whole life, from its first byte: refused while draining, counted in flight until it ends.

        Raises:
            ServiceUnavailableError: the server is draining (503 / UNAVAILABLE).
        """
        if self._draining:
            raise ServiceUnavailableError("server is shutting down; retry on another instance")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _window_budget_s(self, duration_s: float) -> float:
        """Decoded audio a request holds at once: all of it, or its windows in flight for long audio."""
        cfg = self.config
        return min(duration_s, cfg.long_audio_windows_in_flight * (cfg.long_audio_window_s + cfg.long_audio_overlap_s))

    @contextlib.contextmanager
    def _buffered_audio(self, seconds: float):
        """Reserves ``seconds`` of the server-wide decoded-audio budget, or refuses with 429."""
        limit = self.config.max_buffered_audio_s
        if self._buffered_s + seconds > limit and self._buffered_s > 0:
            raise QueueFullError(f"the server holds {self._buffered_s:.0f} s of decoded audio; the limit is "
                                 f"{limit:.0f} s, so retry shortly")
        self._buffered_s += seconds
        try:
            yield
        finally:
            self._buffered_s -= seconds

    async def _acoustic(self, model: LoadedModel, audio: np.ndarray, deadline: float
                        ) -> tuple[np.ndarray, float, float]:
        """Runs every window through the batcher; returns (stitched log-probs, queue_s, inference_s)."""
        if isinstance(audio, AudioStream):
            num_samples = audio.num_samples
        else:
            audio = np.ascontiguousarray(audio, dtype=np.float32)
            num_samples = len(audio)
        windows = plan_windows(num_samples, model.sample_rate, model.frame_duration_s,
                               window_s=self.config.long_audio_window_s, overlap_s=self.config.long_audio_overlap_s)
        # One long file must neither fill the whole queue nor hold all its audio: a few windows at a time.
        gate = asyncio.Semaphore(max(1, min(self.config.max_batch_size, self.config.long_audio_windows_in_flight)))

        async def run(window) -> tuple[WindowOutput, float]:
            async with gate:
                if isinstance(audio, AudioStream):  # decoded now, from the file, and dropped after its batch
                    clip = await asyncio.to_thread(audio.read, window.start_sample, window.end_sample)
                else:
                    clip = audio[window.start_sample:window.end_sample]
                submitted = time.monotonic()
                out = await model.batcher.submit(clip, size_key=len(clip), deadline=deadline)
                return out, max(0.0, out.started_at - submitted)

        tasks = [asyncio.ensure_future(run(w)) for w in windows]
        try:
            done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise DeadlineExceededError("deadline exceeded while the audio was being processed") from None
        finally:
            for task in tasks:
                task.cancel()
        outputs = [out for out, _ in done]
        queue_s = max(wait for _, wait in done)
        # Windows of one request can share a batch; count each batch's compute once.
        inference_s = sum({out.started_at: out.inference_s for out in outputs}.values())
        return stitch_log_probs(windows, [out.log_probs for out in outputs]), queue_s, inference_s

    async def _decode_in_pool(self, log_probs: np.ndarray, model: LoadedModel,
                              plan: DecodingPlan) -> tuple[Alternative, ...]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, self.decoding.decode, log_probs, model.labels,
                                          model.frame_duration_s, plan)

    async def _load_version(self, name: str, version: int) -> LoadedModel:
        """ModelSlot loader: read + verify the artifact, build the worker, warm up, attach a batcher."""
        spec = f"{name}@{version}"

        def load() -> tuple:
            recognizer, ref, metadata = load_model(self.registry, spec)
            config = read_config(ref.path)
            lm, card = recorded_lm(config), model_card(metadata, config)
            worker = InferenceWorker(recognizer, self.devices, precision=self.precision,
                                     on_batch_done=self.metrics.inference_duration.observe)
            worker.warm_up(recognizer.sample_rate)
            return recognizer, worker, lm, card

        started = time.monotonic()
        try:
            recognizer, worker, lm, card = await asyncio.to_thread(load)
        except Exception as e:  # noqa: BLE001 - any failure here must leave the old version serving
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("cannot load model %s: %s", spec, detail)
            raise ModelLoadError(f"cannot load model {spec}: {without_paths(detail)}") from e
        log.info("loaded and warmed %s in %.2f s", spec, time.monotonic() - started)
        cfg = self.config
        metrics = self.metrics
        hooks = BatcherHooks(on_queue_wait=metrics.queue_wait.observe, on_batch=metrics.batch_size.observe,
                             on_depth_change=metrics.queue_depth.inc)
        batcher = DynamicBatcher(worker, self._inference_pool, max_batch_size=cfg.max_batch_size,
                                 max_queue_delay_ms=cfg.max_queue_delay_ms, max_queue_size=cfg.max_queue_size,
                                 max_batch_padded_size=cfg.max_batch_audio_s * recognizer.sample_rate,
                                 max_concurrent_batches=len(self.devices), hooks=hooks, name=f"batcher[{spec}]")
        return LoadedModel(name, version, recognizer.sample_rate, recognizer.frame_duration_s,
                           tuple(recognizer.vocabulary.labels), lm, batcher, worker,
                           precision=worker.precision, card=card)

    async def _unload_version(self, model: LoadedModel) -> None:
        await model.batcher.stop()
        await asyncio.to_thread(model.worker.close)

    def _publish_model_info(self) -> None:
        active = self.slot.active
        self.metrics.set_models([(m.name, m.version, "active" if m is active else "loaded") for m in self.slot.loaded()])

    def begin_drain(self) -> None:
        """Readiness turns false and new requests get ServiceUnavailableError; in-flight ones go on."""
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no request is in flight; returns False if ``timeout_s`` passed first."""
        if self._idle.is_set():  # wait_for with timeout 0 would time out before checking
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
            return True
        except asyncio.TimeoutError:
            log.warning("drain timeout: %d requests still in flight after %.1f s", self._in_flight, timeout_s)
            return False

    async def drain_and_stop(self, timeout_s: float) -> None:
        """Stops taking requests (ready -> False), waits up to ``timeout_s`` for in-flight ones, then unloads."""
        self.begin_drain()
        await self.wait_idle(timeout_s)
        await self.slot.close()
        self._inference_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
