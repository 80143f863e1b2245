"""The training configuration tree (TrainConfig), its YAML loader with dotted overrides, and validation."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from model.errors import ASRError
from model.network_config import BlockConfig
from model.presets import PRESETS, preset_config
from model.vocabulary import ENGLISH_LABELS, Vocabulary
from training.augment import AugmentConfig

_PUBLISH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

PositiveInt = Annotated[int, Field(ge=1)]


class ConfigError(ASRError, ValueError):
    """An invalid training config; the message has one ``field.path: problem`` line per error."""

    code = "bad_config"


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt option silently keeping its default is worse.
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """Which network to build: a named preset or an explicit block list (exactly one)."""

    preset: str | None = None
    # model.network_config.BlockConfig, field for field: its defaults and its checks.
    blocks: list[BlockConfig] | None = None
    # The CTC labels, blank excluded (model.vocabulary.Vocabulary checks them).
    labels: tuple[str, ...] = ENGLISH_LABELS
    frontend: Literal["nemo25", "nemo24"] = "nemo25"

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")  # model's table
        return preset

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        return Vocabulary(labels).labels  # its ValueError names the problem

    @model_validator(mode="after")
    def _preset_xor_blocks(self) -> ModelConfig:
        if (self.preset is None) == (self.blocks is None):
            raise ValueError("set exactly one of model.preset or model.blocks")
        if self.blocks is not None and not self.blocks:
            raise ValueError("model.blocks must list at least one block")
        return self


class ManifestConfig(_Section):
    """A NeMo manifest and its repeat weight in the mix (0.5 = a random half, 2 = twice)."""

    path: str
    weight: Annotated[float, Field(gt=0.0)] = 1.0


class DataConfig(_Section):
    """Where utterances come from and how they are batched."""

    train_manifests: Annotated[list[ManifestConfig], Field(min_length=1)]
    val_manifests: list[ManifestConfig] = Field(default_factory=list)
    # Speakers (an audio file's parent folder name) moved from the training to the validation set.
    holdout_speakers: list[str] = Field(default_factory=list)
    sample_rate: PositiveInt = 16_000
    # NeMo's QuartzNet recipe: 16.7 s maximum, 32 utterances per GPU.
    max_duration_s: Annotated[float, Field(gt=0.0)] = 16.7
    min_duration_s: Annotated[float, Field(ge=0.0)] = 0.0
    # With max_batch_audio_s set, batch_size becomes the upper bound on utterances per batch.
    batch_size: PositiveInt = 32
    max_batch_audio_s: Annotated[float, Field(gt=0.0)] | None = None
    num_buckets: PositiveInt = 30
    num_loader_workers: Annotated[int, Field(ge=0)] = 2

    @model_validator(mode="after")
    def _duration_range(self) -> DataConfig:
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError(f"min_duration_s ({self.min_duration_s}) must be below "
                             f"max_duration_s ({self.max_duration_s})")
        return self


class OptimConfig(_Section):
    """Optimiser and schedule; defaults are NeMo's current QuartzNet YAML (NovoGrad)."""

    name: Literal["novograd", "adamw"] = "novograd"
    lr: Annotated[float, Field(gt=0.0)] = 0.01
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.8, 0.5)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.001
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0
    epochs: PositiveInt = 100
    grad_clip_norm: Annotated[float, Field(gt=0.0)] | None = None
    grad_accum_steps: PositiveInt = 1
    # Peak lr of the decoder's own param group; None uses lr for everything.
    decoder_lr: Annotated[float, Field(gt=0.0)] | None = None

    @model_validator(mode="after")
    def _floor_below_peak(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class ScalingConfig(_Section):
    """How many Ray Train workers, on what; ``ray_address`` defaults to $RAY_ADDRESS (None: local)."""

    num_workers: PositiveInt = 1
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0.0)] = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0.0)] = 1.0
    ray_address: str | None = Field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    # How Ray places the workers: SPREAD puts them on as many nodes as it can (each node's CPUs, memory
    # bandwidth and disks work for the job; gradients cross the network once per step), PACK on as few.
    # Either is best effort: workers go wherever there is room rather than wait. STRICT_* demand it.
    placement_strategy: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = "SPREAD"


