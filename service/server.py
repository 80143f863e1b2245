"""run_server: REST (uvicorn) and gRPC in one process over one shared Engine, with graceful drain.

    python -m service.server --registry registry --model an4-quartznet --port 8000 --grpc-port 50051

On SIGTERM/SIGINT: /health/ready turns 503 and new requests are refused, in-flight requests
get up to ``drain_timeout_s`` to finish, then both servers stop and models are unloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

import uvicorn

from service.app import create_app
from service.config import ServiceConfig
from service.engine import Engine

log = logging.getLogger(__name__)

# flag -> ServiceConfig field
_FLAGS = {"host": "http_host", "port": "http_port", "grpc_port": "grpc_port", "registry": "registry",
          "model": "default_model", "device": "device", "max_batch_size": "max_batch_size",
          "max_queue_delay_ms": "max_queue_delay_ms", "workers": "num_cpu_workers",
          "precision": "precision"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``serve`` flags; each one left out falls back to ASR_* env vars, then the defaults."""
    parser.add_argument("--host", help="REST bind address (ASR_HTTP_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="REST port (ASR_HTTP_PORT, default 8000)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port, 0 disables (ASR_GRPC_PORT, default 50051)")
    # SUPPRESS: when omitted, keep a top-level `asr --registry DIR serve` value instead of overwriting it.
    parser.add_argument("--registry", default=argparse.SUPPRESS,
                        help="model registry folder (ASR_REGISTRY, default ./registry)")
    parser.add_argument("--model", help="default model NAME[@VERSION] (ASR_DEFAULT_MODEL, default an4-quartznet)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="inference device (ASR_DEVICE)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8", "auto"),
                        help="inference precision (ASR_PRECISION, default auto: bf16 where the hardware has it)")
    parser.add_argument("--max-batch-size", type=int, help="dynamic batch size, 1 = off (ASR_MAX_BATCH_SIZE)")
    parser.add_argument("--max-queue-delay-ms", type=float, help="batch fill wait (ASR_MAX_QUEUE_DELAY_MS)")
    parser.add_argument("--workers", type=int, help="CPU inference threads (ASR_NUM_CPU_WORKERS)")


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """ServiceConfig from the environment, overridden by the flags that were given."""
    overrides = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag, None) is not None}
    return ServiceConfig(**overrides)


def run_server(config: ServiceConfig) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code (0 after a clean drain)."""
    return asyncio.run(serve(config))


async def serve(config: ServiceConfig) -> int:
    engine = Engine(config)
    app = create_app(config, engine)
    tls = ({"ssl_certfile": str(config.tls_cert_file), "ssl_keyfile": str(config.tls_key_file)}
           if config.tls_cert_file is not None else {})
    http = uvicorn.Server(uvicorn.Config(app, host=config.http_host, port=config.http_port, log_level="info",
                                         timeout_graceful_shutdown=max(1, int(config.drain_timeout_s)), **tls))
    # Signals are ours: the drain must start before uvicorn stops accepting connections.
    http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_task = asyncio.create_task(http.serve(), name="uvicorn")
    grpc_server = None
    exit_code = 0
    try:
        await engine.load_initial_models()
        grpc_server = await _start_grpc(engine, config)
        log.info("ready: REST on %s:%d, gRPC %s", config.http_host, config.http_port,
                 f"on port {config.grpc_port}" if grpc_server else "disabled")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, http_task}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if http_task.done() and not stop.is_set():
            log.error("the HTTP server exited unexpectedly")
            exit_code = 1
    except Exception:  # noqa: BLE001 - a broken default model must end the process with a clear log
        log.exception("start-up failed")
        exit_code = 1

    log.info("draining: up to %.1f s for %d in-flight requests", config.drain_timeout_s, engine.in_flight)
    engine.begin_drain()
    grpc_stop = asyncio.create_task(grpc_server.stop(config.drain_timeout_s)) if grpc_server else None
    await engine.wait_idle(config.drain_timeout_s)
    http.should_exit = True
    await asyncio.gather(http_task, return_exceptions=True)
    if grpc_stop:
        await asyncio.gather(grpc_stop, return_exceptions=True)
    await engine.drain_and_stop(0)
    log.info("stopped")
    return exit_code


async def _start_grpc(engine: Engine, config: ServiceConfig):
    if config.grpc_port <= 0:
        return None
    try:
        from service.grpc_server import start_grpc
    except ImportError as e:
        log.warning("gRPC disabled: service.grpc_server cannot be imported (%s); serving REST only", e)
        return None
    return await start_grpc(engine, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.server", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_server(config_from_args(args))


if __name__ == "__main__":
    raise SystemExit(main())
