"""Pulls through the server: `POST /admin/models/pull` as a job, and `ASR_DEFAULT_MODEL=hf:...` on first start."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.interop.hub_standin import HubFile, Standin
from tests.interop.test_nemo_parity import FIXTURES, MANIFEST
from tests.service.conftest import make_config, running_app

pytestmark = pytest.mark.anyio
TOKEN = "pull-token"
QUARTZNET = (FIXTURES / "quartznet_small.nemo").read_bytes()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    standin = Standin()
    standin.hf["test/quartznet"] = {"quartznet_small.nemo": HubFile(QUARTZNET)}
    standin.start()
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "asr-cache"))
    yield standin
    standin.stop()


async def _finished(client, job: dict) -> dict:
    for _ in range(1500):  # 30 s on a busy machine; a loopback pull of 200 kB takes well under 1 s idle
        if job["state"] != "running":
            return job
        await asyncio.sleep(0.02)
        job = (await client.get(f"/admin/models/pull/{job['id']}", headers=AUTH)).json()
    raise AssertionError(f"the pull job never finished: {job}")


async def test_admin_pull_is_a_job_that_publishes_or_says_why(hub, registry_root, tmp_path, speech_root) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    for entry in registry_root.iterdir():  # the tiny model the app serves meanwhile
        (registry / entry.name).symlink_to(entry)
    async with running_app(make_config(registry, admin_token=TOKEN)) as (client, engine):
        assert (await client.post("/admin/models/pull", json={"source": "hf:test/quartznet"})).status_code == 401
        bad = await client.post("/admin/models/pull", json={"source": "s3://b/m.nemo"}, headers=AUTH)
        assert bad.status_code == 400 and "invalid source" in bad.json()["error"]["message"]

        started = await client.post("/admin/models/pull", json={"source": "hf:test/quartznet", "activate": True},
                                    headers=AUTH)
        assert started.status_code == 202 and started.headers["location"].endswith(started.json()["id"])
        job = await _finished(client, started.json())
        assert job["state"] == "done" and job["published"] == "quartznet@1", job
        assert job["bytes_done"] == job["bytes_total"] == len(QUARTZNET)
        assert engine.registry.serving_state("quartznet")["active"] == 1

        missing = await client.post("/admin/models/pull", json={"source": "hf:test/missing"}, headers=AUTH)
        job = await _finished(client, missing.json())
        assert job["state"] == "failed" and job["error"]["status"] == 404
        assert "no such model repository" in job["error"]["message"] and str(tmp_path) not in json.dumps(job)
        assert not (registry / "missing").exists()

        answer = await client.post("/v1/audio/transcriptions", data={"model": "quartznet@1"},
                                   files={"file": ("a.flac", (speech_root / MANIFEST["fixtures"][0]["clip"]).read_bytes())})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == MANIFEST["fixtures"][0]["transcribe_text"]
        assert (await client.get("/admin/models/pull/nope", headers=AUTH)).status_code == 404


async def test_a_hub_default_model_is_pulled_on_the_first_start_only(hub, tmp_path) -> None:
    registry = tmp_path / "registry"
    config = make_config(registry, default_model="hf:test/quartznet")
    async with running_app(config) as (client, engine):
        assert engine.config.default_model == "quartznet"
        models = (await client.get("/v1/models")).json()["data"]
        assert any(m["id"].startswith("quartznet") for m in models)
    fetched = [r for r in hub.requests if "/resolve/" in r[1] and r[0] == "GET"]
    assert len(fetched) == 1
    hub.stop()  # offline from here: the second start serves what the first pulled
    async with running_app(make_config(registry, default_model="hf:test/quartznet")) as (client, engine):
        assert engine.config.default_model == "quartznet"
        assert sorted(engine.registry.versions("quartznet")) == [1]


async def test_a_default_model_that_cannot_be_pulled_is_a_startup_error(hub, tmp_path) -> None:
    from service.app import create_app

    app = create_app(make_config(tmp_path / "registry", default_model="hf:test/missing"))
    async with app.router.lifespan_context(app):
        engine = app.state.engine
        for _ in range(1500):
            if engine.startup_error:
                break
            await asyncio.sleep(0.02)
        assert "could not be pulled" in engine.startup_error and "no such model repository" in engine.startup_error
