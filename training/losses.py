"""The training losses: CTC per head, intermediate heads mixed in, and the distillation terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.distill import Teacher, kl_to_teacher, teacher_token_batch


def ctc_loss(log_probs: torch.Tensor, output_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, blank_id: int) -> torch.Tensor:
    """CTC in float32, summed per utterance and averaged over the batch (NeMo's 'mean_batch')."""
    losses = F.ctc_loss(log_probs.float().transpose(0, 1), targets, output_lengths, target_lengths,
                        blank=blank_id, reduction="none", zero_infinity=True)
    return losses.mean()


def mixed_ctc_loss(losses: list[torch.Tensor], inter_weight: float) -> torch.Tensor:
    """The final head's loss, mixed with the mean of the intermediate heads' losses when there are any."""
    if len(losses) == 1:
        return losses[0]
    return (1 - inter_weight) * losses[0] + inter_weight * torch.stack(losses[1:]).mean()


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
        targets, target_lengths = fill_unlabelled(targets, target_lengths, batch.labelled.to(device),
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


def fill_unlabelled(targets: torch.Tensor, target_lengths: torch.Tensor, labelled: torch.Tensor,
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
