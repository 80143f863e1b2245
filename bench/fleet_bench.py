"""A fleet of `asr serve` replicas behind nginx with the default model: what the balancer adds, and a rollout's timeline.

Copies the default model's versions (``--from-version`` and ``--to-version`` of ``--model``) into a
scratch registry, starts ``--replicas`` servers over it (default settings, ``ASR_REGISTRY_POLL_S``
left at 2 s) and Debian's nginx in front (deploy/nginx/local.py), then:

* latency: ``--requests`` 5 s AN4 clips, one at a time, alternately straight to a replica and through
  the balancer (REST), and the same for gRPC Recognize; p50 / p99 of each and the difference;
* rollout: ``asr models activate MODEL@TO`` while ``--clients`` keep posting clips through the
  balancer; when each replica switched (polled on its /health/ready every 50 ms), and every
  response's status and version;
* scale-down: SIGTERM to one replica while ``--clients`` (half REST, half gRPC) keep sending through
  the balancer; how long it drained and every outcome.

Throughput cannot scale on a 2-core machine (every replica shares the same two cores); this
measures the balancer's cost and the rollout, not capacity.

    python bench/fleet_bench.py --out bench/results/fleet_<date>.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import REPO, SPEECH, free_port, machine, make_clips, wav  # noqa: E402

sys.path.insert(0, str(REPO / "deploy" / "nginx"))
import local as nginx_local  # noqa: E402

sys.path.insert(0, str(REPO))
from client.grpc_client import CHANNEL_OPTIONS  # noqa: E402


def start_replica(index: int, registry: Path, model: str, log_dir: Path) -> dict:
    port, grpc_port = free_port(), free_port()
    log = open(log_dir / f"replica-{index}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.server", "--host", "127.0.0.1", "--port", str(port), "--grpc-port",
         str(grpc_port), "--registry", str(registry), "--model", model],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "ASR_REPLICA_ID": f"replica-{index}"},
        stdout=log, stderr=subprocess.STDOUT)
    return {"id": f"replica-{index}", "port": port, "grpc_port": grpc_port, "proc": proc}


def version_of(replica: dict) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{replica['port']}/health/ready", timeout=2).json()["model"]["version"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)}


def latency(replica: dict, balancer: dict, payloads: list[bytes], pcm: list[bytes], requests: int) -> dict:
    from service.asr_pb import asr_pb2, asr_pb2_grpc

    direct, through, direct_grpc, through_grpc = [], [], [], []
    config = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000)
    with httpx.Client(timeout=60) as http, grpc.insecure_channel(f"127.0.0.1:{replica['grpc_port']}") as one, \
            grpc.insecure_channel(f"127.0.0.1:{balancer['grpc_port']}") as lb:
        stubs = {"direct": asr_pb2_grpc.SpeechRecognitionStub(one), "lb": asr_pb2_grpc.SpeechRecognitionStub(lb)}
        for i in range(requests):
            for base, out in ((f"http://127.0.0.1:{replica['port']}", direct),
                              (f"http://127.0.0.1:{balancer['http_port']}", through)):
                started = time.monotonic()
                http.post(base + "/transcribe", content=payloads[i % len(payloads)],
                          headers={"Content-Type": "audio/wav"}).raise_for_status()
                out.append(time.monotonic() - started)
            for key, out in (("direct", direct_grpc), ("lb", through_grpc)):
                started = time.monotonic()
                stubs[key].Recognize(asr_pb2.RecognizeRequest(config=config, audio=pcm[i % len(pcm)]), timeout=60)
                out.append(time.monotonic() - started)
    rest = {"direct": percentiles(direct), "through_nginx": percentiles(through)}
    grpc_ = {"direct": percentiles(direct_grpc), "through_nginx": percentiles(through_grpc)}
    for row in (rest, grpc_):
        row["added_p50_ms"] = round(row["through_nginx"]["p50_ms"] - row["direct"]["p50_ms"], 2)
        row["added_p99_ms"] = round(row["through_nginx"]["p99_ms"] - row["direct"]["p99_ms"], 2)
    return {"rest": rest, "grpc": grpc_}


async def post_clips(balancer: dict, payloads: list[bytes], index: int, step: int, stop: asyncio.Event,
                     record) -> None:
    """Client ``index`` of ``step``: posts clips through the balancer until ``stop``, ``record(response)`` each."""
    async with httpx.AsyncClient(timeout=120) as http:
        i = index
        while not stop.is_set():
            record(await http.post(f"http://127.0.0.1:{balancer['http_port']}/transcribe",
                                   content=payloads[i % len(payloads)], headers={"Content-Type": "audio/wav"}))
            i += step


async def rollout(args, registry: Path, replicas: list[dict], balancer: dict, payloads: list[bytes]) -> dict:
    outcomes: list[tuple[float, int, str | None]] = []
    stop = asyncio.Event()

    def record(r: httpx.Response) -> None:
        outcomes.append((time.monotonic(), r.status_code, r.headers.get("x-asr-model")))

    clients = [asyncio.ensure_future(post_clips(balancer, payloads, i, args.clients, stop, record))
               for i in range(args.clients)]
    await asyncio.sleep(5)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "cli.main", "--registry", str(registry), "models", "activate",
                    f"{args.model}@{args.to_version}"], cwd=REPO, check=True, capture_output=True)
    switched: dict[str, float] = {}
    while len(switched) < len(replicas):
        for replica in replicas:
            if replica["id"] not in switched and await asyncio.to_thread(version_of, replica) == args.to_version:
                switched[replica["id"]] = round(time.monotonic() - started, 2)
        await asyncio.sleep(0.05)
        if time.monotonic() - started > 300:
            break
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*clients)
    statuses: dict[str, int] = {}
    versions: dict[str, int] = {}
    for _, status, version in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        versions[str(version)] = versions.get(str(version), 0) + 1
    return {"activated": f"{args.model}@{args.from_version} -> {args.model}@{args.to_version}",
            "poll_s": 2.0, "switched_after_s": switched, "requests": len(outcomes), "statuses": statuses,
            "versions": versions}


async def scale_down(args, replicas: list[dict], balancer: dict, payloads: list[bytes], pcm: list[bytes]) -> dict:
    """SIGTERM the last replica (what `--scale asr=N-1` does) while clients post through the balancer, half of them
    over REST and half over gRPC: how long its drain took and every outcome."""
    from service.asr_pb import asr_pb2, asr_pb2_grpc

    outcomes: list[tuple[float, str, str]] = []
    stop = asyncio.Event()
    config = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000)

    def record(r: httpx.Response) -> None:
        outcomes.append((time.monotonic(), "rest", str(r.status_code)))

    async def grpc_client(index: int) -> None:
        # Our client's channel options: its retry policy sends again what a stopping replica never started.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{balancer['grpc_port']}", options=CHANNEL_OPTIONS) as channel:
            stub, i = asr_pb2_grpc.SpeechRecognitionStub(channel), index
            while not stop.is_set():
                try:
                    await stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=pcm[i % len(pcm)]), timeout=120)
                    outcomes.append((time.monotonic(), "grpc", "OK"))
                except grpc.aio.AioRpcError as e:
                    outcomes.append((time.monotonic(), "grpc", e.code().name))
                i += args.clients

    clients = [asyncio.ensure_future(post_clips(balancer, payloads, i, args.clients, stop, record) if i % 2 == 0
                                     else grpc_client(i)) for i in range(args.clients)]
    await asyncio.sleep(5)
    leaving = replicas[-1]
    sigterm = time.monotonic()
    leaving["proc"].send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(leaving["proc"].wait, 120)
    exited = time.monotonic()
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*clients)
    counts: dict[str, int] = {}
    for _, transport, outcome in outcomes:
        counts[f"{transport} {outcome}"] = counts.get(f"{transport} {outcome}", 0) + 1
    return {"replica": leaving["id"], "drain_s": round(exited - sigterm, 2), "exit_code": exit_code,
            "requests": len(outcomes), "during_drain": sum(sigterm <= t <= exited for t, _, _ in outcomes),
            "outcomes": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=REPO / "registry")
    parser.add_argument("--model", default="an4-quartznet")
    parser.add_argument("--from-version", type=int, default=7)
    parser.add_argument("--to-version", type=int, default=6)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="per path, for the latency part")
    parser.add_argument("--clients", type=int, default=8, help="for the rollout part")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "settings": {k: str(v) for k, v in vars(args).items()},
              "note": "every replica shares the machine's cores: no throughput scaling can be shown here"}
    clips = make_clips(SPEECH / "an4_test.json", 5.0, 16)
    payloads = [wav(c) for c in clips]
    pcm = [(c * 32767).clip(-32768, 32767).astype("<i2").tobytes() for c in clips]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        registry = tmp / "registry"
        for version in (args.from_version, args.to_version):
            shutil.copytree(args.registry / args.model / str(version), registry / args.model / str(version))
        subprocess.run([sys.executable, "-m", "cli.main", "--registry", str(registry), "models", "activate",
                        f"{args.model}@{args.from_version}"], cwd=REPO, check=True, capture_output=True)
        replicas = [start_replica(i, registry, args.model, tmp) for i in range(args.replicas)]
        nginx = None
        try:
            deadline = time.monotonic() + 600
            while not all(version_of(r) == args.from_version for r in replicas):
                if time.monotonic() > deadline or any(r["proc"].poll() is not None for r in replicas):
                    raise RuntimeError("the replicas did not become ready")
                time.sleep(0.5)
            balancer = {"http_port": free_port(), "grpc_port": free_port()}
            nginx = nginx_local.start(tmp / "nginx", balancer["http_port"], balancer["grpc_port"],
                                      [("127.0.0.1", r["port"], r["grpc_port"]) for r in replicas])
            report["latency"] = latency(replicas[0], balancer, payloads, pcm, args.requests)
            print(json.dumps(report["latency"]), flush=True)
            report["rollout"] = asyncio.run(rollout(args, registry, replicas, balancer, payloads))
            print(json.dumps(report["rollout"]), flush=True)
            report["scale_down"] = asyncio.run(scale_down(args, replicas, balancer, payloads, pcm))
            print(json.dumps(report["scale_down"]), flush=True)
        finally:
            if nginx is not None:
                nginx.send_signal(signal.SIGQUIT)
                nginx.wait(30)
            for r in replicas:
                if r["proc"].poll() is None:
                    r["proc"].send_signal(signal.SIGTERM)
            for r in replicas:
                r["proc"].wait(60)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
