"""The `asr train` driver: Ray Train TorchTrainer setup, resume after a kill, and publishing the best model.

Usage:
    asr train training/recipes/an4.yaml                        # local Ray, CPU workers (gloo)
    asr train cfg.yaml --set scaling.num_workers=2             # 2 DDP workers on this machine
    RAY_ADDRESS=auto asr train cfg.yaml --set scaling.use_gpu=true --set scaling.num_workers=8
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from model.checkpoint import artifact_files, read_config
from model.ensemble import EnsembleConfig
from model.errors import ASRError
from model.features import MelFeaturizerConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import ModelRef, Registry, RegistryError
from training.config import TrainConfig, config_from_dict
from training.manifest import read_manifest
from training.init_model import fine_tuned_network, fresh_recognizer_config
from training.loop import train_loop_per_worker
from training.run import WorkerConfig
from training.state import load_best_weights, read_checkpoint_summary
from training.train_step import inter_ctc_blocks


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _resolve_init(cfg: TrainConfig, registry: Registry, scratch: Path) -> tuple[str | None, int | None]:
    """Turns ``run.fine_tune_from`` into an artifact folder the workers can read, plus its parent version."""
    source = cfg.run.fine_tune_from
    if source is None:
        return None, None
    if source.endswith(".nemo") or Path(source).is_file():
        from interop.nemo import import_nemo  # only fine-tuning from .nemo needs the importer

        model, _ = import_nemo(Path(source))
        folder = scratch / "init"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in artifact_files(model).items():
            (folder / name).write_bytes(data)
        return str(folder), None
    ref, _ = registry.open(source)
    # Ray workers run in their own working directory: a relative registry path would not resolve there.
    return str(Path(ref.path).resolve()), ref.version


class TrainingError(ASRError, ValueError):
    """A run that cannot start (missing manifest, unknown fine-tuning source); one-line message."""

    code = "training_refused"


def check_manifests(cfg: TrainConfig) -> None:
    """Fails fast, before Ray starts, when a manifest file is missing."""
    for key in ("train_manifests", "val_manifests"):
        for index, item in enumerate(getattr(cfg.data, key)):
            if not Path(item.path).is_file():
                raise TrainingError(f"data.{key}.{index}.path: manifest not found: {item.path}")


def check_labelled(cfg: TrainConfig) -> None:
    """Fails fast, before Ray starts, when plain training is given manifest lines without text."""
    if cfg.distill is not None:
        return
    for index, item in enumerate(cfg.data.train_manifests):
        entries, _ = read_manifest(item.path)
        unlabelled = sum(not e.labelled for e in entries)
        if unlabelled:
            raise TrainingError(f"data.train_manifests.{index}.path: {unlabelled} lines of {item.path} have no "
                                "text; unlabelled audio is only used for distillation, where a teacher transcribes "
                                "it (add a distill: section)")


def resolve_teacher(cfg: TrainConfig, registry: Registry, init_dir: str | None) -> tuple[str | None, str | None]:
    """The teacher's artifact folder (absolute) and ref, after checking it can teach this student.

    Raises:
        TrainingError: unknown teacher, not an acoustic model, or another vocabulary, sample rate
            or (with the KL term) frame rate than the student.
    """
    if cfg.distill is None:
        return None, None
    try:
        ref, metadata = registry.open(cfg.distill.teacher)
    except RegistryError as exc:
        raise TrainingError(f"distill.teacher: {exc}") from None
    if metadata.get("kind", "model") != "model":
        raise TrainingError(f"distill.teacher: {ref} is a {metadata.get('kind')!r}, not an acoustic model")
    raw = read_config(ref.path)
    teacher = EnsembleConfig.from_dict(raw).members[0] if "ensemble" in raw else RecognizerConfig.from_dict(raw)
    if init_dir is not None:
        network = fine_tuned_network(cfg, RecognizerConfig.from_dict(read_config(Path(init_dir))).network)
    else:
        network = fresh_recognizer_config(cfg).network
    features = MelFeaturizerConfig(sample_rate=cfg.data.sample_rate)
    student_frame_s = features.hop_length * network.subsampling / features.sample_rate
    if tuple(teacher.vocabulary.labels) != tuple(cfg.model.labels):
        raise TrainingError(f"distill.teacher: {ref} has another vocabulary ({len(teacher.vocabulary.labels)} "
                            f"labels) than the student's model.labels ({len(cfg.model.labels)}); distil between "
                            "models with the same labels")
    if teacher.features.sample_rate != cfg.data.sample_rate:
        raise TrainingError(f"distill.teacher: {ref} expects {teacher.features.sample_rate} Hz audio, the student "
                            f"{cfg.data.sample_rate} Hz")
    if cfg.distill.kl_weight > 0 and abs(teacher.frame_duration_s - student_frame_s) > 1e-9:
        raise TrainingError(f"distill.teacher: {ref} emits a frame every {teacher.frame_duration_s * 1e3:g} ms, the "
                            f"student every {student_frame_s * 1e3:g} ms; the frame-level KL needs the same frame "
                            "rate (set distill.kl_weight: 0 to learn from the teacher's transcripts only)")
    return str(Path(ref.path).resolve()), str(ref)


def check_heads_fit_source(cfg: TrainConfig, init_dir: str) -> None:
    """Fails fast, before Ray starts, when the intermediate CTC heads do not fit the fine-tuning source."""
    config = read_config(Path(init_dir))
    if "ensemble" in config:
        raise TrainingError(f"run.fine_tune_from: {cfg.run.fine_tune_from} is an ensemble; "
                            "fine-tune one of its members instead")
    source = RecognizerConfig.from_dict(config).network
    try:
        inter_ctc_blocks(cfg, fine_tuned_network(cfg, source))
    except ValueError as exc:
        raise TrainingError(f"{exc} (fine-tuning source {cfg.run.fine_tune_from})") from None


def run_training(cfg: TrainConfig, *, run_name: str | None = None) -> tuple[ModelRef | None, dict[str, Any]]:
    """Trains with Ray Train and publishes the best checkpoint to the registry.

    Args:
        cfg: validated config.
        run_name: Ray run name; re-running with the same name and output_dir resumes from the
            latest checkpoint (that is how a killed run continues).

    Returns:
        The published version (None if no epoch finished) and the final summary.
    """
    check_manifests(cfg)
    check_labelled(cfg)
    output_dir = Path(cfg.run.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(cfg.run.registry)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
        init_dir, parent_version = _resolve_init(cfg, registry, Path(scratch))
        if init_dir is not None:
            check_heads_fit_source(cfg, init_dir)
        teacher_dir, teacher_ref = resolve_teacher(cfg, registry, init_dir)
        worker = WorkerConfig(_with_absolute_paths(cfg, output_dir), init_dir=init_dir, teacher_dir=teacher_dir,
                              threads_per_worker=max(1, int(cfg.scaling.cpus_per_worker)))
        result = _fit(worker, run_name or cfg.run.publish_name, output_dir)
    if result.checkpoint is None:
        return None, {"error": "no checkpoint was reported"}
    ref, metrics, state = _publish(cfg, registry, result.checkpoint, parent_version, teacher_ref)
    summary_out = {**metrics, "epochs": state["epoch"], "wall_time_s": state["wall_time_s"],
                   "driver_time_s": time.monotonic() - started, "published": str(ref)}
    return ref, summary_out


def _with_absolute_paths(cfg: TrainConfig, output_dir: Path) -> TrainConfig:
    """``cfg`` with absolute manifest and output paths: Ray workers run in their own working directory."""
    raw = cfg.model_dump(mode="json")
    raw["run"]["output_dir"] = str(output_dir)
    for key in ("train_manifests", "val_manifests"):
        for item in raw["data"][key]:
            item["path"] = str(Path(item["path"]).resolve())
    return config_from_dict(raw)


def _fit(worker: WorkerConfig, run_name: str, output_dir: Path):
    """Runs the workers under Ray Train (starting a local Ray when none is running); Ray's result."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = worker.train.scaling
    if not ray.is_initialized():
        # No address means a new local instance ("local"), never a `ray start` cluster that
        # ray.init(address=None) would otherwise join; RAY_ADDRESS=local is local too.
        address = scaling.ray_address or "local"
        local = {"num_cpus": max(os.cpu_count() or 1, int(scaling.num_workers * scaling.cpus_per_worker))}
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 **(local if address == "local" else {}))
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    run = worker.train.run
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker.loop_config(),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=scaling.placement_strategy),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage_path(worker.train, output_dir),
                                       failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
                                       # Ray Train both copies and re-logs worker prints; once is enough.
                                       worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()


