"""deploy/prometheus/prometheus.yml with a real Prometheus (Debian's package): promtool accepts
it, and a Prometheus started from a copy pointed at a real `asr serve` scrapes the service's
metrics; every PromQL expression of the Grafana dashboard runs on it without an error."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.conftest import REPO, free_port, require_tool, wait_until_ready
from tests.deploy.test_dashboard import dashboard_exprs

PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
# Grafana's variables, replaced the way Grafana would for a 5 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "20s", "$__interval": "5s", "$__range": "5m", "$api": ".*",
                "${datasource}": "prometheus"}


def test_promtool_accepts_the_shipped_config():
    promtool = require_tool("promtool", "promtool (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_config_scrapes_every_replica_of_the_compose_service():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    asr = [job for job in config["scrape_configs"] if job["job_name"] == "asr"]
    assert len(asr) == 1
    assert asr[0].get("metrics_path", "/metrics") == "/metrics"
    # The compose service name, resolved to each replica, and ASR_HTTP_PORT.
    assert asr[0]["dns_sd_configs"] == [{"names": ["asr"], "type": "A", "port": 8000, "refresh_interval": "15s"}]


@pytest.fixture(scope="module")
def prometheus(asr_server, tmp_path_factory):
    """Prometheus on a free port scraping the test server every second; yields its base URL."""
    binary = require_tool("prometheus", "Prometheus (Debian package prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    port = free_port()
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        job["scrape_interval"] = "1s"
        if job["job_name"] == "asr":  # DNS discovery in compose; here the one test server
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{asr_server.port}"]}]
        elif job["job_name"] == "prometheus":
            for sc in job["static_configs"]:
                sc["targets"] = [f"127.0.0.1:{port}"]
    config_path = work / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = work / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={config_path}", f"--storage.tsdb.path={work / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url + "/-/ready", log, timeout_s=60, what="prometheus", poll_s=0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query(url: str, expr: str) -> dict:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]


def _wait_for(url: str, expr: str, timeout_s: float = 60) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        result = _query(url, expr)["result"]
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_scrapes_request_counts(prometheus, asr_server, an4_clip):
    with asr_server.client() as c:
        for _ in range(3):
            with open(an4_clip, "rb") as f:
                assert c.post("/transcribe", files={"file": (an4_clip.name, f)}).status_code == 200
        assert c.post("/transcribe", files={"file": ("bad.wav", b"not audio")}).status_code == 400
    up = _wait_for(prometheus, 'up{job="asr"} == 1')
    assert up, "Prometheus never scraped the asr target successfully"
    result = _wait_for(prometheus, 'sum(asr_requests_total{status="200"}) >= 3')
    assert result and float(result[0]["value"][1]) >= 3
    errors = _wait_for(prometheus, 'asr_errors_total{reason="bad_audio"} > 0')
    assert errors, "asr_errors_total{reason=\"bad_audio\"} did not reach Prometheus"
    total = _query(prometheus, "asr_requests_total")["result"]
    assert sum(float(s["value"][1]) for s in total) > 0


def test_every_dashboard_query_runs_on_prometheus(prometheus, asr_server):
    _wait_for(prometheus, "asr_requests_total")
    for title, expr in dashboard_exprs():
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):
            metric, label = expr[len("label_values("):-1].split(",")
            r = httpx.get(f"{prometheus}/api/v1/label/{label.strip()}/values",
                          params={"match[]": metric.strip()}, timeout=10).json()
            assert r["status"] == "success", (title, r)
            continue
        _query(prometheus, expr)  # a syntax error or unknown function fails here
    active = _query(prometheus, 'max by (name, version) (asr_model_info{state="active"})')["result"]
    assert [s["metric"]["name"] for s in active] == [asr_server.model.name]
