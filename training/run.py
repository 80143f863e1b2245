"""Builds one worker's run: its place in the job, the model, data, optimiser, schedule and resumed state."""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from model.allocator import keep_freed_memory
from model.quartznet import use_fast_cpu_convs
from model.recognizer import SpeechRecognizer
from training.config import TrainConfig
from training.data import ManifestDataset, collate
from training.datasets import Splits, load_splits
from training.distill import Teacher
from training.init_model import build_recognizer
from training.novograd import NovoGrad
from training.run_log import TrainLogger
from training.sampler import DurationBucketSampler
from training.schedule import build_warmup_cosine_scheduler
from training.state import TrainState, load_resume_state
from training.sync_bn import convert_sync_batchnorm
from training.train_step import TrainStep, inter_ctc_blocks


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker is handed through Ray: the validated config and what the driver resolved for it.

    Attributes:
        train: the run's config, with absolute manifest and output paths.
        init_dir: the artifact folder to fine-tune from; None starts from scratch.
        teacher_dir: the distillation teacher's artifact folder; None without ``distill``.
        threads_per_worker: torch threads of a CPU worker; None keeps torch's default.
    """

    train: TrainConfig
    init_dir: str | None = None
    teacher_dir: str | None = None
    threads_per_worker: int | None = None

    def loop_config(self) -> dict[str, Any]:
        """Ray's ``train_loop_config``: Ray passes a dict, so the typed config travels as its one entry."""
        return {"worker": self}


@dataclass(frozen=True)
class Context:
    """Where this worker stands in the job."""

    rank: int
    world_size: int
    device: torch.device
    under_ray: bool


@dataclass
class Run:
    """Everything one worker's epochs read and update."""

    cfg: TrainConfig
    ctx: Context
    recognizer: SpeechRecognizer
    train_step: TrainStep
    step_module: nn.Module  # train_step, wrapped in DDP when there are several workers
    train_data: ManifestDataset
    sampler: DurationBucketSampler
    loader: DataLoader
    val_loader: DataLoader | None
    teacher: Teacher | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    state: TrainState
    logger: TrainLogger
    wall_start: float  # monotonic time the run would have started had it never been interrupted

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype; None when AMP is off."""
        return {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.cfg.amp]


def build_run(worker: WorkerConfig) -> Run:
    """The worker's run, resumed from Ray's checkpoint when there is one."""
    cfg = worker.train
    ctx = _context(cfg)
    torch.manual_seed(cfg.run.seed + ctx.rank)
    if ctx.device.type == "cpu" and worker.threads_per_worker:
        torch.set_num_threads(worker.threads_per_worker)
    keep_freed_memory()  # 5x3 at batch 32: a CPU step 2.36-2.46 -> 2.31 s (docs/benchmarks.md)
    recognizer, _ = build_recognizer(cfg, worker.init_dir)
    splits = load_splits(cfg, recognizer.vocabulary, log=ctx.rank == 0)
    train_step, step_module = _model(cfg, ctx, recognizer)
    train_data, sampler, loader = _train_data(cfg, ctx, recognizer, splits)
    teacher = None
    if cfg.distill is not None:
        teacher = Teacher.load(worker.teacher_dir, precision=cfg.distill.teacher_precision,
                               device=ctx.device, cache_items=cfg.distill.cache_items,
                               token_peaks=cfg.distill.targets == "token")
    optimizer = _optimizer(cfg, recognizer, list(train_step.inter_ctc_heads.parameters()))
    steps_per_epoch = max(1, math.ceil(len(sampler) / cfg.optim.grad_accum_steps))
    scheduler = build_warmup_cosine_scheduler(optimizer, warmup_steps=cfg.optim.warmup_steps,
                                              max_steps=steps_per_epoch * cfg.optim.epochs, min_lr=cfg.optim.min_lr)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")
    state = _resume(ctx, recognizer, train_step, optimizer, scheduler, scaler)
    return Run(cfg=cfg, ctx=ctx, recognizer=recognizer, train_step=train_step, step_module=step_module,
               train_data=train_data, sampler=sampler, loader=loader,
               val_loader=_val_loader(cfg, ctx, recognizer, splits), teacher=teacher, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, state=state,
               logger=TrainLogger(Path(cfg.run.output_dir), enabled=ctx.rank == 0),
               wall_start=time.monotonic() - state.wall_time_s)


def _context(cfg: TrainConfig) -> Context:
    try:
        import ray.train

        train_context = ray.train.get_context()
        rank, world, under_ray = train_context.get_world_rank(), train_context.get_world_size(), True
    except (ImportError, RuntimeError, AttributeError, ValueError):
        rank, world, under_ray = 0, 1, False
    if rank is None:  # a Ray context outside a training worker
        rank, world, under_ray = 0, 1, False
    if cfg.scaling.use_gpu and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Context(rank, world, device, under_ray)


def _model(cfg: TrainConfig, ctx: Context, recognizer: SpeechRecognizer) -> tuple[TrainStep, nn.Module]:
    """The training step on the worker's device, with sync BN and DDP when there are several workers."""
    if cfg.sync_bn and ctx.world_size > 1:
        recognizer.network = convert_sync_batchnorm(recognizer.network, use_cuda=ctx.device.type == "cuda")
    recognizer.to(ctx.device)
    use_fast_cpu_convs(recognizer.network)  # same convs, ~1.4x faster steps on CPU
    train_step = TrainStep(recognizer, cfg.augment, cfg.run.seed * 1000 + ctx.rank,
                           inter_ctc_blocks(cfg, recognizer.network.config)).to(ctx.device)
    if ctx.world_size == 1:
        return train_step, train_step
    return train_step, nn.parallel.DistributedDataParallel(
        train_step, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def _train_data(cfg: TrainConfig, ctx: Context, recognizer: SpeechRecognizer, splits: Splits
                ) -> tuple[ManifestDataset, DurationBucketSampler, DataLoader]:
    """This rank's shard of the training set, in duration-bucketed batches."""
    dataset = ManifestDataset(splits.train, encode=recognizer.vocabulary.encode, sample_rate=recognizer.sample_rate,
                              augment=cfg.augment, seed=cfg.run.seed, keep_clean=cfg.distill is not None)
    sampler = DurationBucketSampler([e.duration_s for e in splits.train], batch_size=cfg.data.batch_size,
                                    max_batch_audio_s=cfg.data.max_batch_audio_s, num_buckets=cfg.data.num_buckets,
                                    seed=cfg.run.seed, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_loader_workers)
    return dataset, sampler, loader


def _val_loader(cfg: TrainConfig, ctx: Context, recognizer: SpeechRecognizer, splits: Splits) -> DataLoader | None:
    """The validation batches, on rank 0 only (the only rank that validates); None without validation data."""
    if not splits.val or ctx.rank != 0:
        return None
    dataset = ManifestDataset(splits.val, encode=recognizer.vocabulary.encode, sample_rate=recognizer.sample_rate)
    sampler = DurationBucketSampler([e.duration_s for e in splits.val], batch_size=cfg.data.batch_size, shuffle=False)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)


