"""Streaming capacity: how many concurrent real-time gRPC streams a server holds within latency targets.

Starts `asr serve` (this checkout, or ``--code DIR`` for another one, e.g. a worktree of the code
before a change) as its own process with default settings, then for each N runs N clients at
once, each streaming AN4 test clips back to back over asr.v1 StreamingRecognize in 100 ms
LINEAR_PCM messages paced at real time, for ``--seconds`` of wall time. Per N it records the
final result's latency after a clip's last message (p50/p99), the median lag of interim results
behind the audio they cover, failed streams, and the server's CPU seconds per second of audio
streamed, against the same server's CPU per audio-second offline (the same clips through
Recognize, 8 at a time). A level passes with final p99 <= 300 ms and median interim lag <= 200 ms;
the largest passing N is the capacity. The load generator shares the machine's cores. With
``--transport ws`` the clients use the realtime WebSocket instead (one committed item per clip).

    .venv/bin/python bench/stream_capacity.py --model an4-quartznet --levels 8 16 32 64
    .venv/bin/python bench/stream_capacity.py --model an4-quartznet@6 --levels 64 128 192 256 --code /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402 - bench/machine.py
from model.audio import decode_audio  # noqa: E402
from service.asr_pb import asr_pb2, asr_pb2_grpc  # noqa: E402

MESSAGE_S = 0.1
FINAL_P99_S = 0.300
INTERIM_LAG_S = 0.200
SPEECH = ROOT.parent / "shared" / "speech"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()


async def _stream_clip(stub, pcm: bytes, rate: int) -> tuple[float | None, list[float]]:
    """One clip at real-time pace: (final latency after its last message, interim lags)."""
    step = int(MESSAGE_S * rate) * 2
    sent_at: list[float] = []

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=rate),
            interim_results=True))
        start = time.monotonic()
        for k, offset in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, start + k * MESSAGE_S - time.monotonic()))
            sent_at.append(time.monotonic())
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset: offset + step])

    last_final, lags = None, []
    async for response in stub.StreamingRecognize(requests()):
        now = time.monotonic()
        for result in response.results:
            if result.is_final:
                last_final = now
            elif sent_at:
                k = min(len(sent_at) - 1, max(0, int(np.ceil(result.audio_processed / MESSAGE_S - 1e-6)) - 1))
                lags.append(now - sent_at[k])
    return (last_final - sent_at[-1] if last_final and sent_at else None), lags


async def _ws_clip(url: str, pcm: bytes, rate: int) -> tuple[float | None, list[float]]:
    """One clip over the realtime WebSocket (one item, committed after its last 100 ms append): the completed
    transcript's latency after the commit, and each delta's lag behind the newest append before it (the
    socket's events do not say which audio they cover, so this bounds the lag from below)."""
    import base64

    from websockets.asyncio.client import connect

    step = int(MESSAGE_S * rate) * 2
    last_append, lags = [0.0], []
    async with connect(f"{url}/v1/realtime?intent=transcription", open_timeout=60, max_size=None) as ws:
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "sample_rate": rate, "turn_detection": None}}))

        async def send():
            start = time.monotonic()
            for k, offset in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, start + k * MESSAGE_S - time.monotonic()))
                last_append[0] = time.monotonic()
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[offset: offset + step]).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        sender = asyncio.create_task(send())
        try:
            async for message in ws:
                event = json.loads(message)
                kind, now = event["type"], time.monotonic()
                if kind == "error":
                    raise RuntimeError(event["error"].get("code") or "error")
                if kind.endswith("input_audio_transcription.delta") and not sender.done():
                    lags.append(now - last_append[0])
                if kind.endswith("input_audio_transcription.completed"):
                    await sender
                    return now - last_append[0], lags
        finally:
            sender.cancel()
    return None, lags


async def _client(stub, clips: list[bytes], rate: int, offset: int, stop_at: float, out: dict) -> None:
    k = offset
    while time.monotonic() < stop_at:
        pcm = clips[k % len(clips)]
        k += 1
        try:
            final_s, lags = await (_ws_clip(stub, pcm, rate) if isinstance(stub, str) else _stream_clip(stub, pcm,
                                                                                                         rate))
        except grpc.aio.AioRpcError as exc:
            out["failures"].append(exc.code().name)
            continue
        except Exception as exc:  # noqa: BLE001 - a WebSocket's failure, counted by its kind
            out["failures"].append(type(exc).__name__ if not isinstance(exc, RuntimeError) else str(exc))
            continue
        out["audio_s"] += len(pcm) / 2 / rate
        out["lags"].extend(lags)
        if final_s is None:
            out["failures"].append("no final")
        else:
            out["finals"].append(final_s)


