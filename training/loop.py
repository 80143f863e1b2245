"""The per-worker training loop: data, model, optimiser, epochs, validation and checkpoints.

Runs inside a Ray Train worker (``train_loop_per_worker``) or, for tests and debugging, in
the calling process. Rank 0 alone writes logs and reports checkpoints.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from model.decoding import greedy_decode
from model.quartznet import QuartzNetConfig, use_fast_cpu_convs
from model.recognizer import SpeechRecognizer
from training.augment import spec_augment
from training.bn_stats import freeze_batch_norm, recalibrate_batch_norm
from training.config import TrainConfig, config_from_dict
from training.data import DurationBucketSampler, ManifestDataset, collate
from training.init_model import build_recognizer
from training.metrics import word_char_error_rates
from training.novograd import NovoGrad
from training.schedule import build_warmup_cosine_scheduler
from training.state import TrainState, load_resume_state, save_resume_state
from training.weight_average import WeightAverage
from training.sync_bn import convert_sync_batchnorm
from training.datasets import load_splits
from training.distill import Teacher, kl_to_teacher, teacher_token_batch


@dataclass
class _Context:
    rank: int
    world_size: int
    device: torch.device
    under_ray: bool


def _context(cfg: TrainConfig) -> _Context:
    try:
        import ray.train

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        under_ray = True
    except (ImportError, RuntimeError, AttributeError, ValueError):
        rank, world, under_ray = 0, 1, False
    if rank is None:
        rank, world, under_ray = 0, 1, False
    if cfg.scaling.use_gpu and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return _Context(rank, world, device, under_ray)


class _TrainStep(nn.Module):
    """Featurize -> SpecAugment -> network (+ intermediate CTC heads), one module so DDP sees a single forward."""

    def __init__(self, recognizer: SpeechRecognizer, augment, seed: int, inter_ctc_blocks: tuple[int, ...] = ()
                 ) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.inter_ctc_blocks = tuple(sorted(inter_ctc_blocks))  # encode_with_taps returns block order
        network = recognizer.network.config
        self.inter_ctc_heads = nn.ModuleList(nn.Conv1d(network.blocks[b].filters, network.num_labels + 1, 1)
                                             for b in self.inter_ctc_blocks)
        for head in self.inter_ctc_heads:
            nn.init.xavier_uniform_(head.weight)

    @property
    def has_intermediate_heads(self) -> bool:
        return bool(self.inter_ctc_blocks or self.recognizer.network.config.self_conditioning)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """CTC log-probabilities and output lengths: the model's own head first, then the intermediate ones."""
        with torch.no_grad():
            feats, feat_lengths = self.recognizer.featurizer(audio, audio_lengths)
            if self.augment is not None and self.training:
                feats = spec_augment(feats.cpu(), feat_lengths.cpu(), self.augment, self.generator).to(feats.device)
        network = self.recognizer.network
        encoded = network.encode_with_taps(feats, feat_lengths, self.inter_ctc_blocks)
        heads = [(network.decoder(encoded.output), encoded.lengths)]
        heads += [(head(inner), lengths) for head, (inner, lengths) in zip(self.inter_ctc_heads, encoded.taps)]
        heads += encoded.conditioning_logits  # self-conditioning heads are the model's own
        return [(F.log_softmax(logits.transpose(1, 2).float(), dim=-1), n) for logits, n in heads]


def inter_ctc_blocks(cfg: TrainConfig, network: QuartzNetConfig) -> tuple[int, ...]:
    """The blocks the training-only CTC heads read: empty when the loss is off or the model has its own heads.

    Raises:
        ValueError: the config's blocks do not fit ``network`` (a fine-tuning source decides it).
    """
    if network.self_conditioning:
        listed = tuple(cfg.loss.inter_ctc_blocks)
        if listed and listed != network.self_conditioning:
            raise ValueError(f"loss.inter_ctc_blocks {list(listed)} differ from the model's self-conditioning "
                             f"blocks {list(network.self_conditioning)}; leave it empty, or set "
                             f"loss.self_conditioning to move the heads")
        return ()
    count = len(network.blocks)
    blocks = cfg.loss.blocks_for(count)
    if blocks and max(blocks) >= count - 1:  # a fine-tuning source can have fewer blocks than the config's table
        raise ValueError(f"loss.inter_ctc_blocks {list(blocks)} must be below the model's last block index "
                         f"{count - 1}")
    return blocks