class LossConfig(_Section):
    """Auxiliary CTC losses on inner blocks; their heads are training-only unless self-conditioning."""

    # Intermediate CTC (Lee & Watanabe, 2021): 1x1-conv CTC heads on inner encoder blocks, their
    # mean loss mixed in as (1 - w) * final + w * intermediate. The lower blocks must then emit
    # transcribable features themselves, a regulariser that removes no input. 0 turns it off.
    inter_ctc_weight: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # 0-based indices of the tapped encoder blocks; empty taps the middle one (len(blocks) // 2).
    inter_ctc_blocks: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    # Self-conditioned CTC (Nozaki & Komatsu, 2021): the intermediate heads' posteriors are also
    # projected back into the encoder, so later blocks refine the earlier prediction. The heads
    # then belong to the model and are published with it (inference runs them too).
    self_conditioning: bool = False

    @field_validator("inter_ctc_blocks")
    @classmethod
    def _distinct_blocks(cls, blocks: list[int]) -> list[int]:
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks must be distinct, got {blocks}")
        return sorted(blocks)

    @model_validator(mode="after")
    def _conditioning_needs_heads(self) -> LossConfig:
        if self.self_conditioning and self.inter_ctc_weight == 0:
            raise ValueError("self_conditioning needs inter_ctc_weight > 0: the heads it feeds back are "
                             "trained by the intermediate CTC loss")
        return self

    def blocks_for(self, block_count: int) -> tuple[int, ...]:
        """The blocks the intermediate heads read in a model of ``block_count`` blocks; empty when off."""
        if self.inter_ctc_weight == 0:
            return ()
        return tuple(self.inter_ctc_blocks) or (block_count // 2,)


class DistillConfig(_Section):
    """Knowledge distillation from a registry model run on the fly (training.distill).

    The loss is ``ctc_weight * CTC(transcript) + kl_weight * KL + pseudo_label_weight * CTC(teacher's
    transcript)``; the first term uses the teacher's transcript for manifest lines without text.
    """

    # Registry NAME[@VERSION] of the teacher: one network, or an ensemble (with speed views).
    teacher: str
    kl_weight: Annotated[float, Field(ge=0.0)] = 1.0
    ctc_weight: Annotated[float, Field(ge=0.0)] = 1.0
    pseudo_label_weight: Annotated[float, Field(ge=0.0)] = 0.0
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    # The KL target (training.distill): per_view | mean | best_view on every frame, or token (each
    # token's label distribution at its own peak frame, for teachers whose frames the student's do not match).
    targets: Literal["per_view", "mean", "best_view", "token"] = "per_view"
    # The teacher's inference precision (model.precision); auto is bf16 where the CPU has it.
    teacher_precision: Literal["fp32", "bf16", "int8", "auto"] = "auto"
    # Clean utterances whose targets each worker keeps (about 8 kB each for 3 s of AN4 audio).
    cache_items: Annotated[int, Field(ge=0)] = 50_000

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.kl_weight == 0 and self.pseudo_label_weight == 0:
            raise ValueError("distill needs kl_weight > 0 or pseudo_label_weight > 0 (else the teacher is unused)")
        if self.kl_weight == 0 and self.ctc_weight == 0 and self.pseudo_label_weight == 0:
            raise ValueError("every distill loss weight is 0")
        return self


class RunConfig(_Section):
    """Where results go, seeding, logging cadence and fine-tuning."""

    output_dir: str = "runs/quartznet"
    registry: str | None = None
    publish_name: str = "quartznet"
    seed: int = 0
    log_every_steps: PositiveInt = 50
    checkpoint_every_epochs: PositiveInt = 1
    # Where Ray Train keeps checkpoints: a folder every node sees (NFS, a shared volume) or any URI Ray
    # accepts (s3://, gs://); None keeps them in output_dir/ray, which suits one machine only.
    storage_path: str | None = None
    # Worker or node failures Ray Train recovers from by itself: it restarts the whole worker group
    # from the latest checkpoint, with the same number of workers, on whichever nodes have room (it
    # waits until they do), so the run continues without a person. 0 lets the first failure end the
    # run (a rerun with the same --run-name resumes it). Errors in the config or data fail every
    # attempt alike, so keep it small.
    max_failures: Annotated[int, Field(ge=0)] = 0
    # Extra mid-epoch resume checkpoints every N optimiser steps; None writes only per epoch.
    checkpoint_every_steps: PositiveInt | None = None
    # Stop once validation WER has not improved for this many epochs (the best epoch is still
    # the one published); None trains all optim.epochs. Needs validation data.
    early_stop_patience_epochs: PositiveInt | None = None
    # A registry spec NAME[@VERSION] or a path to a .nemo archive.
    fine_tune_from: str | None = None
    freeze_encoder: bool = False
    # For the last N of optim.epochs, BatchNorm statistics are recalibrated over one pass of the
    # training data and then kept fixed, so training normalises exactly as inference does. An
    # early stop before those epochs skips them; a fine-tuning run can freeze all its epochs.
    freeze_bn_last_epochs: PositiveInt | None = None
    # Average the weights at the end of each of the last N epochs (N <= freeze_bn_last_epochs,
    # so all share the same fixed BatchNorm statistics). From the second epoch on, the average
    # is validated too and published if it beats every single epoch. Pair it with a learning
    # rate that stays well above zero in those epochs, or the snapshots barely differ.
    average_last_epochs: PositiveInt | None = None

    @field_validator("publish_name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not _PUBLISH_NAME.fullmatch(name):
            raise ValueError(f"publish_name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]*")
        return name

    @model_validator(mode="after")
    def _average_needs_fixed_bn(self) -> RunConfig:
        if self.average_last_epochs is not None and (self.freeze_bn_last_epochs is None
                                                     or self.average_last_epochs > self.freeze_bn_last_epochs):
            raise ValueError("run.average_last_epochs must not exceed run.freeze_bn_last_epochs: averaged weights "
                             "are only coherent while BatchNorm statistics are fixed")
        return self

    @model_validator(mode="after")
    def _freeze_needs_weights(self) -> RunConfig:
        if self.freeze_encoder and self.fine_tune_from is None:
            raise ValueError("run.freeze_encoder needs run.fine_tune_from (a frozen random encoder learns nothing)")
        return self


class TrainConfig(_Section):
    """Everything one training run needs; ``model`` and ``data`` are required, the rest has defaults."""

    model: ModelConfig
    data: DataConfig
    # training.augment.AugmentConfig, field for field: its defaults and its checks.
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    # fp16 needs a GradScaler and CUDA kernels; bf16 autocast also runs on CPU.
    amp: Literal["off", "fp16", "bf16"] = "off"
    sync_bn: bool = False
    loss: LossConfig = Field(default_factory=LossConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    # Distillation from a teacher in the registry; None trains on the transcripts alone.
    distill: DistillConfig | None = None

    @field_validator("amp")
    @classmethod
    def _fp16_needs_gpu(cls, amp: str, info: ValidationInfo) -> str:
        # scaling is declared before amp, so it is already validated here (absent if invalid).
        scaling = info.data.get("scaling")
        if amp == "fp16" and scaling is not None and not scaling.use_gpu:
            raise ValueError("fp16 needs scaling.use_gpu=true; use bf16 or off on CPU")
        return amp

    @model_validator(mode="after")
    def _inter_ctc_blocks_inside(self) -> TrainConfig:
        if self.loss.inter_ctc_weight > 0:
            count = block_count(self.model)
            blocks = self.loss.blocks_for(count)
            if max(blocks) >= count - 1:
                default = "" if self.loss.inter_ctc_blocks else " (the middle block, taken when none is listed)"
                raise ValueError(f"loss.inter_ctc_blocks must be below the last block's index {count - 1}, "
                                 f"got {list(blocks)}{default}")
        return self


def block_count(model: ModelConfig) -> int:
    """Encoder blocks the model config builds (its validator guarantees a preset or a block table)."""
    if model.blocks is not None:
        return len(model.blocks)
    return len(preset_config(model.preset, len(model.labels)).blocks)


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Reads a YAML training config and applies ``dotted.key=value`` overrides.

    Each override's value is parsed with ``yaml.safe_load`` ("0.01" is a float, "[0.9, 1.1]"
    a list, "null" None); list items are addressed by index (``data.train_manifests.0.path=...``).

    Args:
        path: the YAML file, or None to build from overrides alone.
        overrides: "a.b.c=value" strings, applied in order.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, bad YAML, malformed override, or a validation error;
            the message names each offending field, e.g. "optim.lr: Input should be greater than 0".
    """
    raw: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                raw = yaml.safe_load(handle)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({_one_line(exc)})") from None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Validates a plain dict (e.g. Ray's ``train_loop_config``, from ``cfg.model_dump()``).

    Raises:
        ConfigError: one ``field.path: problem`` line per validation error.
    """
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse override value {text!r} ({_one_line(exc)})") from None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: no list item {part!r} (the list has {len(node)})")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise ConfigError(f"{'.'.join(parts[:depth])}: cannot set {part!r} inside a {type(node).__name__}")
        if last:
            node[index] = value
        else:
            node = node[index]


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        # Union members add their type name to the location (e.g. "time_width.int");
        # keep only the field names so the message points at the key the user wrote.
        where = ".".join(str(part) for part in error["loc"] if not _is_type_tag(part)) or "config"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "\n".join(dict.fromkeys(lines))


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in {"int", "float", "str", "bool", "list", "tuple"}
                                      or part.startswith(("constrained-", "function-")))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
