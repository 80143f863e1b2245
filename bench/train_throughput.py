"""Training throughput (audio-seconds per second) with 1 and with 2 Ray Train workers on CPU.

Trains the same model (256-filter QuartzNet-style, or a recipe's) on the same AN4 utterances for one epoch
(default) once per worker count, through the real driver (``training.trainer.run_training``:
Ray Train TorchTrainer, gloo DDP), and reads each run's epoch row from its metrics.jsonl
(``audio_s_per_s`` counts every rank's audio). Everything is written to a temporary folder;
nothing is published to the project's registry. The Ray instance is a separate local one
with a private temp dir, so a cluster already running on the machine is not joined.

    python bench/train_throughput.py                             # 256 filters, 40 utterances, 1 and 2 workers
    python bench/train_throughput.py --quick --out /tmp/t.json   # smoke run: tiny model, 8 utterances
    python bench/train_throughput.py --recipe training/recipes/an4.yaml --utterances 300 --epochs 4
                                     # the recipe's own model and labels (the starter's architecture)

Writes bench/results/train_throughput.json (--quick: train_throughput_quick.json; --recipe X.yaml:
train_throughput_X.json) with the machine description; note the load average there: a busy
machine gives meaningless numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEECH = (REPO / "../shared/speech").resolve()

from machine import cpu_model  # noqa: E402 - bench/machine.py (scripts run from bench/)

BLOCKS_256 = [
    {"filters": 256, "repeat": 1, "kernel": 33, "stride": 2, "residual": False},
    {"filters": 256, "repeat": 3, "kernel": 13, "dropout": 0.1},
    {"filters": 256, "repeat": 3, "kernel": 17, "dropout": 0.1},
    {"filters": 256, "repeat": 1, "kernel": 29, "dilation": 2, "residual": False},
    {"filters": 512, "repeat": 1, "kernel": 1, "residual": False, "separable": False},
]
BLOCKS_TINY = [
    {"filters": 32, "repeat": 1, "kernel": 11, "stride": 2, "residual": False},
    {"filters": 64, "repeat": 1, "kernel": 1, "residual": False, "separable": False},
]


def machine() -> dict:
    import ray
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "ray": ray.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "git_commit": commit}


def write_manifest(path: Path, count: int, max_duration_s: float) -> tuple[int, float]:
    """``count`` AN4 training utterances up to ``max_duration_s``, spread over the file."""
    rows = [json.loads(line) for line in (SPEECH / "an4_train.json").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["duration"] <= max_duration_s]
    step = max(1, len(rows) // count)
    picked = rows[::step][:count]
    with open(path, "w", encoding="utf-8") as out:
        for row in picked:
            out.write(json.dumps({**row, "audio_filepath": str(SPEECH / row["audio_filepath"])}) + "\n")
    return len(picked), sum(r["duration"] for r in picked)


def model_sections(args) -> dict:
    """The ``model`` and ``loss`` config: the tiny or 256-filter table, or a recipe's own (its blocks, labels,
    front end and auxiliary losses such as intermediate CTC, which add work per step)."""
    if args.recipe is None:
        return {"model": {"blocks": BLOCKS_TINY if args.quick else BLOCKS_256}}
    from training.config import load_config

    recipe = load_config(args.recipe)
    return {"model": recipe.model.model_dump(exclude_none=True), "loss": recipe.loss.model_dump()}


def run_once(workdir: Path, manifest: Path, workers: int, sections: dict, args) -> dict:
    from training.config import config_from_dict
    from training.trainer import run_training

    out_dir = workdir / f"workers{workers}"
    cfg = config_from_dict({
        **sections,
        "data": {"train_manifests": [{"path": str(manifest)}], "batch_size": args.batch_size,
                 "num_buckets": 4, "num_loader_workers": 0},
        "optim": {"name": "adamw", "lr": 0.001, "epochs": args.epochs},
        "scaling": {"num_workers": workers, "cpus_per_worker": args.cpus_per_worker},
        "sync_bn": workers > 1,
        "run": {"output_dir": str(out_dir), "registry": str(workdir / "registry"),
                "publish_name": f"bench-w{workers}", "log_every_steps": 1000},
    })
    started = time.monotonic()
    ref, _ = run_training(cfg, run_name=f"bench-w{workers}")
    driver_s = time.monotonic() - started
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    last = epochs[-1]
    return {"workers": workers, "cpus_per_worker": args.cpus_per_worker, "sync_bn": workers > 1,
            "published": str(ref) if ref else None,
            "epochs": [{k: e[k] for k in ("epoch", "epoch_time_s", "audio_s_per_s", "utterances_per_s", "step")}
                       for e in epochs],
            "audio_s_per_s": last["audio_s_per_s"], "epoch_time_s": last["epoch_time_s"],
            "driver_wall_s": round(driver_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 utterances (a smoke test)")
    parser.add_argument("--recipe", type=Path, default=None,
                        help="take the model (blocks, labels, front end) from this training config")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--utterances", type=int, default=None, help="default 40 (--quick: 8)")
    parser.add_argument("--max-duration", type=float, default=4.0, help="longest utterance used, seconds")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    count = args.utterances or (8 if args.quick else 40)
    if args.quick and args.recipe is not None:
        parser.error("--quick and --recipe choose different models; pass one of them")
    from training.config import ConfigError

    try:
        sections = model_sections(args)  # a bad recipe fails here, before Ray starts
    except ConfigError as exc:
        parser.error(str(exc))
    default_name = ("train_throughput_quick.json" if args.quick else
                    f"train_throughput_{args.recipe.stem}.json" if args.recipe else "train_throughput.json")
    out = args.out or REPO / "bench" / "results" / default_name

    import ray

    workdir = Path(tempfile.mkdtemp(prefix="asr-trainbench-"))
    ray_tmp = tempfile.mkdtemp(prefix="asrb-", dir="/tmp")  # short: Ray's socket paths live here
    try:
        manifest = workdir / "train.json"
        utterances, audio_s = write_manifest(manifest, count, args.max_duration)
        info = machine()
        ray.init(address="local", num_cpus=max(1, round(max(args.workers) * args.cpus_per_worker + 0.49)),
                 include_dashboard=False, _temp_dir=ray_tmp)
        runs = []
        for workers in args.workers:
            print(f"[bench] {workers} worker(s) ...", flush=True)
            runs.append(run_once(workdir, manifest, workers, sections, args))
            print(f"[bench] {workers} worker(s): {runs[-1]['audio_s_per_s']:.1f} audio-s/s "
                  f"(epoch {runs[-1]['epoch_time_s']:.1f} s)", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    report = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info,
              "load_avg_after": list(os.getloadavg()),
              "setup": {"model": ("tiny" if args.quick else f"recipe {args.recipe}" if args.recipe
                                  else "256-filter QuartzNet-style (5 blocks)"),
                        "loss": sections.get("loss"),
                        "utterances": utterances, "train_audio_s": round(audio_s, 1), "epochs": args.epochs,
                        "batch_size": args.batch_size, "device": "cpu", "backend": "gloo"},
              "runs": runs}
    if len(runs) >= 2 and runs[0]["audio_s_per_s"] > 0:
        report["speedup_vs_first"] = {str(r["workers"]): round(r["audio_s_per_s"] / runs[0]["audio_s_per_s"], 2)
                                      for r in runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({r["workers"]: round(r["audio_s_per_s"], 1) for r in runs}), "->", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