def mixed_ctc_loss(losses: list[torch.Tensor], inter_weight: float) -> torch.Tensor:
    """The final head's loss, mixed with the mean of the intermediate heads' losses when there are any."""
    if len(losses) == 1:
        return losses[0]
    return (1 - inter_weight) * losses[0] + inter_weight * torch.stack(losses[1:]).mean()


def _optimizer(cfg: TrainConfig, recognizer: SpeechRecognizer, extra: list[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW or NovoGrad over the network (decoder optionally at its own lr) plus ``extra`` training-only heads."""
    decoder = [p for p in recognizer.network.decoder.parameters() if p.requires_grad]
    decoder_ids = {id(p) for p in decoder}
    encoder = [p for p in recognizer.network.parameters() if p.requires_grad and id(p) not in decoder_ids] + extra
    groups = [g for g in ({"params": encoder, "lr": cfg.optim.lr},
                          {"params": decoder, "lr": cfg.run.decoder_lr or cfg.optim.lr}) if g["params"]]
    if cfg.optim.name == "novograd":
        return NovoGrad(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)


def ctc_loss(log_probs: torch.Tensor, output_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, blank_id: int) -> torch.Tensor:
    """CTC in float32, summed per utterance and averaged over the batch (NeMo's 'mean_batch')."""
    losses = F.ctc_loss(log_probs.float().transpose(0, 1), targets, output_lengths, target_lengths,
                        blank=blank_id, reduction="none", zero_infinity=True)
    return losses.mean()


def batch_loss(cfg: TrainConfig, heads: list[tuple[torch.Tensor, torch.Tensor]], batch, blank_id: int,
               device: torch.device, teacher: Teacher | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to minimise and the model's own head's CTC loss, for one batch.

    CTC on every head (intermediate ones mixed in by ``loss.inter_ctc_weight``) against the
    transcripts; with a teacher, lines without text take its transcript instead, and the
    distillation terms (training.distill) are added with their ``distill`` weights.
    """
    targets, target_lengths = batch.targets.to(device), batch.target_lengths.to(device)
    taught = None
    if teacher is not None:
        taught = teacher.targets(batch.clean)
        teacher_ids, teacher_lengths = teacher_token_batch(taught, device)
        targets, target_lengths = _fill_unlabelled(targets, target_lengths, batch.labelled.to(device),
                                                   teacher_ids, teacher_lengths)
    losses = [ctc_loss(log_probs, out_lengths, targets, target_lengths, blank_id) for log_probs, out_lengths in heads]
    loss = mixed_ctc_loss(losses, cfg.loss.inter_ctc_weight)
    if taught is None:
        return loss, losses[0]
    distill = cfg.distill
    (log_probs, out_lengths), total = heads[0], distill.ctc_weight * loss
    if distill.kl_weight:
        total = total + distill.kl_weight * kl_to_teacher(log_probs, out_lengths, taught, kind=distill.targets,
                                                          temperature=distill.temperature)
    if distill.pseudo_label_weight:
        total = total + distill.pseudo_label_weight * ctc_loss(log_probs, out_lengths, teacher_ids, teacher_lengths,
                                                               blank_id)
    return total, losses[0]


def _fill_unlabelled(targets: torch.Tensor, target_lengths: torch.Tensor, labelled: torch.Tensor,
                     teacher_ids: torch.Tensor, teacher_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets where rows without a transcript hold the teacher's instead."""
    if bool(labelled.all()):
        return targets, target_lengths
    width = max(targets.shape[1], teacher_ids.shape[1])
    filled = torch.zeros(targets.shape[0], width, dtype=targets.dtype, device=targets.device)
    filled[:, :targets.shape[1]] = targets
    unlabelled = ~labelled
    filled[unlabelled] = 0
    filled[unlabelled, :teacher_ids.shape[1]] = teacher_ids[unlabelled]
    return filled, torch.where(labelled, target_lengths, teacher_lengths)


def evaluate(recognizer: SpeechRecognizer, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Greedy WER/CER over a loader, with the same decoder the service uses."""
    recognizer.eval()
    labels = recognizer.vocabulary.labels
    refs, hyps = [], []
    with torch.inference_mode():
        for batch in loader:
            if batch.audio.shape[0] == 0:
                continue
            log_probs, lengths = recognizer(batch.audio.to(device), batch.audio_lengths.to(device))
            log_probs = log_probs.cpu().numpy()
            for i in range(len(lengths)):
                hyps.append(greedy_decode(log_probs[i, : int(lengths[i])], labels,
                                          recognizer.frame_duration_s).text)
                refs.append(recognizer.vocabulary.decode(batch.targets[i, : int(batch.target_lengths[i])].tolist()))
    return word_char_error_rates(refs, hyps)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is ``TrainConfig.model_dump()`` plus private ``_`` keys."""
    cfg = config_from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    ctx = _context(cfg)
    torch.manual_seed(cfg.run.seed + ctx.rank)
    if ctx.device.type == "cpu" and config.get("_threads_per_worker"):
        torch.set_num_threads(int(config["_threads_per_worker"]))
    recognizer, init_info = build_recognizer(cfg, config.get("_init_dir"))
    splits = load_splits(cfg, recognizer.vocabulary, log=ctx.rank == 0)

    if cfg.sync_bn and ctx.world_size > 1:
        recognizer.network = convert_sync_batchnorm(recognizer.network, use_cuda=ctx.device.type == "cuda")
    recognizer.to(ctx.device)
    use_fast_cpu_convs(recognizer.network)  # same convs, ~1.4x faster steps on CPU
    train_step = _TrainStep(recognizer, cfg.augment.to_augment_config(), cfg.run.seed * 1000 + ctx.rank,
                            inter_ctc_blocks(cfg, recognizer.network.config)).to(ctx.device)
    step_module: nn.Module = train_step
    if ctx.world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    train_ds = ManifestDataset(splits.train, encode=recognizer.vocabulary.encode,
                               sample_rate=recognizer.sample_rate, augment=cfg.augment.to_augment_config(),
                               seed=cfg.run.seed, keep_clean=cfg.distill is not None)
    teacher = None
    if cfg.distill is not None:
        teacher = Teacher.load(config["_teacher_dir"], precision=cfg.distill.teacher_precision,
                               device=ctx.device, cache_items=cfg.distill.cache_items)
    sampler = DurationBucketSampler([e.duration_s for e in splits.train], batch_size=cfg.data.batch_size,
                                    max_batch_audio_s=cfg.data.max_batch_audio_s, num_buckets=cfg.data.num_buckets,
                                    seed=cfg.run.seed, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_loader_workers)
    val_loader = None
    if splits.val and ctx.rank == 0:
        val_ds = ManifestDataset(splits.val, encode=recognizer.vocabulary.encode, sample_rate=recognizer.sample_rate)
        val_sampler = DurationBucketSampler([e.duration_s for e in splits.val], batch_size=cfg.data.batch_size,
                                            shuffle=False)
        val_loader = DataLoader(val_ds, batch_sampler=val_sampler, collate_fn=collate, num_workers=0)

    optimizer = _optimizer(cfg, recognizer, list(train_step.inter_ctc_heads.parameters()))
    steps_per_epoch = max(1, math.ceil(len(sampler) / cfg.optim.grad_accum_steps))
    scheduler = build_warmup_cosine_scheduler(optimizer, warmup_steps=cfg.optim.warmup_steps,
                                              max_steps=steps_per_epoch * cfg.optim.epochs, min_lr=cfg.optim.min_lr)
    use_amp = cfg.amp != "off"
    amp_dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")

    state = TrainState()
    resumed = load_resume_state(ctx.under_ray, recognizer, optimizer, scheduler, scaler,
                                train_step.inter_ctc_heads or None)
    if resumed is not None:
        state = resumed
        if ctx.rank == 0:
            print(f"[train] resumed at epoch {state.epoch} batch {state.batches_done}", flush=True)

    logger = _Logger(Path(cfg.run.output_dir), enabled=ctx.rank == 0)
    freeze_bn_from = _start_of_last(cfg.optim.epochs, cfg.run.freeze_bn_last_epochs)
    average_from = _start_of_last(cfg.optim.epochs, cfg.run.average_last_epochs)
    wall_start = time.monotonic() - state.wall_time_s
    for epoch in range(state.epoch, cfg.optim.epochs):
        if _patience_exhausted(cfg, ctx, state):
            if ctx.rank == 0:
                print(f"[train] stopping early at epoch {state.epoch}: validation WER has not improved for "
                      f"{state.epoch - state.best_epoch} epochs (best {state.best_wer * 100:.2f}% at epoch "
                      f"{state.best_epoch})", flush=True)
            break
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        resumed_mid_epoch = epoch == state.epoch and state.batches_done > 0
        if epoch == freeze_bn_from and not resumed_mid_epoch:
            _recalibrate(ctx, step_module, loader)  # a resumed phase keeps its checkpoint's statistics
        sampler.skip_batches(state.batches_done if epoch == state.epoch else 0)
        step_module.train()
        if cfg.run.freeze_encoder:
            recognizer.network.blocks.eval()  # frozen BN statistics must not drift either
        if freeze_bn_from is not None and epoch >= freeze_bn_from:
            freeze_batch_norm(recognizer)
        t0, utts, audio_s, dropped = time.monotonic(), 0, 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        batch_index = state.batches_done if epoch == state.epoch else 0
        last_batch = batch_index + len(sampler)
        # No batches left for this rank (resumed at an epoch's end, or fewer batches than ranks).
        loss = final_loss = torch.tensor(float("nan"))  # final_loss: the model's own head (loss may mix in others)
        for batch in loader:
            batch_index += 1
            dropped += batch.num_dropped
            audio, audio_lengths = batch.audio.to(ctx.device), batch.audio_lengths.to(ctx.device)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                if audio.shape[0] == 0:
                    # Every file of this batch was unreadable: take part in the step with a zero loss.
                    audio, audio_lengths = _silent_clip(ctx.device)
                    loss = sum(log_probs.sum() for log_probs, _ in step_module(audio, audio_lengths)) * 0.0
                else:
                    heads = step_module(audio, audio_lengths)
                    loss, final_loss = batch_loss(cfg, heads, batch, recognizer.vocabulary.blank_id, ctx.device,
                                                  teacher)
            scaler.scale(loss / cfg.optim.grad_accum_steps).backward()
            if batch_index % cfg.optim.grad_accum_steps == 0 or batch_index == last_batch:
                _optimizer_step(cfg, optimizer, scaler, scheduler)
                state.global_step += 1
            utts += int(batch.audio.shape[0])
            audio_s += float(batch.audio_lengths.sum()) / recognizer.sample_rate
            if state.global_step % cfg.run.log_every_steps == 0 and batch_index % cfg.optim.grad_accum_steps == 0:
                elapsed = time.monotonic() - t0
                logger.step(epoch=epoch, step=state.global_step, loss=float(loss.detach()),
                            lr=optimizer.param_groups[0]["lr"], utterances_per_s=utts * ctx.world_size / elapsed,
                            audio_s_per_s=audio_s * ctx.world_size / elapsed)
            if cfg.run.checkpoint_every_steps and state.global_step % cfg.run.checkpoint_every_steps == 0 \
                    and batch_index % cfg.optim.grad_accum_steps == 0:
                state.epoch, state.batches_done = epoch, batch_index
                state.wall_time_s = time.monotonic() - wall_start
                _report(ctx, cfg, state, train_step, optimizer, scheduler, scaler, {"epoch": epoch})
        epoch_s = time.monotonic() - t0
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(loss.detach()), "epoch_time_s": epoch_s,
                                   "audio_s_per_s": audio_s * ctx.world_size / max(epoch_s, 1e-9),
                                   "utterances_per_s": utts * ctx.world_size / max(epoch_s, 1e-9),
                                   "skipped_unreadable": dropped, "step": state.global_step}
        if train_step.has_intermediate_heads:
            metrics["train_loss_final_head"] = float(final_loss.detach())
        if val_loader is not None:
            metrics.update({f"val_{k}": v for k, v in evaluate(recognizer, val_loader, ctx.device).items()})
            if metrics["val_wer"] <= state.best_wer:
                state.best_wer, state.best_cer, state.best_epoch = metrics["val_wer"], metrics["val_cer"], epoch + 1
                state.best_weights = {k: v.detach().cpu().clone() for k, v in recognizer.state_dict().items()}
                state.best_averaged_epochs = 0
        elif ctx.rank == 0:
            state.best_epoch = epoch + 1
            state.best_weights = {k: v.detach().cpu().clone() for k, v in recognizer.state_dict().items()}
        if average_from is not None and epoch >= average_from and ctx.rank == 0:
            metrics.update(_update_average(state, recognizer, val_loader, ctx.device, epoch))
        if ctx.world_size > 1:
            dist.barrier()
        logger.epoch(metrics)
        state.epoch, state.batches_done = epoch + 1, 0
        state.wall_time_s = time.monotonic() - wall_start
        state.history.append(metrics)
        if (epoch + 1) % cfg.run.checkpoint_every_epochs == 0 or epoch + 1 == cfg.optim.epochs:
            _report(ctx, cfg, state, train_step, optimizer, scheduler, scaler, metrics)
    logger.close()


def _start_of_last(epochs: int, last: int | None) -> int | None:
    """The 0-based epoch where the final ``last`` epochs begin; None when ``last`` is unset."""
    return None if last is None else max(0, epochs - last)


def _update_average(state: TrainState, recognizer: SpeechRecognizer, val_loader: DataLoader | None,
                    device: torch.device, epoch: int) -> dict[str, Any]:
    """Adds this epoch's weights to the running average; the average becomes the best if it validates best."""
    average = WeightAverage(state.average_weights, state.averaged_epochs)
    average.add(recognizer.state_dict())
    state.average_weights, state.averaged_epochs = average.mean, average.count
    metrics: dict[str, Any] = {"averaged_epochs": average.count}
    weights = average.weights(recognizer.state_dict())  # CPU tensors the average never changes in place
    if val_loader is None:
        # Nothing to choose by: the average of the epochs asked for is what gets published.
        state.best_weights = weights
        state.best_epoch, state.best_averaged_epochs = epoch + 1, average.count
        return metrics
    if average.count < 2:
        return metrics  # the average of one epoch is that epoch, validated already
    candidate = copy.deepcopy(recognizer)
    candidate.load_state_dict(weights)
    result = evaluate(candidate, val_loader, device)
    metrics.update({"val_wer_average": result["wer"], "val_cer_average": result["cer"]})
    if result["wer"] <= state.best_wer:
        state.best_wer, state.best_cer, state.best_epoch = result["wer"], result["cer"], epoch + 1
        state.best_weights = weights
        state.best_averaged_epochs = average.count
    return metrics


def _silent_clip(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One second of silence as a batch: stands in for a batch whose every file was unreadable."""
    return torch.zeros(1, 16000, device=device), torch.tensor([16000], device=device)


def _recalibrate(ctx: _Context, step_module: nn.Module, loader: DataLoader) -> None:
    """One pass over this rank's training batches to average BatchNorm statistics (DDP then shares rank 0's)."""
    t0 = time.monotonic()

    def forward(batch) -> None:
        audio, audio_lengths = batch.audio, batch.audio_lengths
        if audio.shape[0] == 0:
            if ctx.world_size == 1:
                return
            audio, audio_lengths = _silent_clip(ctx.device)  # keeps the ranks' collectives (sync BN) in step
        step_module(audio.to(ctx.device), audio_lengths.to(ctx.device))

    count = recalibrate_batch_norm(step_module, forward, loader)
    if ctx.rank == 0:
        print(f"[train] BatchNorm statistics recalibrated over {count} batches in {time.monotonic() - t0:.0f}s; "
              f"they stay fixed from here on", flush=True)


def _patience_exhausted(cfg: TrainConfig, ctx: _Context, state: TrainState) -> bool:
    """Early stopping, decided on rank 0 (the only rank that validates) and shared with all ranks."""
    patience = cfg.run.early_stop_patience_epochs
    if patience is None:
        return False
    stop = state.best_epoch > 0 and state.epoch - state.best_epoch >= patience
    if ctx.world_size > 1:
        flag = torch.tensor([1.0 if stop else 0.0], device=ctx.device)
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def _optimizer_step(cfg, optimizer, scaler, scheduler) -> None:
    if cfg.optim.grad_clip_norm:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _report(ctx: _Context, cfg: TrainConfig, state: TrainState, train_step: _TrainStep, optimizer, scheduler,
            scaler, metrics: dict[str, Any]) -> None:
    """Saves a resume checkpoint (rank 0 writes; every rank reports so Ray stays in step)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir = None
        if ctx.rank == 0:
            save_resume_state(Path(tmp), cfg, state, train_step.recognizer, optimizer, scheduler, scaler,
                              train_step.inter_ctc_heads or None)
            checkpoint_dir = tmp
        if ctx.under_ray:
            import ray.train

            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, checkpoint=checkpoint)
        elif checkpoint_dir:
            target = Path(cfg.run.output_dir) / "checkpoints" / f"step-{state.global_step:08d}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmp, target, dirs_exist_ok=True)


class _Logger:
    """Console lines, a JSON-lines metrics log and TensorBoard scalars (rank 0 only)."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional at run time; the JSON log is always written
            self.writer = None

    def _write(self, kind: str, values: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            step = int(values.get("step", values.get("epoch", 0)))
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def step(self, **values: Any) -> None:
        if not self.enabled:
            return
        print("[train] epoch {epoch} step {step} loss {loss:.3f} lr {lr:.2e} {utterances_per_s:.1f} utt/s "
              "{audio_s_per_s:.1f} audio-s/s".format(**values), flush=True)
        self._write("step", values)

    def epoch(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        val = ""
        if "val_wer" in metrics:
            val = f" val WER {metrics['val_wer'] * 100:.2f}% CER {metrics['val_cer'] * 100:.2f}%"
        if "val_wer_average" in metrics:
            val += f" (average of {metrics['averaged_epochs']} epochs: WER {metrics['val_wer_average'] * 100:.2f}%)"
        print(f"[train] epoch {metrics['epoch']} done in {metrics['epoch_time_s']:.0f}s "
              f"({metrics['audio_s_per_s']:.1f} audio-s/s) loss {metrics['train_loss']:.3f}{val}"
              + (f" skipped {metrics['skipped_unreadable']} unreadable" if metrics["skipped_unreadable"] else ""),
              flush=True)
        self._write("epoch", metrics)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
