"""The CUDA paths in one short run, for a lent GPU machine: inference precisions, AMP training, SyncBN, batching.

Nothing here runs in the test suite (our machines have no GPU). On a machine with CUDA:

    .venv/bin/python bench/cuda_check.py --out "$OUT/cuda_check.json"     # about 3 minutes on one GPU

It records, for QuartzNet 15x5 (random weights), the eager model and the inference form at fp32,
fp16 and bf16 for 1, 8 and 32 clips of 10 s (median x real time), the fp16 and bf16 forms'
log-prob distance from fp32, a 5x3 training step with and without AMP (fp16 autocast +
GradScaler), a forward/backward through torch's SyncBatchNorm in a one-rank NCCL group, and the
service engine's throughput with 32 concurrent requests on CUDA, `asr transcribe-batch` on a GPU
actor (its texts against `asr transcribe` on the same device), and `asr train` on Ray Train with one
worker per GPU (NCCL, fp16 AMP, SyncBN). Each part that fails is
recorded with its error instead of stopping the run. ``--device cpu`` runs the same script on
the CPU, as a check that it works before a GPU is lent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli.bench import synthetic_batch  # noqa: E402
from model.features import MelFeaturizerConfig  # noqa: E402
from model.inference import for_inference  # noqa: E402
from model.presets import preset_config  # noqa: E402
from model.recognizer import RecognizerConfig, SpeechRecognizer  # noqa: E402
from model.vocabulary import Vocabulary  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn, device: torch.device, runs: int = 5) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _model(preset: str) -> SpeechRecognizer:
    torch.manual_seed(0)
    return SpeechRecognizer(RecognizerConfig(MelFeaturizerConfig(), preset_config(preset), Vocabulary())).eval()


def inference(device: torch.device, batches: tuple[int, ...]) -> dict:
    model = _model("quartznet_15x5")
    forms = {"eager_fp32": model.to(device)}
    for precision in ("fp32", "fp16", "bf16"):
        try:
            forms[precision] = for_inference(model, precision, device)
        except ValueError as exc:  # a precision this device cannot run
            forms[precision] = str(exc)
    out = {}
    for batch in batches:
        audio = torch.from_numpy(np.stack(synthetic_batch(batch, 10.0, 16_000))).to(device)
        lengths = torch.full((batch,), audio.shape[1], device=device)
        row = {}
        with torch.inference_mode():
            reference = forms["fp32"](audio, lengths)[0] if not isinstance(forms["fp32"], str) else None
            for name, form in forms.items():
                if isinstance(form, str):
                    row[name] = {"error": form}
                    continue
                seconds = _median_s(lambda: form(audio, lengths), device)
                row[name] = {"x_realtime": round(batch * 10.0 / seconds, 1), "ms": round(seconds * 1e3, 2)}
                if reference is not None and name in ("fp16", "bf16"):
                    got = form(audio, lengths)[0]
                    row[name]["argmax_agreement"] = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
        out[f"{batch}x10s"] = row
    return out


def training_step(device: torch.device, amp: bool) -> dict:
    from training.losses import ctc_loss
    from training.train_step import TrainStep
    from training.novograd import NovoGrad

    torch.manual_seed(0)
    recognizer = SpeechRecognizer(RecognizerConfig(MelFeaturizerConfig(), preset_config("quartznet_5x3"),
                                                   Vocabulary())).to(device).train()
    step = TrainStep(recognizer, None, 0).to(device).train()
    optimizer = NovoGrad(step.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    audio = torch.from_numpy(np.stack(synthetic_batch(32, 4.0, 16_000))).to(device)
    lengths = torch.full((32,), audio.shape[1], device=device)
    targets = torch.randint(0, 28, (32, 30), device=device)
    target_lengths = torch.full((32,), 30, device=device)

    def once() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            (log_probs, out_lengths), = step(audio, lengths)
        loss = ctc_loss(log_probs, out_lengths, targets, target_lengths, recognizer.vocabulary.blank_id)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    seconds = _median_s(once, device, runs=3)
    return {"audio_s_per_s": round(32 * 4.0 / seconds, 1), "step_ms": round(seconds * 1e3, 1)}


def sync_bn(device: torch.device) -> dict:
    import torch.distributed as dist

    from training.sync_bn import convert_sync_batchnorm

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        model = convert_sync_batchnorm(_model("quartznet_5x3").network, use_cuda=device.type == "cuda").to(device)
        model.train()
        feats = torch.randn(4, 64, 200, device=device)
        log_probs, _ = model(feats, torch.full((4,), 200, device=device))
        log_probs.sum().backward()
        kinds = sorted({type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__})
        return {"ok": True, "batchnorm_types": kinds}
    finally:
        dist.destroy_process_group()


def batching(device: torch.device) -> dict:
    import tempfile

    from model.checkpoint import publish_model
    from model.registry import Registry
    from service.config import ServiceConfig
    from service.domain import TranscriptionRequest
    from service.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        publish_model(Registry(tmp), "qn", _model("quartznet_5x3"), source="trained")
        config = ServiceConfig(registry=tmp, default_model="qn", device=device.type, grpc_port=0,
                               max_batch_size=32, max_queue_delay_ms=5.0)
        clips = synthetic_batch(64, 5.0, 16_000)

        async def run() -> dict:
            engine = await Engine.start(config)
            try:
                started = time.perf_counter()
                await asyncio.gather(*(engine.transcribe(TranscriptionRequest(audio=c)) for c in clips))
                elapsed = time.perf_counter() - started
            finally:
                await engine.drain_and_stop(5.0)
            return {"audio_s_per_s": round(64 * 5.0 / elapsed, 1), "precision": engine.precision}

        return asyncio.run(run())


def archive_batch(device: torch.device) -> dict:
    """`asr transcribe-batch --gpus-per-worker 1` over 24 synthetic files (one 70 s, in windows); its texts
    against `asr transcribe` on the same device."""
    import subprocess
    import tempfile

    import soundfile as sf

    from model.checkpoint import publish_model
    from model.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        publish_model(Registry(f"{tmp}/registry"), "qn", _model("quartznet_5x3"), source="trained")
        folder = Path(tmp) / "archive"
        folder.mkdir()
        for i, clip in enumerate(synthetic_batch(23, 4.0, 16_000)):
            sf.write(folder / f"clip{i:02d}.wav", clip, 16_000)
        sf.write(folder / "long.wav", synthetic_batch(1, 70.0, 16_000)[0], 16_000)
        gpus = ["--gpus-per-worker", "1"] if device.type == "cuda" else []
        asr = [sys.executable, "-m", "cli.main", "--registry", f"{tmp}/registry"]
        batch = subprocess.run([*asr, "transcribe-batch", str(folder), "--out", f"{tmp}/out", "--model", "qn",
                                "--precision", "fp32", "--json", "--quiet", *gpus], cwd=REPO, capture_output=True,
                               text=True, timeout=600)
        if batch.returncode != 0:
            raise RuntimeError(batch.stderr[-1500:])
        single = subprocess.run([*asr, "transcribe", *sorted(str(p) for p in folder.iterdir()), "--model", "qn",
                                 "--precision", "fp32", "--device", device.type, "--json"], cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        if single.returncode != 0:
            raise RuntimeError(single.stderr[-1500:])
        expected = {Path(r["file"]).name: r["text"] for r in json.loads(single.stdout)["results"]}
        got = {Path(json.loads(line)["file"]).name: json.loads(line)["text"]
               for line in (Path(tmp) / "out" / "results.jsonl").read_text().splitlines()}
        summary = json.loads(batch.stdout)
        return {"files_done": summary["done_this_run"], "x_real_time": summary["x_real_time"],
                "same_text_as_asr_transcribe": sum(got.get(k) == v for k, v in expected.items()),
                "of": len(expected)}


def ray_train(device: torch.device) -> dict:
    """`asr train` on Ray Train: one worker per GPU (NCCL; SyncBN across them when there are two or more; fp16
    AMP), one epoch of QuartzNet 5x3 on 32 synthetic labelled clips, published to a scratch registry. With
    ``--device cpu``, two gloo workers and bf16 AMP. NCCL cannot put two ranks on one GPU, so a one-GPU
    machine checks NCCL, AMP and the SyncBN conversion path with one rank only."""
    import subprocess
    import tempfile

    import soundfile as sf
    import yaml

    from model.registry import Registry

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    workers = gpus or 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i, clip in enumerate(synthetic_batch(32, 3.0, 16_000)):
            path = Path(tmp) / f"clip{i:02d}.wav"
            sf.write(path, clip, 16_000)
            rows.append(json.dumps({"audio_filepath": str(path), "duration": 3.0, "text": "yes no"}))
        (Path(tmp) / "train.json").write_text("\n".join(rows) + "\n")
        config = {"model": {"preset": "quartznet_5x3"},
                  "data": {"train_manifests": [{"path": f"{tmp}/train.json"}], "batch_size": 8},
                  "optim": {"epochs": 1, "warmup_steps": 0},
                  "scaling": {"num_workers": workers, "use_gpu": gpus > 0, "cpus_per_worker": 1},
                  "amp": "fp16" if gpus else "bf16", "sync_bn": True,
                  "run": {"output_dir": f"{tmp}/out", "registry": f"{tmp}/registry", "publish_name": "check",
                          "log_every_steps": 1}}
        (Path(tmp) / "cfg.yaml").write_text(yaml.safe_dump(config))
        started = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        run = subprocess.run([sys.executable, "-m", "cli.main", "train", f"{tmp}/cfg.yaml"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            raise RuntimeError((run.stdout + run.stderr)[-2000:])
        meta = Registry(f"{tmp}/registry").open("check")[1]
        return {"workers": workers, "backend": "nccl" if gpus else "gloo", "amp": config["amp"],
                "sync_bn_across_ranks": workers > 1, "global_steps": meta["extra"]["global_steps"],
                "nodes": meta["extra"]["nodes"], "wall_s": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    device = torch.device(args.device)
    report = {"device": args.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "parts": {}}
    parts = {"inference": lambda: inference(device, tuple(args.batches)),
             "training_fp32": lambda: training_step(device, amp=False),
             "training_amp_fp16": lambda: training_step(device, amp=device.type == "cuda"),
             "sync_bn": lambda: sync_bn(device), "batching_32_requests": lambda: batching(device),
             "archive_batch": lambda: archive_batch(device), "ray_train": lambda: ray_train(device)}
    for name, part in parts.items():
        started = time.perf_counter()
        try:
            report["parts"][name] = part()
        except Exception as exc:  # noqa: BLE001 - record and go on: one broken path must not hide the others
            report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        report["parts"][name]["seconds"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(report["parts"][name])[:400], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
