"""Streaming latency: time to the first interim result when audio is sent at real-time pace.

Starts an in-process Engine + gRPC server (or uses --grpc HOST:PORT), streams AN4 test clips one
at a time in 100 ms LINEAR_PCM messages paced at real time, and records per stream: time from
the first audio message to the first interim response (and to the first non-empty one), the lag
of every interim behind the audio it covers, and the final's latency after the last message.
Writes bench/results/stream_<date>.json with the machine described.

    .venv/bin/python bench/stream_bench.py                          # registry/an4-quartznet if published
    .venv/bin/python bench/stream_bench.py --streams 20 --model an4-quartznet@6
    .venv/bin/python bench/stream_bench.py --grpc 127.0.0.1:50051   # a running server

Without a published model it benchmarks a randomly initialised model of the AN4 recipe's
architecture (training/recipes/an4.yaml): the same compute per window, meaningless text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402 - bench/machine.py (scripts run from bench/)
from model.audio import decode_audio  # noqa: E402
from service.asr_pb import asr_pb2, asr_pb2_grpc  # noqa: E402

MESSAGE_S = 0.1


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "grpcio": grpc.__version__,
            "load_average_at_start": os.getloadavg()}


def random_an4_architecture(root: Path) -> str:
    from model import Registry, SpeechRecognizer, publish_model
    from training.config import load_config
    from training.init_model import fresh_recognizer_config

    cfg = fresh_recognizer_config(load_config(ROOT / "training/recipes/an4.yaml"))
    publish_model(Registry(root), "an4-arch-random", SpeechRecognizer(cfg).eval(), source="trained")
    return "an4-arch-random"


@contextlib.asynccontextmanager
async def local_server(registry: Path, model: str):
    from service.config import ServiceConfig
    from service.engine import Engine
    from service.grpc_server import start_grpc, stop_grpc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServiceConfig(registry=registry, default_model=model, grpc_port=port, http_host="127.0.0.1")
    engine = await Engine.start(config)
    server = await start_grpc(engine, config)
    try:
        yield f"127.0.0.1:{port}", {k: getattr(config, k) for k in ("max_batch_size", "max_queue_delay_ms",
                                                                     "num_cpu_workers", "torch_threads")}
    finally:
        await stop_grpc(server, 0)
        await engine.drain_and_stop(1.0)


async def one_stream(stub, audio: np.ndarray, rate: int) -> dict:
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()
    step = int(MESSAGE_S * rate) * 2
    sent_at: list[float] = []

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=rate,
                                             enable_word_time_offsets=True), interim_results=True))
        start = time.monotonic()
        for k, offset in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, start + k * MESSAGE_S - time.monotonic()))
            sent_at.append(time.monotonic())
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset: offset + step])

    first_interim = first_text = last_final = None
    lags = []
    async for response in stub.StreamingRecognize(requests()):
        now = time.monotonic()
        for result in response.results:
            if result.is_final:
                last_final = now
                continue
            first_interim = first_interim or now
            if result.alternatives and result.alternatives[0].transcript and first_text is None:
                first_text = now
            # The message that completed the audio this interim covers.
            k = min(len(sent_at) - 1, max(0, int(np.ceil(result.audio_processed / MESSAGE_S - 1e-6)) - 1))
            lags.append(now - sent_at[k])
    t0 = sent_at[0]
    return {"duration_s": round(len(audio) / rate, 3),
            "first_interim_s": round(first_interim - t0, 4) if first_interim else None,
            "first_nonempty_interim_s": round(first_text - t0, 4) if first_text else None,
            "median_interim_lag_s": round(statistics.median(lags), 4) if lags else None,
            "final_after_last_audio_s": round(last_final - sent_at[-1], 4) if last_final else None}


async def bench(args) -> dict:
    manifest = [json.loads(line) for line in (ROOT / "../shared/speech/an4_test.json").read_text().splitlines()]
    registry, model, note = Path(args.registry), args.model, "trained model"
    async with contextlib.AsyncExitStack() as stack:
        if args.grpc:
            target, server_config = args.grpc, None
        else:
            if not (registry / model.split("@")[0]).is_dir():
                registry = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                model, note = random_an4_architecture(registry), "random weights, AN4 recipe architecture"
            target, server_config = await stack.enter_async_context(local_server(registry, model))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(target))
        stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
        listing = await stub.ListModels(asr_pb2.ListModelsRequest())
        rate = next((m.sample_rate_hertz for m in listing.models if m.is_default), 16_000)
        streams = []
        for row in manifest[: args.streams]:
            audio = decode_audio(ROOT / "../shared/speech" / row["audio_filepath"], rate).samples
            streams.append(await one_stream(stub, audio, rate) | {"file": row["audio_filepath"]})
            print(json.dumps(streams[-1]), flush=True)

    def median(key):
        values = [s[key] for s in streams if s[key] is not None]
        return round(statistics.median(values), 4) if values else None

    return {"benchmark": "stream_first_interim", "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "target": args.grpc or "in-process", "model": model, "model_note": note,
            "server_config": server_config, "message_s": MESSAGE_S, "num_streams": len(streams),
            "median_first_interim_s": median("first_interim_s"),
            "median_first_nonempty_interim_s": median("first_nonempty_interim_s"),
            "median_interim_lag_s": median("median_interim_lag_s"),
            "median_final_after_last_audio_s": median("final_after_last_audio_s"),
            "streams": streams}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(ROOT / "registry"), help="model registry (default: %(default)s)")
    parser.add_argument("--model", default="an4-quartznet", help="NAME[@VERSION] (default: %(default)s)")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="benchmark a running server instead")
    parser.add_argument("--streams", type=int, default=10, help="clips streamed, one after another (default: 10)")
    parser.add_argument("--out", help="output JSON (default: bench/results/stream_<date>.json)")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    out = Path(args.out or ROOT / "bench/results" / f"stream_{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"median first interim {report['median_first_interim_s']} s over {report['num_streams']} streams "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
