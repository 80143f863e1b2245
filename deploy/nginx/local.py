"""Debian's nginx with asr.conf.template in front of asr replicas on this host, without Docker.

    python deploy/nginx/local.py --http 8000 --grpc 50051 \\
        --replica 127.0.0.1:8001,50061 --replica 127.0.0.1:8002,50062 --dir /tmp/asr-lb

renders the template as the nginx image would (only the ``${ASR_*}`` variables; nginx's own ``$vars``
stay), writes a standalone nginx.conf around it in --dir, and runs nginx in the foreground.
tests/deploy/test_fleet_balancer.py and bench/fleet_bench.py start their balancers with ``start``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "asr.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(http_listen: str, grpc_listen: str, replicas: list[tuple[str, int, int]]) -> str:
    """The site for ``replicas`` given as (host, http port, grpc port)."""
    values = {
        "ASR_HTTP_UPSTREAMS": " ".join(f"server {h}:{p} max_fails=1 fail_timeout=2s;" for h, p, _ in replicas),
        "ASR_GRPC_UPSTREAMS": " ".join(f"server {h}:{g} max_fails=1 fail_timeout=2s;" for h, _, g in replicas),
        "ASR_LB_HTTP_PORT": http_listen, "ASR_LB_GRPC_PORT": grpc_listen}
    return re.sub(r"\$\{(ASR_[A-Z_]+)\}", lambda m: values[m.group(1)], TEMPLATE.read_text())


def write_config(folder: Path, site: str) -> Path:
    """A standalone nginx.conf in ``folder`` (pid, logs and temp files there too) that includes ``site``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "asr.conf").write_text(site)
    temp = "\n".join(f"  {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                           "scgi"))
    conf = folder / "nginx.conf"
    conf.write_text(f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log warn;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n{temp}\n  include {folder}/asr.conf;\n}}\n")
    return conf


def start(folder: Path, http_port: int, grpc_port: int, replicas: list[tuple[str, int, int]],
          host: str = "127.0.0.1", timeout_s: float = 30) -> subprocess.Popen:
    """Runs nginx in front of ``replicas``; returns once it accepts connections on ``http_port``."""
    conf = write_config(folder, render(f"{host}:{http_port}", f"{host}:{grpc_port}", replicas))
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.log", "wb"))
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(folder / 'stderr.log').read_text()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex((host, http_port)) == 0:
                return proc
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("nginx did not start listening")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=8000, help="port for REST and the WebSocket")
    parser.add_argument("--grpc", type=int, default=50051, help="port for gRPC")
    parser.add_argument("--replica", action="append", required=True, metavar="HOST:HTTP_PORT,GRPC_PORT")
    parser.add_argument("--dir", type=Path, required=True, help="where nginx keeps its config, pid and logs")
    args = parser.parse_args()
    replicas = []
    for spec in args.replica:
        address, grpc_port = spec.split(",")
        host, http_port = address.rsplit(":", 1)
        replicas.append((host, int(http_port), int(grpc_port)))
    conf = write_config(args.dir, render(f"0.0.0.0:{args.http}", f"0.0.0.0:{args.grpc}", replicas))
    subprocess.run([NGINX, "-p", str(args.dir), "-c", str(conf), "-g", "daemon off;"], check=False)


if __name__ == "__main__":
    main()
