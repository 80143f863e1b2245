"""`asr transcribe-batch` against the engine: files per second and x real time, default model and settings.

The archive is AN4's training set (948 files, 42 min; speed only, so the training set is fair game), or
the files of the ``--manifest`` files given.
In one session, side by side:

* engine: `asr bench` at the same precision and batch size, on synthetic clips of the archive's median
  length, ``--runs`` timed runs, before and after the batch runs (their median): the network alone, no
  reading, decoding or writing;
* batch: `asr transcribe-batch` over the archive into a fresh folder on a local Ray instance (its default
  workers and CPUs), ``--repeats`` times; its summary's x real time covers the whole run (Ray start-up,
  model shipping, reading, inference, decoding, writing). The steady state (first result to last) is
  measured too, from the result files' modification times.

    python bench/batch_bench.py --out bench/results/batch_<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import REPO, SPEECH, machine  # noqa: E402

ASR = [sys.executable, "-m", "cli.main"]


def _asr_json(*args: str) -> dict:
    proc = subprocess.run([*ASR, *args, "--json"], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"asr {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="an4-quartznet")
    parser.add_argument("--manifest", type=Path, nargs="+", default=[SPEECH / "an4_train.json"],
                        help="NeMo manifests whose files make the archive (default: AN4's training set)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1,
                        help="the archive is this many copies of the files (links under copy1/, copy2/, ...), "
                             "for archives long enough that start-up stops mattering")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [{**json.loads(line), "audio_filepath": str(m.parent / json.loads(line)["audio_filepath"])}
            for m in args.manifest for line in m.read_text().splitlines() if line.strip()]
    durations = [r["duration"] for r in rows]
    median_s = statistics.median(durations)
    def engine_run() -> dict:
        report = _asr_json("bench", "--model", args.model, "--precision", args.precision, "--batch-size",
                           str(args.batch_size), "--clip-seconds", f"{median_s:.3f}", "--runs", str(args.runs))
        print(f"engine: {report['x_realtime']}x real time ({report['precision']}, batch {args.batch_size}, "
              f"{median_s:.2f} s clips)", flush=True)
        return report

    engines, runs = [engine_run()], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out, archive = Path(tmp) / "out", Path(tmp) / "archive"
            for copy in range(1, args.copies + 1):
                (archive / f"copy{copy}").mkdir(parents=True)
                for i, r in enumerate(rows):
                    (archive / f"copy{copy}" / f"{i:05d}_{Path(r['audio_filepath']).name}").symlink_to(
                        Path(r["audio_filepath"]).resolve())
            summary = _asr_json("transcribe-batch", str(archive), "--out", str(out), "--model", args.model,
                                "--precision", args.precision, "--batch-size", str(args.batch_size), "--quiet")
            stamps = sorted(p.stat().st_mtime for p in out.rglob("*.json") if p.name not in ("run.json",))
            steady_s = stamps[-1] - stamps[0]
            audio_s = summary["audio_hours_this_run"] * 3600
            run = {"repeat": repeat, "summary": summary,
                   "files_per_s": round(summary["done_this_run"] / summary["wall_s"], 2),
                   "steady_x_real_time": round(audio_s / steady_s, 2) if steady_s > 0 else None,
                   "steady_s": round(steady_s, 2), "start_up_s": round(summary["wall_s"] - steady_s, 2)}
            runs.append(run)
            print(f"batch {repeat}: {summary['x_real_time']}x real time over the whole run ({summary['wall_s']} s, "
                  f"{run['files_per_s']} files/s); steady state {run['steady_x_real_time']}x over {steady_s:.1f} s "
                  f"after {run['start_up_s']} s to the first result",
                  flush=True)
    engines.append(engine_run())  # before and after: the machine is shared, its speed drifts
    engine = {**engines[0], "x_realtime": statistics.median(e["x_realtime"] for e in engines),
              "x_realtime_each": [e["x_realtime"] for e in engines]}
    whole = statistics.median(r["summary"]["x_real_time"] for r in runs)
    steady = statistics.median(r["steady_x_real_time"] for r in runs)
    result = {"bench": "batch", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "model": args.model, "manifests": [m.name for m in args.manifest],
              "copies": args.copies, "files": len(durations) * args.copies,
              "audio_min": round(args.copies * sum(durations) / 60, 1), "engine": engine, "runs": runs,
              "median_x_real_time_whole_run": whole, "median_x_real_time_steady": steady,
              "ratio_whole_run_to_engine": round(whole / engine["x_realtime"], 3),
              "ratio_steady_to_engine": round(steady / engine["x_realtime"], 3)}
    print(json.dumps({k: result[k] for k in ("median_x_real_time_whole_run", "median_x_real_time_steady",
                                             "ratio_whole_run_to_engine", "ratio_steady_to_engine")}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