def _optimizer(cfg: TrainConfig, recognizer: SpeechRecognizer, extra: list[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW or NovoGrad over the network (decoder optionally at its own lr) plus ``extra`` training-only heads."""
    decoder = [p for p in recognizer.network.decoder.parameters() if p.requires_grad]
    decoder_ids = {id(p) for p in decoder}
    encoder = [p for p in recognizer.network.parameters() if p.requires_grad and id(p) not in decoder_ids] + extra
    optim = cfg.optim
    groups = [g for g in ({"params": encoder, "lr": optim.lr},
                          {"params": decoder, "lr": optim.decoder_lr or optim.lr}) if g["params"]]
    if optim.name == "novograd":
        return NovoGrad(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def _resume(ctx: Context, recognizer: SpeechRecognizer, train_step: TrainStep, optimizer, scheduler, scaler
            ) -> TrainState:
    """Ray's latest checkpoint loaded into the model and optimiser, or a fresh state."""
    resumed = load_resume_state(ctx.under_ray, recognizer, optimizer, scheduler, scaler,
                                train_step.inter_ctc_heads or None)
    state = resumed or TrainState()
    attempt = _attempt_record(ctx, state)
    state.attempts.append(attempt)
    if ctx.rank == 0 and resumed is not None:
        lost = f"; lost nodes {', '.join(attempt['lost_nodes'])}" if attempt.get("lost_nodes") else ""
        print(f"[train] resumed at epoch {resumed.epoch} batch {resumed.batches_done} (attempt {attempt['attempt']}, "
              f"nodes {', '.join(attempt['nodes'])}{lost})", flush=True)
    return state


def _attempt_record(ctx: Context, state: TrainState) -> dict:
    """This start of the worker group: its number, where it resumed, and each rank's node (gathered from all)."""
    node = socket.gethostname()
    if ctx.under_ray:
        import ray

        node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    nodes = [node]
    if ctx.world_size > 1 and torch.distributed.is_initialized():
        nodes = [None] * ctx.world_size
        torch.distributed.all_gather_object(nodes, node)
    record = {"attempt": len(state.attempts) + 1, "epoch": state.epoch, "batches_done": state.batches_done,
              "global_step": state.global_step, "nodes": nodes, "started_at": time.time()}
    if state.attempts:  # a restart: the group before it failed (Ray Train restarts only after a failure)
        record["restarted_after_failure"] = True
        record["lost_nodes"] = sorted(set(state.attempts[-1]["nodes"]) - set(nodes))
    return record
