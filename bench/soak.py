"""Soak at saturation: many clients against a small queue for minutes; only designed 429s, and memory that stays put.

Starts the server (bench/serve_bench.py's ``start_server``) with a small queue, runs --clients
keep-alive clients posting 5 s AN4 clips in a loop for --minutes, and samples the server's
resident set every second. Reports status counts (anything but 200 and 429 is a failure), and
the RSS growth between minute 2 (after warm-up) and the end.

    python bench/soak.py --registry registry --model an4-quartznet --minutes 10 --clients 64

Writes bench/results/soak_<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from serve_bench import REPO, SPEECH, RawHTTPClient, free_port, machine, make_clips, raw_request, start_server, wav


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(port: int, pid: int, payloads: list[bytes], clients: int, seconds: float) -> dict:
    requests = [raw_request("127.0.0.1", port, p) for p in payloads]
    statuses: collections.Counter = collections.Counter()
    per_minute: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    rss: list[tuple[float, float]] = []
    started = time.monotonic()
    stop_at = started + seconds

    async def client(index: int) -> None:
        http, i = RawHTTPClient("127.0.0.1", port), index
        try:
            while time.monotonic() < stop_at:
                try:
                    status = await http.post(requests[i % len(requests)])
                except (OSError, asyncio.IncompleteReadError, RuntimeError):
                    status = "connection_error"
                    await http.close()
                    http = RawHTTPClient("127.0.0.1", port)
                statuses[status] += 1
                per_minute[int((time.monotonic() - started) // 60)][status] += 1
                if status == 429:
                    await asyncio.sleep(0.05)  # a polite client backs off a little, as Retry-After asks
                i += clients
        finally:
            await http.close()

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            rss.append((round(time.monotonic() - started, 1), rss_mb(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sampler(), *(client(i) for i in range(clients)))
    at = lambda t: min(rss, key=lambda point: abs(point[0] - t))[1]  # noqa: E731
    minute2, end = at(120.0), rss[-1][1]
    return {"statuses": {str(k): v for k, v in statuses.items()},
            "per_minute": {m: {str(k): v for k, v in c.items()} for m, c in sorted(per_minute.items())},
            "failures": sum(v for k, v in statuses.items() if k not in (200, 429)),
            "rss_mb_minute_2": round(minute2, 1), "rss_mb_end": round(end, 1),
            "rss_growth_after_minute_2": round((end - minute2) / minute2, 4),
            "rss_mb_max": round(max(r for _, r in rss), 1), "rss_samples": rss[::10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--model", default="an4-quartznet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-queue-size", type=int, default=16, help="small, so saturation means 429s")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    payloads = [wav(c) for c in make_clips(SPEECH / "an4_test.json", 5.0, 64)]
    port = free_port()
    proc = start_server(args, port, args.max_batch_size, max_queue_size=args.max_queue_size)
    try:
        result = asyncio.run(soak(port, proc.pid, payloads, args.clients, args.minutes * 60))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    report = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **result}
    out = args.out or REPO / "bench" / "results" / f"soak_{datetime.now():%Y-%m-%d}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("rss_samples", "per_minute")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
