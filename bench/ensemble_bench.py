"""Offline cost of an ensemble against one of its members: acoustic model and greedy/beam decoding, side by side.

    .venv/bin/python bench/ensemble_bench.py --model an4-quartznet --members an4-seed2 an4-seed3 an4-seed4 an4-seed5
        [--speeds 0.95 1.0 1.05 --out bench/results/ensemble_speeds_inference.json]

The members are loaded from the registry and combined in memory (as `asr models ensemble` would
store them); --model is the single model to compare with (usually the first member). Each repeat
times both on the same AN4 test clips, alternating, and the JSON in bench/results/ gives medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_model  # noqa: E402  (bench/machine.py; scripts run from bench/)

SPEECH = ROOT.parent / "shared" / "speech"


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    import torch

    from lm.beam import BeamDecoder
    from model import EnsembleRecognizer, Registry, decode_audio, greedy_decode, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=os.environ.get("ASR_REGISTRY", str(ROOT / "registry")))
    parser.add_argument("--model", required=True, help="the single model, NAME[@VERSION]")
    parser.add_argument("--members", nargs="+", required=True, help="the ensemble's members")
    parser.add_argument("--speeds", nargs="+", type=float, default=[1.0], help="input speeds each member hears")
    parser.add_argument("--clips", type=int, default=64, help="AN4 test clips per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--beam-width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench/results/ensemble_inference.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registry = Registry(args.registry)
    single, single_ref, _ = load_model(registry, args.model)
    members = [load_model(registry, spec) for spec in args.members]
    ensemble = EnsembleRecognizer.of([m for m, _, _ in members], args.speeds).eval()
    rows = [json.loads(line) for line in (SPEECH / "an4_test.json").read_text().splitlines() if line.strip()]
    clips = [decode_audio(SPEECH / r["audio_filepath"], single.sample_rate).samples for r in rows[:args.clips]]
    audio_s = sum(len(c) for c in clips) / single.sample_rate
    labels = single.vocabulary.labels
    beam = BeamDecoder(labels)
    times: dict[str, dict[str, list[float]]] = {"single": {}, "ensemble": {}}
    for repeat in range(args.repeats):
        for name, model in (("single", single), ("ensemble", ensemble)):
            lps, acoustic_s = _timed(lambda: model.log_probs_sorted(clips, 16))
            _, greedy_s = _timed(lambda: [greedy_decode(lp, labels, model.frame_duration_s) for lp in lps])
            _, beam_s = _timed(lambda: [beam.decode(lp, beam_width=args.beam_width) for lp in lps])
            for key, value in (("acoustic_s", acoustic_s), ("greedy_decode_s", greedy_s), ("beam_decode_s", beam_s)):
                times[name].setdefault(key, []).append(value)
        print(f"[repeat {repeat + 1}/{args.repeats}] single acoustic {times['single']['acoustic_s'][-1]:.2f} s, "
              f"ensemble acoustic {times['ensemble']['acoustic_s'][-1]:.2f} s", flush=True)
    medians = {name: {key: round(statistics.median(v), 4) for key, v in parts.items()} for name, parts in times.items()}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "single": str(single_ref), "members": [str(ref) for _, ref, _ in members], "speeds": args.speeds,
        "clips": len(clips), "audio_s": round(audio_s, 2), "repeats": args.repeats, "beam_width": args.beam_width,
        "medians_s": medians,
        "audio_s_per_s": {name: {"greedy": round(audio_s / (m["acoustic_s"] + m["greedy_decode_s"]), 1),
                                 "beam": round(audio_s / (m["acoustic_s"] + m["beam_decode_s"]), 1)}
                          for name, m in medians.items()},
        "ensemble_over_single": {key: round(medians["ensemble"][key] / medians["single"][key], 2)
                                 for key in medians["single"]},
        "raw_s": times,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_at_start": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("audio_s_per_s", "ensemble_over_single")}))


if __name__ == "__main__":
    main()
