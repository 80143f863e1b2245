"""What a stopping grpcio server answers the calls it had accepted but not started, and what our client's retry
policy makes of it.

Two grpc.aio servers (only grpc.health.v1, so the calls are as short as calls get) behind Debian's nginx
(deploy/nginx/asr.conf.template through deploy/nginx/local.py); ``--clients`` clients call Health.Check back to
back through the balancer; after a second one server is stopped with a 5 s grace, as SIGTERM does to a replica.
Each trial runs twice, once with plain channels and once with ``client.grpc_client.CHANNEL_OPTIONS`` (retry on
UNAVAILABLE and CANCELLED); every outcome is counted. The same with no balancer (``direct``): the stopped server is
the only one, so after it stops every call fails to connect; what counts there is the CANCELLED.

    python bench/grpc_stop_race.py --out bench/results/grpc_stop_race_<date>.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import REPO, free_port, machine  # noqa: E402

sys.path.insert(0, str(REPO / "deploy" / "nginx"))
import local as nginx_local  # noqa: E402

sys.path.insert(0, str(REPO))
from client.grpc_client import CHANNEL_OPTIONS  # noqa: E402


async def _server() -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def trial(clients: int, retry: bool, balanced: bool, scratch: Path) -> dict[str, int]:
    servers = [await _server() for _ in range(2 if balanced else 1)]
    balancer = None
    if balanced:
        grpc_port = free_port()
        balancer = nginx_local.start(scratch, free_port(), grpc_port, [("127.0.0.1", free_port(), p) for _, p in servers])
        target = f"127.0.0.1:{grpc_port}"
    else:
        target = f"127.0.0.1:{servers[0][1]}"
    outcomes: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()

    async def client() -> None:
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS if retry else ()) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    outcomes[e.code().name] += 1
                    await asyncio.sleep(0.01)

    running = [asyncio.ensure_future(client()) for _ in range(clients)]
    await asyncio.sleep(1)
    await servers[-1][0].stop(5)
    await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*running)
    for server, _ in servers[:-1]:
        await server.stop(1)
    if balancer is not None:
        balancer.send_signal(signal.SIGQUIT)
        balancer.wait(30)
    return dict(outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(args.trials):
            for balanced in (False, True):
                for retry in (False, True):
                    outcomes = asyncio.run(trial(args.clients, retry, balanced, Path(tmp) / f"nginx-{t}"))
                    runs.append({"trial": t, "through": "nginx" if balanced else "direct", "retry_policy": retry,
                                 "outcomes": outcomes})
                    print(json.dumps(runs[-1]), flush=True)
    result = {"bench": "grpc_stop_race", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "clients": args.clients, "grpcio": grpc.__version__, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
