"""Engine: the one object both transports call; owns models, batchers, worker pools and decoding.

Flow of ``transcribe``: check the request -> lease a model version -> give it a deadline for
its length and admit it (service.admission) -> reserve its memory (service.budget) -> cut long
audio into windows -> queue a few windows at a time on that version's DynamicBatcher (long
recordings behind short requests) -> an InferenceWorker runs each batch -> each window's frames
are decoded in time order as they come, in the decode pool for the request's kind -> result.
Nothing holds a whole recording's samples or log-probs, and a request that ends early (a client
gone, a deadline) stops at its next window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lm.model_lm import recorded_lm
from model.allocator import release_free_memory, share_arenas
from model.audio_stream import AudioStream
from model.card import model_card
from model.checkpoint import load_model, read_config
from model.precision import resolve_precision
from model.registry import RegistryError, Registry
from service.admission import LongJob, admit_long, request_deadline
from service.batcher import BatcherHooks, DynamicBatcher
from service.budget import AudioBudget
from service.config import ServiceConfig
from service.decoding import CTCDecoding, DecodingPlan, plan_decoding
from service.domain import (DeadlineExceededError, LogProbsResult, PayloadTooLargeError, RequestError,
                            WrongModelKindError, ServiceUnavailableError, TranscriptionRequest, TranscriptionResult)
from service.errors import public_message, without_paths
from model.long_audio import AudioWindow, plan_windows
from service.metrics import Metrics
from service.model_slot import DEFAULT_ALIASES, LoadedModel, ModelLoadError, ModelSlot
from service.replica import Replica
from service.worker import InferenceWorker, pick_devices

log = logging.getLogger(__name__)

# Batcher priorities: a short request's window goes before a long recording's.
_SHORT, _LONG = 0, 1
# The nice value of the threads that read and decode long recordings (0 is normal, 19 the lowest).
_BACKGROUND_NICE = 10


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
        share_arenas()  # before the engine's threads exist (model.allocator)
        self.registry = Registry(config.registry)
        self.devices = pick_devices(config.device, config.num_cpu_workers)
        # A precision this hardware cannot run is a configuration error: refuse to start, never fall back.
        self.precision = resolve_precision(config.precision, self.devices[0])
        self._inference_pool = ThreadPoolExecutor(len(self.devices), thread_name_prefix="asr-infer")
        # Pools per kind of work, so an hour-long file's reading and decoding never queue ahead of a short
        # request's; the long kind's threads also yield the CPU to everything else (_background_thread).
        self._decode_pools = {
            _SHORT: ThreadPoolExecutor(config.beam_pool_workers, thread_name_prefix="asr-decode"),
            _LONG: ThreadPoolExecutor(config.long_audio_decode_workers, thread_name_prefix="asr-decode-long",
                                      initializer=_background_thread)}
        self._read_pools = {
            _SHORT: ThreadPoolExecutor(2, thread_name_prefix="asr-read"),
            _LONG: ThreadPoolExecutor(config.long_audio_windows_in_flight, thread_name_prefix="asr-read-long",
                                      initializer=_background_thread)}
        self.budget = AudioBudget(config.max_buffered_audio_s)
        self.metrics.buffered_audio.set_function(lambda: self.budget.held_s)
        self._long_jobs: list[LongJob] = []
        self._trim: asyncio.Task | None = None
        self.decoding = CTCDecoding(self.registry, max_cached_lms=config.beam.max_cached_lms)
        self.slot = ModelSlot(self.registry, self._load_version, self._unload_version,
                              max_loaded=config.max_loaded_models, on_change=self._publish_model_info)
        self.startup_error: str | None = None
        self.startup_warnings: list[str] = []
        self.replica = Replica(self)
        self._follower: asyncio.Task | None = None
        self._draining = False
        self._in_flight = 0
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

        ``default_model`` NAME serves the version the registry records as active for NAME
        (``Registry.record_active``: what the last activation or rollback chose), else its newest
        version. If that one cannot be loaded, the next older version that can is served, and why
        is kept in ``startup_warnings``: a broken new version never keeps a server down. NAME@N
        serves exactly N. A preload that fails is a warning too.

        Raises:
            UnknownModelError / ModelLoadError: no version of the default model can be loaded
            (the message is also kept in ``startup_error`` for /health/ready).
        """
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        try:
            await self._pull_default_model()
        except Exception as e:
            self.startup_error = f"default model {self.config.default_model!r} could not be pulled: {public_message(e)}"
            raise
        name, _, version = self.config.default_model.partition("@")
        try:
            if version and version != "latest":
                await self.slot.activate(name, int(version))
            else:
                await self._activate_recorded(name)
        except Exception as e:
            self.startup_error = f"default model {self.config.default_model!r} failed to load: {public_message(e)}"
            raise
        for spec in self.config.preload_models:
            try:
                await self.slot.get(self.slot.resolve_key(spec))
            except Exception as e:  # noqa: BLE001 - the default model serves; say what did not load
                self._warn(f"preloading {spec!r} failed: {public_message(e)}")
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(
                self.replica.follow_registry(pinned=bool(version) and version != "latest"))

    async def _pull_default_model(self) -> None:
        """``ASR_DEFAULT_MODEL=hf:...`` (or ``ngc:``, a URL): pulled into the registry on the first start only.

        Later starts find the version pulled from that source and serve the model by its registry
        name, offline included.
        """
        from interop.hubs import is_source, parse_source

        spec = self.config.default_model
        if not is_source(spec):
            return
        from interop.pull import pull_model, pulled_from

        name = parse_source(spec).default_name
        ref = await asyncio.to_thread(pulled_from, self.registry, name, spec)
        if ref is None:
            log.info("the registry has no %s from %s: pulling it", name, spec)
            ref = (await asyncio.to_thread(pull_model, self.registry, spec, by="ASR_DEFAULT_MODEL")).ref
            log.info("pulled %s as %s", spec, ref)
        # The settings object is shared by every transport (ListModels shows it): from now on it names the
        # registry model, whose versions the replica follows as it does for any other default model.
        self.config.default_model = ref.name

    async def _activate_recorded(self, name: str) -> None:
        """Activates the recorded active version of ``name``, else the newest that loads (see above)."""
        try:
            state = await asyncio.to_thread(self.registry.serving_state, name)
        except RegistryError as e:
            self._warn(f"{public_message(e)}; serving the newest version of {name!r} that loads")
            state = {"active": None, "history": []}
        recorded = state["active"]
        versions = sorted(self.registry.versions(name), reverse=True)
        if recorded is not None and recorded not in versions:
            self._warn(f"the recorded active version {name}@{recorded} is not in the registry; serving the newest "
                       f"version of {name!r} that loads")
        candidates = ([recorded] if recorded in versions else []) + [v for v in versions if v != recorded]
        if not candidates:
            await self.slot.activate(name)  # raises UnknownModelError naming what the registry has
        failures = []
        for candidate in candidates:
            try:
                await self.slot.activate(name, candidate)
                break
            except (ModelLoadError, RequestError) as e:
                failures.append(public_message(e))
                self._warn(f"{name}@{candidate} was not served: {failures[-1]}")
        else:
            raise ModelLoadError(f"no version of {name!r} could be loaded: {'; '.join(failures)}")
        previous = state["history"][-1].get("previous") if state["history"] else None
        if recorded == candidate and previous is not None:
            self.slot.remember_previous(name, previous)  # a rollback after a restart goes where it would have

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.startup_warnings.append(message)

    # --- state --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a model is loaded and warmed, until draining starts."""
        return self.slot.active is not None and not self._draining

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def draining(self) -> bool:
        return self._draining

    def resolve_model(self, spec: str | None, request_id: str | None = None) -> tuple[str, int, int]:
        """Maps NAME[@VERSION] (None/"default" = active) to (name, version, sample_rate); loads nothing.

        While a canary runs, a request naming no version goes to the candidate if its ``request_id``
        falls in the canary's share (service.canary; no id: a random one).

        Raises:
            UnknownModelError: no such model or version. RequestError: malformed spec.
        """
        name, version = self._route(spec, request_id)
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

    def _route(self, spec: str | None, request_id: str | None) -> tuple[str, int]:
        name, version = self.slot.resolve_key(spec)
        unversioned = spec in DEFAULT_ALIASES or "@" not in str(spec) or str(spec).endswith("@latest")
        return name, self.replica.route(name, version, request_id) if unversioned else version

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

    async def activate(self, name: str, version: int | None = None, *, by: str | None = None) -> LoadedModel:
        """Hot-swaps the active model (see ModelSlot.activate) and records it in the registry, so a restart serves it."""
        model = await self.slot.activate(name, version)
        await self._record(model, "activate", by)
        return model

    async def rollback(self, *, by: str | None = None) -> LoadedModel:
        """Re-activates the version that was active before the last activation, and records it."""
        model = await self.slot.rollback()
        await self._record(model, "rollback", by)
        return model

    async def _record(self, model: LoadedModel, action: str, by: str | None) -> None:
        try:
            await asyncio.to_thread(self.registry.record_active, model.name, model.version, action=action, by=by)
        except (OSError, RegistryError) as e:  # a read-only registry still serves; it cannot remember
            log.warning("%s@%s is active but could not be recorded in the registry: %s", model.name, model.version, e)

    # --- requests -----------------------------------------------------------------------

    async def transcribe(self, req: TranscriptionRequest) -> TranscriptionResult:
        """Transcribes one clip end to end.

        Transports call it inside ``admit()``, which is what counts a request as in flight.

        Raises:
            RequestError and subclasses (bad parameters, unknown model, queue full, deadline,
            too long, too short, unavailable); any other exception is an internal error.
        """
        started = time.monotonic()
        async with self.slot.lease(req.model) as model:
            plan = plan_decoding(req, self.config.beam, model.recorded_lm)
            self.decoding.check_lm(plan.lm.spec)
            duration_s = self._check_audio(req.audio, model)
            deadline = request_deadline(started, duration_s, req.deadline_s, timeout_s=self.config.request_timeout_s,
                                        timeout_per_audio_s=self.config.request_timeout_per_audio_s)
            windows = self._windows(model, req.audio)
            kind = _LONG if len(windows) > 1 else _SHORT
            job = admit_long(duration_s, model.worker.rate, deadline - time.monotonic(),
                             self._long_jobs) if kind == _LONG else None
            with self._judged(model, started), self._long_job(job), \
                    self.budget.reserve(self._held_s(req.audio, duration_s), "request"):
                alternatives, queue_s, inference_s, decode_s = await self._transcribe_windows(
                    model, req.audio, windows, deadline, kind, plan, job)
        self.metrics.audio_seconds.inc(duration_s)
        self.metrics.real_time_factor.observe((inference_s + decode_s) / duration_s)
        best = alternatives[0]
        timings = {"queue_s": round(queue_s, 6), "inference_s": round(inference_s, 6), "decode_s": round(decode_s, 6),
                   "total_s": round(time.monotonic() - started, 6), "precision": model.precision}
        return TranscriptionResult(best.text, best.words, alternatives, round(duration_s, 4), model.name,
                                   model.version, req.decoder, timings)

    async def _transcribe_windows(self, model: LoadedModel, audio: np.ndarray | AudioStream,
                                  windows: tuple[AudioWindow, ...], deadline: float, kind: int, plan: DecodingPlan,
                                  job: LongJob | None) -> tuple[tuple, float, float, float]:
        """Runs the windows and decodes each one's frames as it comes, in the decode pool of ``kind``.

        Returns:
            (alternatives, longest queue wait, inference seconds, decode seconds).
        """
        pool = self._decode_pools[kind]
        loop = asyncio.get_running_loop()
        decode = await loop.run_in_executor(pool, self.decoding.start, model.labels, model.frame_duration_s, plan)

        async def feed(window: AudioWindow, frames: np.ndarray) -> None:
            await loop.run_in_executor(pool, decode.feed, frames)
            if job is not None:
                job.remaining_audio_s = max(0.0, job.remaining_audio_s - len(frames) * model.frame_duration_s)

        queue_s, inference_s, decode_s = await self._run_windows(model, audio, windows, deadline, kind, feed)
        finish_started = time.monotonic()
        alternatives = await self._before(deadline, loop.run_in_executor(pool, decode.finish))
        return alternatives, queue_s, inference_s, decode_s + time.monotonic() - finish_started

    @contextlib.contextmanager
    def _judged(self, model: LoadedModel, started: float):
        """Counts a call on ``model`` for the canary gate; failed if it was the version's fault (its internal
        errors and missed deadlines), not the client's (bad input, a full queue)."""
        try:
            yield
        except Exception as exc:
            failed = isinstance(exc, DeadlineExceededError) or not isinstance(exc, RequestError)
            self.replica.observe(model, time.monotonic() - started, failed)
            raise
        self.replica.observe(model, time.monotonic() - started, failed=False)

    async def log_probs(self, audio: np.ndarray, model: str | None, *, deadline_s: float | None = None,
                        api: str = "grpc", interim: bool = False) -> LogProbsResult:
        """Acoustic model only, batched like ``transcribe``; for streaming and custom decoders.

        Audio shorter than one output frame has no frames (streams may commit a few ms).

        Args:
            audio: (L,) float32 mono at the model's sample rate (see ``resolve_model``).
            model: NAME[@VERSION]; None/"default" = the active model.
            deadline_s: absolute ``time.monotonic()`` deadline (None: request_timeout_s from now).
            api: transport label (kept for symmetry with TranscriptionRequest).
            interim: the cheap path of an ensemble (its first member alone, (T, V+1) frames) for a stream's
                interim windows; a single network has one path and ignores it.
        """
        started = time.monotonic()
        async with self.slot.lease(model) as loaded:
            cheap = interim and loaded.interim_batcher is not None
            frame_shape = (len(loaded.labels) + 1,) if cheap else loaded.frame_shape
            if isinstance(audio, np.ndarray) and audio.ndim == 1 and 0 < audio.size < _min_samples(loaded):
                frames = np.zeros((0, *frame_shape), dtype=np.float32)
                return LogProbsResult(frames, loaded.frame_duration_s, loaded.labels, loaded.name, loaded.version)
            duration_s = self._check_audio(audio, loaded)
            deadline = request_deadline(started, duration_s, deadline_s, timeout_s=self.config.request_timeout_s,
                                        timeout_per_audio_s=self.config.request_timeout_per_audio_s)
            parts: list[np.ndarray] = []

            async def collect(window: AudioWindow, frames: np.ndarray) -> None:
                parts.append(frames)

            with self._judged(loaded, started):  # a stream's steps count for the canary gate as requests do
                await self._run_windows(loaded, audio, self._windows(loaded, audio), deadline, _SHORT, collect,
                                        batcher=loaded.interim_batcher if cheap else None)
        log_probs = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return LogProbsResult(log_probs, loaded.frame_duration_s, loaded.labels, loaded.name, loaded.version)

    async def decode(self, lp: LogProbsResult, req: TranscriptionRequest) -> TranscriptionResult:
        """Decodes log-probs from ``log_probs`` with ``req``'s decoder settings, in the decode pool."""
        plan = self._plan_for(lp, req)
        started = time.monotonic()

        def run() -> tuple:
            decode = self.decoding.start(lp.labels, lp.frame_duration_s, plan)
            decode.feed(lp.log_probs)
            return decode.finish()

        alternatives = await asyncio.get_running_loop().run_in_executor(self._decode_pools[_SHORT], run)
        return self._result_from(lp, req, alternatives, time.monotonic() - started)

    # --- internals ----------------------------------------------------------------------

    def _plan_for(self, lp: LogProbsResult, req: TranscriptionRequest) -> DecodingPlan:
        recorded = next((m.recorded_lm for m in self.slot.loaded()
                         if m.key == (lp.model_name, lp.model_version)), {})
        plan = plan_decoding(req, self.config.beam, recorded)
        self.decoding.check_lm(plan.lm.spec)
        return plan

    @staticmethod
    def _result_from(lp: LogProbsResult, req: TranscriptionRequest, alternatives: tuple,
                     decode_s: float) -> TranscriptionResult:
        best = alternatives[0]
        return TranscriptionResult(best.text, best.words, alternatives,
                                   round(len(lp.log_probs) * lp.frame_duration_s, 4), lp.model_name,
                                   lp.model_version, req.decoder, {"decode_s": round(decode_s, 6)})

    def _check_audio(self, audio: np.ndarray | AudioStream, model: LoadedModel) -> float:
        """The audio's duration in seconds, once it is known to be usable by ``model``.

        Raises:
            RequestError: not mono samples, another rate, empty or shorter than one output frame.
            PayloadTooLargeError: longer than ``max_audio_duration_s``.
        """
        if isinstance(audio, AudioStream):
            if audio.sample_rate != model.sample_rate:
                raise RequestError(f"audio was opened at {audio.sample_rate} Hz for a {model.sample_rate} Hz model")
            samples = audio.num_samples
        else:
            if not isinstance(audio, np.ndarray) or audio.ndim != 1:
                raise RequestError("audio must be a 1-D array of mono samples")
            samples = audio.size
        if samples == 0:
            raise RequestError("audio is empty (0 samples)")
        if samples < _min_samples(model):
            raise RequestError(f"audio is {1000 * samples / model.sample_rate:.1f} ms long; {model} needs at least "
                               f"{1000 * model.frame_duration_s:.0f} ms (one output frame)")
        duration_s = samples / model.sample_rate
        self.check_duration(duration_s)
        return duration_s

    def check_duration(self, duration_s: float) -> None:
        """Refuses audio over ``max_audio_duration_s`` (413); transports call it on a file's header."""
        if duration_s > self.config.max_audio_duration_s:
            raise PayloadTooLargeError(f"audio is {duration_s:.1f} s long; the limit is "
                                       f"{self.config.max_audio_duration_s:.0f} s")

    @contextlib.asynccontextmanager
    async def admit(self, *, refuse_if_draining: bool = True):
        """A request's whole life, from its first byte: refused while draining, counted in flight until it ends.

        ``refuse_if_draining=False`` is for a transport that stops taking calls itself when the drain begins (gRPC
        sends GOAWAY and refuses new streams, which clients and balancers retry elsewhere): a call it already took
        is served, since an UNAVAILABLE status sent from inside the call comes after its request was consumed, and
        a balancer cannot send that request to another replica.

        Raises:
            ServiceUnavailableError: the server is draining (503 / UNAVAILABLE).
        """
        if self._draining and refuse_if_draining:
            raise ServiceUnavailableError("server is shutting down; retry on another instance")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _windows(self, model: LoadedModel, audio: np.ndarray | AudioStream) -> tuple[AudioWindow, ...]:
        num_samples = audio.num_samples if isinstance(audio, AudioStream) else len(audio)
        return plan_windows(num_samples, model.sample_rate, model.frame_duration_s,
                            window_s=self.config.long_audio_window_s, overlap_s=self.config.long_audio_overlap_s)

    def _held_s(self, audio: np.ndarray | AudioStream, duration_s: float) -> float:
        """Seconds of the memory budget a request holds (service.budget).

        An in-memory clip is held whole. A file read a window at a time holds its windows in
        flight, one more whose frames are being decoded, and the decoder's pending segment
        (at most one long-audio window of frames, model.segments).
        """
        cfg = self.config
        window_s = cfg.long_audio_window_s + cfg.long_audio_overlap_s
        working = min(duration_s, (cfg.long_audio_windows_in_flight + 1) * window_s + cfg.long_audio_window_s)
        return working + (0.0 if isinstance(audio, AudioStream) else duration_s)

    @contextlib.contextmanager
    def _long_job(self, job: LongJob | None):
        """Counts a long request's remaining work for admission, and trims the heap once the server is idle after it."""
        if job is None:
            yield
            return
        self._long_jobs.append(job)
        try:
            yield
        finally:
            self._long_jobs.remove(job)
            if not self._long_jobs and (self._trim is None or self._trim.done()):
                self._trim = asyncio.get_running_loop().create_task(self._trim_when_idle())

    async def _trim_when_idle(self) -> None:
        """Hands the heap's free pages back once no request is in flight (model.allocator.release_free_memory)."""
        await self._idle.wait()
        await asyncio.to_thread(release_free_memory)

    async def _before(self, deadline: float, work: Awaitable):
        """Awaits ``work``, or raises DeadlineExceededError once ``deadline`` (``time.monotonic()``) passes."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await work
        except TimeoutError:
            raise DeadlineExceededError("deadline exceeded while the audio was being processed") from None

    async def _run_windows(self, model: LoadedModel, audio: np.ndarray | AudioStream,
                           windows: tuple[AudioWindow, ...], deadline: float, priority: int,
                           consume: Callable[[AudioWindow, np.ndarray], Awaitable[None]], *,
                           batcher: DynamicBatcher | None = None) -> tuple[float, float, float]:
        """Runs ``windows`` through the batcher (``model.batcher`` unless given) and hands each one's kept
        frames to ``consume``, in time order.

        At most ``long_audio_windows_in_flight`` windows are read or queued at once, and a window
        counts until ``consume`` has taken it, so a slow decoder holds back reading, not memory.
        If the request ends early (deadline, cancellation, an error), windows not yet run are
        dropped and the audio is read no further.

        Returns:
            (longest queue wait, compute seconds of the batches it ran in, seconds in ``consume``).
        """
        limit = max(1, min(self.config.max_batch_size, self.config.long_audio_windows_in_flight))
        upcoming = iter(windows)
        in_flight: deque[asyncio.Task] = deque()
        queue_s = consume_s = 0.0
        batches: dict[float, float] = {}  # windows of one request can share a batch: count its compute once

        async def run_all() -> None:
            nonlocal queue_s, consume_s
            while True:
                while len(in_flight) < limit and (window := next(upcoming, None)) is not None:
                    task = asyncio.ensure_future(self._window(batcher or model.batcher, audio, window, deadline,
                                                              priority))
                    task.add_done_callback(_retrieve)  # a window's failure after the request ended is not news
                    in_flight.append(task)
                if not in_flight:
                    return
                window, out, wait_s = await in_flight[0]
                in_flight.popleft()
                queue_s = max(queue_s, wait_s)
                batches[out.started_at] = out.inference_s
                consume_started = time.monotonic()
                await consume(window, window.kept(out.log_probs))
                consume_s += time.monotonic() - consume_started

        try:
            await self._before(deadline, run_all())
        finally:
            for task in in_flight:
                task.cancel()
        return queue_s, sum(batches.values()), consume_s

    async def _window(self, batcher: DynamicBatcher, audio: np.ndarray | AudioStream, window: AudioWindow,
                      deadline: float, priority: int):
        if isinstance(audio, AudioStream):  # decoded now, from the file, and dropped once consumed
            clip = await asyncio.get_running_loop().run_in_executor(self._read_pools[priority], audio.read,
                                                                    window.start_sample,
                                                                    window.end_sample)
        else:
            clip = audio[window.start_sample:window.end_sample]
        submitted = time.monotonic()
        out = await batcher.submit(np.ascontiguousarray(clip, dtype=np.float32), size_key=len(clip),
                                   deadline=deadline, priority=priority)
        return window, out, max(0.0, out.started_at - submitted)

    async def _load_version(self, name: str, version: int) -> LoadedModel:
        """ModelSlot loader: read + verify the artifact, build the worker, warm up, attach a batcher."""
        spec = f"{name}@{version}"

        def load() -> tuple:
            recognizer, ref, metadata = load_model(self.registry, spec)
            config = read_config(ref.path)
            lm, card = recorded_lm(config), model_card(metadata, config)
            worker = InferenceWorker(recognizer, self.devices, precision=self.precision,
                                     on_batch_done=self.metrics.inference_duration.observe)
            worker.warm_up(recognizer.sample_rate, self.config.long_audio_window_s + self.config.long_audio_overlap_s)
            interim = None
            if recognizer.num_views > 1:
                _check_members(recognizer, worker)
                # Streams' windows (interims, endpoints) run one member, not every view: finals still come from
                # one pass of the whole ensemble over the segment, so only the interims' cost changes.
                interim = InferenceWorker(recognizer.members[0], self.devices, precision=self.precision,
                                          on_batch_done=self.metrics.inference_duration.observe)
                interim.warm_up(recognizer.sample_rate)
            return recognizer, worker, lm, card, interim

        started = time.monotonic()
        try:
            recognizer, worker, lm, card, interim_worker = await asyncio.to_thread(load)
        except Exception as e:  # noqa: BLE001 - any failure here must leave the old version serving
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("cannot load model %s: %s", spec, detail)
            raise ModelLoadError(f"cannot load model {spec}: {without_paths(detail)}") from e
        log.info("loaded and warmed %s in %.2f s", spec, time.monotonic() - started)
        cfg = self.config
        metrics = self.metrics
        hooks = BatcherHooks(on_queue_wait=metrics.queue_wait.observe, on_batch=metrics.batch_size.observe,
                             on_depth_change=metrics.queue_depth.inc)
        def batcher_for(runner, label: str) -> DynamicBatcher:
            return DynamicBatcher(runner, self._inference_pool, max_batch_size=cfg.max_batch_size,
                                  max_queue_delay_ms=cfg.max_queue_delay_ms, max_queue_size=cfg.max_queue_size,
                                  max_batch_padded_size=cfg.max_batch_audio_s * recognizer.sample_rate,
                                  max_low_priority_padded_size=cfg.long_audio_batch_audio_s * recognizer.sample_rate,
                                  max_concurrent_batches=len(self.devices), hooks=hooks, name=f"{label}[{spec}]")

        return LoadedModel(name, version, recognizer.sample_rate, recognizer.frame_duration_s,
                           tuple(recognizer.vocabulary.labels), lm, batcher_for(worker, "batcher"), worker,
                           precision=worker.precision, card=card, views=recognizer.num_views,
                           interim_batcher=batcher_for(interim_worker, "interim") if interim_worker else None,
                           interim_worker=interim_worker)

    async def _unload_version(self, model: LoadedModel) -> None:
        await model.batcher.stop()
        await asyncio.to_thread(model.worker.close)
        if model.interim_batcher is not None:
            await model.interim_batcher.stop()
            await asyncio.to_thread(model.interim_worker.close)

    def _publish_model_info(self) -> None:
        active = self.slot.active
        self.metrics.set_models([(m.name, m.version, "active" if m is active else "loaded") for m in self.slot.loaded()])

    def begin_drain(self) -> None:
        """Readiness turns false and new requests get ServiceUnavailableError; in-flight ones go on."""
        self._draining = True
        if self._follower is not None:
            self._follower.cancel()

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
        for pool in (self._inference_pool, *self._read_pools.values(), *self._decode_pools.values()):
            pool.shutdown(wait=False, cancel_futures=True)


def _check_members(ensemble, worker: InferenceWorker) -> None:
    """Refuses an ensemble with a member that is broken or hears other words than the rest (model.agreement)."""
    from model.agreement import MAX_MEMBER_DISAGREEMENT, member_disagreement
    from model.int8 import calibration_clips

    members = len(ensemble.members)
    outputs = worker.outputs(calibration_clips(ensemble.sample_rate))
    rates = member_disagreement(outputs, members, ensemble.vocabulary.labels, ensemble.frame_duration_s)
    bad = [(m, rate) for m, rate in enumerate(rates) if not rate <= MAX_MEMBER_DISAGREEMENT]
    if bad:
        said = ", ".join(f"member {m} {'gives non-finite output' if rate == float('inf') else f'{rate:.2f}'}"
                         for m, rate in bad)
        raise RuntimeError(f"ensemble members disagree on the calibration speech ({said}; character edits per "
                           f"character of the ensemble's transcript, limit {MAX_MEMBER_DISAGREEMENT})")


def _background_thread() -> None:
    """Lowers the calling thread's CPU priority (Linux: a thread's nice value is its own), so that reading and
    decoding hour-long files take the cores only when short requests and inference leave them idle."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _min_samples(model: LoadedModel) -> int:
    """The shortest audio a model gives a frame for: one output frame."""
    return math.ceil(model.frame_duration_s * model.sample_rate)
