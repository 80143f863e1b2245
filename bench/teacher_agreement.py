"""What a teacher knows beyond the transcripts of its own training audio, and where its views spike.

    .venv/bin/python bench/teacher_agreement.py --model an4-quartznet@7 [--utterances 150] [--speed 0.8]
        [--out bench/results/teacher_agreement_an4_v7_speed0.8.json]

Distillation can only pass on what the teacher's posteriors say that the labels do not. For each
sampled AN4 *training* utterance (the recipe's validation speakers left out), every view of the
teacher is force-aligned to the transcript (training.distill.peak_frames); at each token's peak
frame the posterior over the labels (blank left out, renormalised) is that view's belief about
the token. Reported: how much of it sits on the transcript's token, alone and averaged over the
views, its entropy, the tokens where the average puts under 0.9 on the label, and how many frames
apart the views place the same token (a frame-level target only works where they agree).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_model  # noqa: E402  (bench/machine.py; scripts run from bench/)

SPEECH = ROOT.parent / "shared" / "speech"
RECIPE = ROOT / "training" / "recipes" / "an4.yaml"  # its validation speakers are left out


def peak_beliefs(log_probs: np.ndarray, token_ids: list[int], blank: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, V+1) log-probs of one view -> each token's peak frame and its label posterior there (blank dropped)."""
    import torch

    from training.distill import peak_frames

    frames = peak_frames(torch.from_numpy(log_probs), tuple(token_ids), blank).numpy()
    probs = np.exp(log_probs[frames, :blank])
    return frames, probs / probs.sum(axis=1, keepdims=True)


def main() -> None:
    from model import Registry, decode_audio, load_model
    from model.audio import change_speed
    from model.inference import for_inference
    from training.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(ROOT / "registry"))
    parser.add_argument("--model", default="an4-quartznet@7")
    parser.add_argument("--utterances", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", type=float, default=1.0,
                        help="play each utterance at this speed first (beyond training's 0.9-1.1: audio it never heard)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, _, _ = load_model(Registry(args.registry), args.model)
    form = for_inference(model, "fp32")
    vocabulary, blank = model.vocabulary, model.vocabulary.blank_id
    lines = [json.loads(line) for line in (SPEECH / "an4_train.json").read_text().splitlines() if line.strip()]
    holdout = set(load_config(RECIPE).data.holdout_speakers)
    train = [x for x in lines if Path(x["audio_filepath"]).parent.name not in holdout]
    sample = random.Random(args.seed).sample(train, min(args.utterances, len(train)))

    on_label_views, entropy_views, on_label_mean, entropy_mean, offsets = [], [], [], [], []
    wrong_argmax = tokens = 0
    for item in sample:
        token_ids = vocabulary.encode(item["text"])
        audio = decode_audio(SPEECH / item["audio_filepath"], model.sample_rate).samples
        audio = change_speed(audio, args.speed, model.sample_rate)
        log_probs = form.log_probs_batch([audio])[0]
        views = log_probs[:, None] if log_probs.ndim == 2 else log_probs  # (T, K, V+1)
        aligned = [peak_beliefs(views[:, k], token_ids, blank) for k in range(views.shape[1])]
        rows = np.arange(len(token_ids))
        for _, beliefs in aligned:
            on_label_views.extend(beliefs[rows, token_ids])
            entropy_views.extend(-(beliefs * np.log(beliefs + 1e-12)).sum(axis=1))
        mean = np.mean([beliefs for _, beliefs in aligned], axis=0)
        on_label_mean.extend(mean[rows, token_ids])
        entropy_mean.extend(-(mean * np.log(mean + 1e-12)).sum(axis=1))
        wrong_argmax += int((mean.argmax(axis=1) != np.asarray(token_ids)).sum())
        tokens += len(token_ids)
        first = aligned[0][0]
        offsets.append([float(np.abs(frames - first).mean()) for frames, _ in aligned])

    on_label_mean = np.asarray(on_label_mean)
    result = {
        "model": args.model, "speed": args.speed, "views": len(offsets[0]), "utterances": len(sample), "tokens": tokens,
        "per_view_mean_posterior_on_label": round(float(np.mean(on_label_views)), 4),
        "per_view_mean_entropy_nats": round(float(np.mean(entropy_views)), 4),
        "averaged_views_mean_posterior_on_label": round(float(on_label_mean.mean()), 4),
        "averaged_views_median_posterior_on_label": round(float(np.median(on_label_mean)), 4),
        "averaged_views_tokens_under_0_9_on_label": round(float((on_label_mean < 0.9).mean()), 4),
        "averaged_views_mean_entropy_nats": round(float(np.mean(entropy_mean)), 4),
        "averaged_views_argmax_not_label": wrong_argmax,
        "mean_abs_peak_offset_frames_vs_view_0": [round(float(x), 2) for x in np.mean(offsets, axis=0)],
        "frame_duration_s": model.frame_duration_s, "cpu": cpu_model(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
