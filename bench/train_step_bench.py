"""Training step throughput against NeMo 3.0.0, side by side in one run: QuartzNet 5x3, fp32, the same batch.

One batch of real AN4 training utterances (default 32); each side times forward (train mode:
dither and dropout), CTC loss, backward and a NovoGrad step, after one warm-up step. NeMo runs
in its own venv (bench/nemo_train_side.py); ours is the trainer's own step module
(training.train_step.TrainStep, with the channels-last depthwise convs the trainer turns on), once
with those convs and once without, to show where the gain comes from.

    python bench/train_step_bench.py [--batch-size 32] [--steps 5] [--nemo-python /work/nemo-venv/bin/python]

Writes bench/results/train_step_<date>.json and prints the audio-seconds per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEECH = (REPO / "../shared/speech").resolve()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli.bench import cpu_model  # noqa: E402
from interop.nemo import nemo_jasper_blocks  # noqa: E402
from model.audio import decode_audio  # noqa: E402
from model.features import MelFeaturizerConfig  # noqa: E402
from model.presets import preset_config  # noqa: E402
from model.quartznet import use_fast_cpu_convs  # noqa: E402
from model.recognizer import RecognizerConfig, SpeechRecognizer  # noqa: E402
from model.vocabulary import Vocabulary  # noqa: E402
from training.losses import ctc_loss  # noqa: E402
from training.train_step import TrainStep  # noqa: E402
from training.novograd import NovoGrad  # noqa: E402


def an4_batch(size: int) -> dict[str, np.ndarray]:
    """``size`` AN4 training utterances of 3 to 5 s, zero-padded into one batch, with character targets."""
    vocabulary = Vocabulary()
    rows = [json.loads(line) for line in (SPEECH / "an4_train.json").read_text().splitlines()]
    rows = [r for r in rows if 3.0 <= r["duration"] <= 5.0][:size]
    clips = [decode_audio(SPEECH / r["audio_filepath"], 16_000).samples for r in rows]
    targets = [vocabulary.encode(r["text"]) for r in rows]
    audio = np.zeros((len(clips), max(map(len, clips))), dtype=np.float32)
    padded_targets = np.zeros((len(clips), max(map(len, targets))), dtype=np.int64)
    for i, (clip, target) in enumerate(zip(clips, targets)):
        audio[i, :len(clip)] = clip
        padded_targets[i, :len(target)] = target
    return {"audio": audio, "audio_lengths": np.array([len(c) for c in clips], dtype=np.int64),
            "targets": padded_targets, "target_lengths": np.array([len(t) for t in targets], dtype=np.int64)}


def our_step_times(batch: dict, steps: int, channels_last: bool, seed: int = 1234) -> dict:
    torch.manual_seed(seed)
    recognizer = SpeechRecognizer(RecognizerConfig(MelFeaturizerConfig(pad_to=16), preset_config("quartznet_5x3"),
                                                   Vocabulary())).train()
    use_fast_cpu_convs(recognizer.network, channels_last)
    step_module = TrainStep(recognizer, None, seed).train()
    optimizer = NovoGrad(step_module.parameters(), lr=0.01, betas=(0.8, 0.5), weight_decay=0.001)
    audio, audio_lengths = torch.from_numpy(batch["audio"]), torch.from_numpy(batch["audio_lengths"])
    targets, target_lengths = torch.from_numpy(batch["targets"]), torch.from_numpy(batch["target_lengths"])

    def step() -> float:
        (log_probs, lengths), = step_module(audio, audio_lengths)
        loss = ctc_loss(log_probs, lengths, targets, target_lengths, recognizer.vocabulary.blank_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    step()
    times, losses = [], []
    for _ in range(steps):
        started = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "times_s": times, "losses": losses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nemo-python", default="/work/nemo-venv/bin/python")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = an4_batch(args.batch_size)
    audio_s = float(batch["audio_lengths"].sum()) / 16_000
    report = {"benchmark": "train_step_bench", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "load_average_start": os.getloadavg()},
              "model": "quartznet_5x3", "precision": "fp32", "batch_size": len(batch["audio"]),
              "batch_audio_s": round(audio_s, 2), "steps": args.steps, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        blocks, data = Path(tmp) / "blocks.json", Path(tmp) / "batch.npz"
        blocks.write_text(json.dumps(nemo_jasper_blocks(preset_config("quartznet_5x3"))))
        np.savez(data, **batch)
        done = subprocess.run([args.nemo_python, str(REPO / "bench" / "nemo_train_side.py"), "--blocks", str(blocks),
                               "--batch", str(data), "--threads", str(args.threads), "--steps", str(args.steps)],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"nemo_train_side.py failed:\n{done.stderr[-3000:]}")
        report["rows"]["nemo"] = json.loads(done.stdout.strip().splitlines()[-1])
    report["rows"]["ours"] = our_step_times(batch, args.steps, channels_last=True)
    report["rows"]["ours_ncw_depthwise"] = our_step_times(batch, args.steps, channels_last=False)
    for row in report["rows"].values():
        row["audio_s_per_s"] = round(audio_s / row["median_s"], 1)
        row["vs_nemo"] = round(report["rows"]["nemo"]["median_s"] / row["median_s"], 2)
    report["machine"]["load_average_end"] = os.getloadavg()
    out = args.out or REPO / "bench" / "results" / f"train_step_{datetime.now():%Y-%m-%d}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in report["rows"].items():
        print(f"{name:20s} {row['audio_s_per_s']:8.1f} audio-s/s  {row['vs_nemo']:.2f}x NeMo")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
