"""ServiceConfig: every serving knob, read from ``ASR_*`` environment variables or passed explicitly.

Nested fields use ``__`` (e.g. ``ASR_BEAM__WIDTH_MAX=128``); lists are JSON
(``ASR_PRELOAD_MODELS='["an4-quartznet@7"]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lm.beam import DEFAULT_ALPHA, DEFAULT_BEAM_WIDTH, DEFAULT_BETA, DEFAULT_HOTWORD_WEIGHT
from model.long_audio import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S


def _default_registry() -> Path:
    from model.registry import default_registry_root

    return default_registry_root()


class BeamConfig(BaseModel):
    """Defaults and per-request limits of the beam-search decoder (``ASR_BEAM__*``)."""

    width: int = Field(DEFAULT_BEAM_WIDTH, ge=1)
    """Beam width used when a request does not set one (the CLI's default too)."""
    width_max: int = Field(256, ge=1)
    """Largest beam width a request may ask for; more is rejected with 400."""
    alpha: float = DEFAULT_ALPHA
    """LM weight (shallow fusion) when neither the request nor the model's recorded LM sets one (lm.model_lm)."""
    alpha_min: float = 0.0
    """Smallest LM weight a request may set."""
    alpha_max: float = 5.0
    """Largest LM weight a request may set."""
    beta: float = DEFAULT_BETA
    """Per-word bonus when neither the request nor the model's recorded LM sets one."""
    beta_min: float = -5.0
    """Smallest per-word bonus a request may set."""
    beta_max: float = 10.0
    """Largest per-word bonus a request may set."""
    hotword_boost: float = DEFAULT_HOTWORD_WEIGHT
    """Boost for a hotword given without ``:boost`` (pyctcdecode ``hotword_weight``, log-score units)."""
    hotword_boost_max: float = 100.0
    """Largest hotword boost a request may set (absolute value)."""
    max_hotwords: int = Field(100, ge=0)
    """Most hotword phrases one request may send."""
    max_alternatives: int = Field(10, ge=1)
    """Most N-best alternatives one request may ask for."""
    max_cached_lms: int = Field(4, ge=1)
    """How many loaded language models (and their decoders) to keep in memory."""

    @model_validator(mode="after")
    def _check_ranges(self) -> "BeamConfig":
        if not (self.alpha_min <= self.alpha <= self.alpha_max):
            raise ValueError(f"beam alpha {self.alpha} is outside [{self.alpha_min}, {self.alpha_max}]")
        if not (self.beta_min <= self.beta <= self.beta_max):
            raise ValueError(f"beam beta {self.beta} is outside [{self.beta_min}, {self.beta_max}]")
        if self.width > self.width_max:
            raise ValueError(f"beam width {self.width} exceeds width_max {self.width_max}")
        return self


class ServiceConfig(BaseSettings):
    """Everything the server reads at start-up; pass it to ``create_app`` / ``run_server``."""

    model_config = SettingsConfigDict(env_prefix="ASR_", env_nested_delimiter="__", extra="ignore")

    # --- models -------------------------------------------------------------------------
    registry: Path = Field(default_factory=_default_registry)
    """Model registry root ($ASR_REGISTRY, else ./registry, else the per-user registry: model.registry)."""
    default_model: str = "an4-quartznet"
    """NAME[@VERSION] served when a request names no model (or "default"/an OpenAI model id); or a hub source
    (``hf:ORG/REPO``, ``ngc:ORG/TEAM/MODEL:VERSION``, an https URL of a .nemo), pulled into the registry on the
    first start (interop.pull) and served by its registry name from then on."""
    preload_models: list[str] = Field(default_factory=list)
    """Extra NAME[@VERSION] specs loaded and warmed at start-up next to the default."""
    registry_poll_s: float = Field(2.0, gt=0)
    """How often the server reads the registry's desired state (the active version of the model it serves,
    which ``asr models activate`` or any replica's admin API writes) and converges to it, and writes its
    heartbeat beside it (model.fleet). Plain polling, so NFS and Kubernetes ReadWriteMany volumes work."""
    replica_id: str | None = None
    """This server's name in fleet status; default HOSTNAME:HTTP_PORT (a pod's name on Kubernetes)."""
    max_loaded_models: int = Field(4, ge=1)
    """Bound of the loaded-model cache; on-demand loads evict the least recently used idle model."""
    device: Literal["cpu", "cuda", "auto"] = "auto"
    """Inference device; "auto" picks CUDA when available."""
    precision: Literal["fp32", "bf16", "fp16", "int8", "auto"] = "auto"
    """Inference precision of every loaded model ($ASR_PRECISION): "auto" is bf16 on CUDA and on CPUs
    with native bf16, else fp32; a choice the device cannot run stops the server at start-up."""

    # --- network ------------------------------------------------------------------------
    http_host: str = "0.0.0.0"
    """Interface the REST server binds."""
    http_port: int = Field(8000, ge=0, le=65535)
    """REST port."""
    grpc_port: int = Field(50051, ge=0, le=65535)
    """gRPC port; 0 disables gRPC."""

    # --- batching -----------------------------------------------------------------------
    max_batch_size: int = Field(16, ge=1)
    """Most audio windows in one forward pass; 1 disables dynamic batching."""
    max_batch_audio_s: float = Field(120.0, gt=0)
    """Most padded audio in one forward pass (windows x the longest), so that batches of long
    windows stay small in memory; a single longer window still runs alone."""
    max_queue_delay_ms: float = Field(10.0, ge=0)
    """How long the oldest queued window may wait for a batch to fill."""
    max_queue_size: int = Field(256, ge=1)
    """Queued windows per model beyond which new requests get 429 / RESOURCE_EXHAUSTED."""
    num_cpu_workers: int = Field(1, ge=1)
    """Inference threads on CPU (on GPU: one worker per visible GPU)."""
    torch_threads: int | None = Field(None, ge=1)
    """torch intra-op threads; None lets torch decide."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Server-side budget of a request that sets no deadline, plus ``request_timeout_per_audio_s`` per
    second of its audio; expired queued work gets 504 (service.admission)."""
    request_timeout_per_audio_s: float = Field(0.1, ge=0)
    """Seconds added to a request's budget per second of its audio (an hour: 60 + 354 s), so long audio
    gets time in proportion to its length; a client's own deadline still applies when it is sooner."""

    # --- limits -------------------------------------------------------------------------
    max_audio_bytes: int = Field(50 * 1024 * 1024, ge=1)
    """Largest upload (encoded bytes); counted while streaming, over it -> 413."""
    max_import_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    """Largest .nemo file POST /admin/models/import accepts (bytes); over it -> 413."""
    max_audio_duration_s: float = Field(3600.0, gt=0)
    """Longest decoded audio accepted; over it -> 413."""
    long_audio_window_s: float = Field(DEFAULT_WINDOW_S, gt=0)
    """Audio longer than this is cut into overlapping windows so memory stays bounded."""
    long_audio_overlap_s: float = Field(DEFAULT_OVERLAP_S, ge=0)
    """Overlap between consecutive windows; the seam sits at its midpoint."""
    long_audio_windows_in_flight: int = Field(4, ge=1)
    """Windows of one long recording decoded and queued at once; its memory follows this, not its length."""
    long_audio_batch_audio_s: float = Field(32.0, gt=0)
    """Most padded audio in one forward pass of long recordings' windows (one window by default), so a
    short request arriving meanwhile waits for one window's compute at most."""
    long_audio_decode_workers: int = Field(1, ge=1)
    """Threads that decode long recordings' windows, apart from the pool short requests decode in."""
    max_buffered_audio_s: float = Field(1800.0, gt=0)
    """Audio all requests and streams together may hold, in seconds at the model's rate (service.budget:
    a second is its samples plus its log-probs, 132 kB for the default model); a request or stream that
    would go over it gets 429 / RESOURCE_EXHAUSTED."""
    stream_idle_timeout_s: float = Field(30.0, gt=0)
    """A stream (gRPC or WebSocket) that sends nothing for this long is closed with a timeout status."""

    # --- decoding -----------------------------------------------------------------------
    beam: BeamConfig = Field(default_factory=BeamConfig)
    """Beam-search defaults and request limits (``ASR_BEAM__*``)."""
    beam_pool_workers: int = Field(2, ge=1)
    """Threads for beam search, kept apart from the inference workers."""

    # --- security -----------------------------------------------------------------------
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer tokens the transcription APIs accept (REST, OpenAI, gRPC metadata ``authorization``);
    empty (the default) leaves them open. JSON list: ``ASR_API_KEYS='["key1","key2"]'``."""
    tls_cert_file: Path | None = None
    """PEM certificate (chain) for HTTPS and gRPC over TLS; with ``tls_key_file``."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""

    # --- operations ---------------------------------------------------------------------
    admin_token: SecretStr | None = None
    """Bearer token of /admin/*; unset disables the admin API."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM: how long in-flight requests may run before the server stops anyway."""

    @model_validator(mode="after")
    def _check(self) -> "ServiceConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        if any(not key.get_secret_value() for key in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        if self.long_audio_overlap_s * 2 >= self.long_audio_window_s:
            raise ValueError(f"long_audio_overlap_s ({self.long_audio_overlap_s}) must be under half of "
                             f"long_audio_window_s ({self.long_audio_window_s})")
        return self