async def _level(target: str, clips: list[bytes], rate: int, streams: int, seconds: float, pid: int,
                 ws_url: str | None = None) -> dict:
    out = {"finals": [], "lags": [], "failures": [], "audio_s": 0.0}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ws_url or asr_pb2_grpc.SpeechRecognitionStub(channel)
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        stop_at = t0 + seconds
        # Staggered starts, so the streams do not send in lockstep.
        await asyncio.gather(*(_delayed(i * MESSAGE_S / max(1, streams) * 10, _client(stub, clips, rate, i, stop_at,
                                                                                         out))
                               for i in range(streams)))
        cpu, wall = _cpu_s(pid) - cpu0, time.monotonic() - t0
    finals = sorted(out["finals"])
    result = {"streams": streams, "clips_finished": len(finals), "failures": len(out["failures"]),
              "failure_kinds": sorted(set(out["failures"])),
              "final_p50_ms": round(1000 * finals[len(finals) // 2], 1) if finals else None,
              "final_p99_ms": round(1000 * finals[min(len(finals) - 1, int(0.99 * len(finals)))], 1) if finals else None,
              "median_interim_lag_ms": round(1000 * statistics.median(out["lags"]), 1) if out["lags"] else None,
              "audio_s": round(out["audio_s"], 1), "wall_s": round(wall, 1),
              "server_cpu_s_per_audio_s": round(cpu / out["audio_s"], 4) if out["audio_s"] else None,
              "server_cpu_cores_busy": round(cpu / wall, 2)}
    result["passes"] = bool(finals and not out["failures"] and result["final_p99_ms"] <= 1000 * FINAL_P99_S
                            and result["median_interim_lag_ms"] is not None
                            and result["median_interim_lag_ms"] <= 1000 * INTERIM_LAG_S)
    return result


async def _delayed(delay_s: float, coro):
    await asyncio.sleep(delay_s)
    return await coro


async def _offline_cpu(target: str, clips: list[bytes], rate: int, pid: int, concurrency: int = 8) -> dict:
    """The server's CPU per audio-second for the same clips sent whole (Recognize), ``concurrency`` at a time."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
        config = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=rate)
        queue = list(clips) * 2
        cpu0, t0 = _cpu_s(pid), time.monotonic()

        async def worker():
            while queue:
                await stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=queue.pop()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = _cpu_s(pid) - cpu0, time.monotonic() - t0
    audio_s = 2 * sum(len(c) / 2 / rate for c in clips)
    return {"audio_s": round(audio_s, 1), "server_cpu_s_per_audio_s": round(cpu / audio_s, 4),
            "x_real_time": round(audio_s / wall, 1)}


def _start_server(code: Path, registry: Path, model: str) -> tuple[subprocess.Popen, str, str]:
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--registry", str(registry), "serve", "--model", model,
                             "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port)],
                            cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return proc, f"127.0.0.1:{grpc_port}", f"ws://127.0.0.1:{port}"
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


async def bench(args) -> dict:
    rows = [json.loads(line) for line in (SPEECH / "an4_test.json").read_text().splitlines() if line.strip()]
    clips = [_pcm(decode_audio(SPEECH / row["audio_filepath"], 16_000).samples) for row in rows]
    code = Path(args.code).resolve() if args.code else ROOT
    proc, target, ws_url = _start_server(code, Path(args.registry).resolve(), args.model)
    try:
        offline = await _offline_cpu(target, clips, 16_000, proc.pid)
        print("offline", json.dumps(offline), flush=True)
        levels = []
        for streams in args.levels:
            level = await _level(target, clips, 16_000, streams, args.seconds, proc.pid,
                                 ws_url if args.transport == "ws" else None)
            level["streaming_cpu_vs_offline"] = (round(level["server_cpu_s_per_audio_s"]
                                                       / offline["server_cpu_s_per_audio_s"], 2)
                                                 if level["server_cpu_s_per_audio_s"] else None)
            levels.append(level)
            print(json.dumps(level), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    passing = [level["streams"] for level in levels if level["passes"]]
    return {"benchmark": "stream_capacity", "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "model": args.model,
            "transport": args.transport,
            "code": str(code), "seconds_per_level": args.seconds, "message_s": MESSAGE_S,
            "targets": {"final_p99_ms": 1000 * FINAL_P99_S, "median_interim_lag_ms": 1000 * INTERIM_LAG_S},
            "offline": offline, "levels": levels, "capacity_streams": max(passing) if passing else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(ROOT / "registry"))
    parser.add_argument("--model", default="an4-quartznet")
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time per level (default 30)")
    parser.add_argument("--code", help="another checkout to run the server from (its own code, this venv)")
    parser.add_argument("--transport", choices=("grpc", "ws"), default="grpc",
                        help="asr.v1 StreamingRecognize, or the realtime WebSocket (one item per clip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    print(json.dumps({k: report[k] for k in ("model", "capacity_streams")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
