"""Serving benchmark: throughput and latency of POST /transcribe against a real local server.

For each batching mode (dynamic: the configured max_batch_size; off: max_batch_size=1) it
starts ``python -m service.server`` on 127.0.0.1, drives it with N concurrent clients for
--duration seconds per level, and also measures offline engine throughput (same model and
clips, no HTTP). Clips are 5 s, cut from concatenated AN4 test utterances.

    python bench/serve_bench.py --registry registry --model an4-quartznet
    python bench/serve_bench.py --registry /tmp/reg --model tiny --clients 1 8 --duration 10   # smoke run

Writes bench/results/serve_<date>.json with the machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from machine import cpu_model  # bench/machine.py (scripts run from bench/)

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
RATE = 16_000


def make_clips(manifest: Path, seconds: float, count: int) -> list[np.ndarray]:
    from model.audio import decode_audio

    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    audio = np.concatenate([decode_audio(manifest.parent / e["audio_filepath"], RATE).samples for e in entries[:40]])
    size = int(seconds * RATE)
    return [audio[(i * size) % (len(audio) - size):][:size] for i in range(count)]


def wav(clip: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, clip, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": os.getloadavg()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, max_batch_size: int, code: Path = REPO, max_queue_size: int = 4096
                 ) -> subprocess.Popen:
    """``python -m service.server`` from the checkout ``code`` (another commit's, for before/after runs)."""
    cmd = [sys.executable, "-m", "service.server", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
           "--registry", str(Path(args.registry).resolve()), "--model", args.model, "--device", args.device,
           "--max-batch-size", str(max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms)]
    env = {**os.environ, "PYTHONPATH": str(code), "ASR_MAX_QUEUE_SIZE": str(max_queue_size)}
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


class RawHTTPClient:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: a wrk-style load generator.

    The load generator shares this machine's two cores with the server, so its own CPU cost
    is charged to the service. httpx spends about a millisecond of Python per request; this
    writes prebuilt request bytes and reads back just the status and body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("response without Content-Length")
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


def raw_request(host: str, port: int, body: bytes) -> bytes:
    head = (f"POST /transcribe?word_timestamps=false HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: audio/wav\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def drive(port: int, payloads: list[bytes], clients: int, duration_s: float, clip_s: float,
                load_generator: str = "raw") -> dict:
    latencies: list[float] = []
    failures = 0
    stop_at = time.monotonic() + duration_s
    requests = [raw_request("127.0.0.1", port, p) for p in payloads]

    async def post(http, i: int) -> int:
        if load_generator == "raw":
            return await http.post(requests[i % len(requests)])
        r = await http.post(f"http://127.0.0.1:{port}/transcribe?word_timestamps=false",
                            content=payloads[i % len(payloads)], headers={"Content-Type": "audio/wav"})
        return r.status_code

    async def client(index: int, http) -> None:
        nonlocal failures
        i = index
        own = RawHTTPClient("127.0.0.1", port) if load_generator == "raw" else http
        try:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    status = await post(own, i)
                except (OSError, asyncio.IncompleteReadError, RuntimeError, httpx.HTTPError):
                    status = None
                    if load_generator == "raw":  # the server closed the connection: reconnect
                        await own.close()
                        own = RawHTTPClient("127.0.0.1", port)
                if status == 200:
                    latencies.append(time.monotonic() - started)
                else:
                    failures += 1
                i += clients
        finally:
            if load_generator == "raw":
                await own.close()

    started = time.monotonic()
    if load_generator == "raw":
        await asyncio.gather(*(client(i, None) for i in range(clients)))
    else:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients + 4)) as http:
            await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = time.monotonic() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "load_generator": load_generator, "requests": len(latencies), "failures": failures,
            "elapsed_s": round(elapsed, 3),
            "throughput_audio_s_per_s": round(len(latencies) * clip_s / elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 3),
            **{f"p{q}_latency_s": round(float(np.percentile(lat, q)), 4) for q in (50, 95, 99)}}


async def offline(args, clips: list[np.ndarray], batch_size: int) -> dict:
    """The engine without HTTP: rounds of all clips submitted at once, for --duration seconds."""
    from service.config import ServiceConfig
    from service.domain import TranscriptionRequest
    from service.engine import Engine

    config = ServiceConfig(registry=args.registry, default_model=args.model, device=args.device, grpc_port=0,
                           max_batch_size=batch_size, max_queue_delay_ms=args.max_queue_delay_ms, max_queue_size=4096)
    engine = await Engine.start(config)
    rounds: list[float] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < args.duration or len(rounds) < 3:
            t0 = time.monotonic()
            await asyncio.gather(*(engine.transcribe(TranscriptionRequest(audio=c, word_timestamps=False))
                                   for c in clips))
            rounds.append(len(clips) * args.clip_s / (time.monotonic() - t0))
        elapsed = time.monotonic() - started
    finally:
        await engine.drain_and_stop(10)
    return {"max_batch_size": batch_size, "clips_per_round": len(clips), "rounds": len(rounds),
            "elapsed_s": round(elapsed, 3),
            "throughput_audio_s_per_s": round(len(rounds) * len(clips) * args.clip_s / elapsed, 3),
            "median_round_audio_s_per_s": round(float(np.median(rounds)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=os.environ.get("ASR_REGISTRY", "registry"))
    parser.add_argument("--model", default="an4-quartznet")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency level")
    parser.add_argument("--clip-s", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=16, help="the 'dynamic batching on' setting")
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument("--manifest", type=Path, default=SPEECH / "an4_test.json")
    parser.add_argument("--load-generator", choices=("raw", "httpx"), default="raw",
                        help="raw: keep-alive HTTP/1.1 on asyncio streams (light); httpx: the httpx client")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    clips = make_clips(args.manifest, args.clip_s, 64)
    payloads = [wav(c) for c in clips]
    report = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "http": [],
              "offline": []}
    for label, batch_size in (("dynamic", args.max_batch_size), ("off", 1)):
        port = free_port()
        proc = start_server(args, port, batch_size)
        try:
            for clients in args.clients:
                row = asyncio.run(drive(port, payloads, clients, args.duration, args.clip_s, args.load_generator))
                row.update(batching=label, max_batch_size=batch_size)
                print(json.dumps(row), flush=True)
                report["http"].append(row)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        row = asyncio.run(offline(args, clips, batch_size))
        print(json.dumps({"offline": row}), flush=True)
        report["offline"].append(row)
        for http_row in report["http"]:
            if http_row["batching"] == label:
                http_row["fraction_of_offline"] = round(
                    http_row["throughput_audio_s_per_s"] / row["throughput_audio_s_per_s"], 4)
                print(f"[{label}] {http_row['clients']} clients: "
                      f"{http_row['fraction_of_offline'] * 100:.1f} % of offline", flush=True)
    out = args.out or REPO / "bench" / "results" / f"serve_{datetime.now().strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