def storage_path(cfg: TrainConfig, output_dir: Path) -> str:
    """Where Ray Train keeps this run's checkpoints: run.storage_path (a folder is made absolute), else output_dir/ray."""
    path = cfg.run.storage_path
    if path is None:
        return str(output_dir / "ray")
    return path if "://" in path else str(Path(path).resolve())


def _publish(cfg: TrainConfig, registry: Registry, checkpoint, parent_version: int | None, teacher_ref: str | None
             ) -> tuple[ModelRef, dict[str, Any], dict[str, Any]]:
    """Publishes the checkpoint's best weights with the run's record; the ref, metrics and final state."""
    with checkpoint.as_directory() as folder:
        summary = read_checkpoint_summary(Path(folder))
        weights = load_best_weights(Path(folder))
    model = SpeechRecognizer(RecognizerConfig.from_dict(summary["recognizer"]))
    model.load_state_dict(weights)
    state = summary["state"]
    metrics = {"val_wer": state["best_wer"], "val_cer": state["best_cer"], "best_epoch": state["best_epoch"],
               "best_averaged_epochs": state.get("best_averaged_epochs", 0)}
    extra = {"train_config": summary["config"], "train_manifests": [m.path for m in cfg.data.train_manifests],
             "val_manifests": [m.path for m in cfg.data.val_manifests],
             "holdout_speakers": list(cfg.data.holdout_speakers), "epochs": state["epoch"],
             "global_steps": state["global_step"], "wall_time_s": round(state["wall_time_s"], 1),
             "git_commit": _git_commit(), "history": state["history"], "attempts": state.get("attempts", []),
             "nodes": sorted({node for attempt in state.get("attempts", []) for node in attempt["nodes"]})}
    if teacher_ref is not None:
        extra["distilled_from"] = teacher_ref
    ref = registry.publish(cfg.run.publish_name, artifact_files(model), kind="model", source="trained",
                           parent_version=parent_version, metrics=metrics, extra=extra)
    return ref, metrics, state
