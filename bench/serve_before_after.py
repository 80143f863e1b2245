"""The default model's serving throughput (32 clients) and p99 latency (8 clients) before and after a change, one run.

Starts the server from two checkouts in turn (the "before" one is usually a `git worktree` of
an older commit, run with this venv), dynamic batching on, and alternates them for --rounds
rounds so that both see the same machine; reports each level's median over rounds.

    git worktree add /tmp/before 24f1e61
    python bench/serve_before_after.py --before /tmp/before --registry registry --model an4-quartznet

Writes bench/results/serve_before_after_<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from serve_bench import REPO, SPEECH, drive, free_port, machine, make_clips, start_server, wav


def commit_of(code: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--model", default="an4-quartznet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clip-s", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    payloads = [wav(c) for c in make_clips(SPEECH / "an4_test.json", args.clip_s, 64)]
    codes = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(args.rounds):
        for name, code in codes.items():
            port = free_port()
            proc = start_server(args, port, args.max_batch_size, code)
            try:
                for clients in args.clients:
                    row = asyncio.run(drive(port, payloads, clients, args.duration, args.clip_s))
                    row["code"] = name
                    runs[name].append(row)
                    print(json.dumps(row), flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    summary = {}
    for name, rows in runs.items():
        summary[name] = {"commit": commit_of(codes[name])}
        for clients in args.clients:
            mine = [r for r in rows if r["clients"] == clients]
            summary[name][f"{clients}_clients"] = {
                "throughput_audio_s_per_s": statistics.median(r["throughput_audio_s_per_s"] for r in mine),
                "p99_latency_s": statistics.median(r["p99_latency_s"] for r in mine),
                "p50_latency_s": statistics.median(r["p50_latency_s"] for r in mine),
                "failures": sum(r["failures"] for r in mine)}
    report = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "summary": summary, "runs": runs}
    out = args.out or REPO / "bench" / "results" / f"serve_before_after_{datetime.now():%Y-%m-%d}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
