"""Admin auth, hot swap under load with zero failures, rollback, and a failed activation."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from model import Registry, publish_model
from tests.service.conftest import make_config, running_app, tiny_model

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token"


async def _until(condition, timeout_s: float = 10.0) -> None:
    """Polls ``condition`` every 10 ms until it holds; fails with the deadline instead of hanging."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition did not hold within the deadline"
        await asyncio.sleep(0.01)


async def test_admin_requires_token(registry_root) -> None:
    async with running_app(make_config(registry_root)) as (client, _):
        disabled = await client.get("/admin/models")
        assert disabled.status_code == 403 and "ASR_ADMIN_TOKEN" in disabled.json()["error"]["message"]
    async with running_app(make_config(registry_root, admin_token=TOKEN)) as (client, _):
        assert (await client.get("/admin/models")).status_code == 401
        wrong = await client.get("/admin/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = await client.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        states = {(m["name"], m["version"]): m["state"] for m in ok.json()["models"]}
        assert states[("tiny", 1)] == "active" and states[("tiny", 2)] == "available"


async def test_hot_swap_under_load_has_no_failures(registry_root, an4_paths) -> None:
    data = an4_paths[1].read_bytes()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_app(make_config(registry_root, admin_token=TOKEN, max_queue_delay_ms=5)) as (client, engine):
        stop = asyncio.Event()
        seen: list[tuple[int, int]] = []

        async def user() -> None:
            while not stop.is_set():
                r = await client.post("/transcribe", files={"file": ("a.flac", data)})
                seen.append((r.status_code, r.json()["model"]["version"] if r.status_code == 200 else -1))

        users = [asyncio.create_task(user()) for _ in range(32)]
        await _until(lambda: sum(v == 1 for _, v in seen) >= 8, timeout_s=60)  # v1 serves first
        swap = await client.post("/admin/models/activate", json={"name": "tiny", "version": 2}, headers=auth)
        assert swap.status_code == 200, swap.text
        assert swap.json() == {"active": {"name": "tiny", "version": 2}, "previous": {"name": "tiny", "version": 1}}
        await _until(lambda: sum(v == 2 for _, v in seen) >= 8, timeout_s=60)  # and then v2
        stop.set()
        await asyncio.gather(*users)
        assert seen and all(code == 200 for code, _ in seen), {code for code, _ in seen}
        assert {v for _, v in seen} == {1, 2}
        after = await client.post("/transcribe", files={"file": ("a.flac", data)})
        assert after.json()["model"]["version"] == 2
        # v1's last lease ended with the last request above; its unload runs as a task: wait for it,
        # with a deadline, rather than for a fixed time.
        await _until(lambda: [(m["version"], m["state"]) for m in engine.list_models()] == [(2, "active")])
        back = await client.post("/admin/models/rollback", headers=auth)
        assert back.status_code == 200 and back.json()["active"]["version"] == 1
        assert (await client.post("/transcribe", files={"file": ("a.flac", data)})).json()["model"]["version"] == 1
        assert (await client.post("/admin/models/rollback", headers=auth)).status_code == 409


async def test_failed_activation_keeps_the_old_model(tmp_path, an4_paths) -> None:
    registry = Registry(tmp_path)
    publish_model(registry, "tiny", tiny_model(0), source="trained")
    broken = publish_model(registry, "tiny", tiny_model(1), source="trained")
    weights = broken.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # corrupted after publishing
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_app(make_config(tmp_path, admin_token=TOKEN)) as (client, _):
        r = await client.post("/admin/models/activate", json={"name": "tiny", "version": 2}, headers=auth)
        assert r.status_code == 409
        message = r.json()["error"]["message"]
        assert "tiny@2" in message and "checksum" in message and "still serving tiny@1" in message
        missing = await client.post("/admin/models/activate", json={"name": "tiny", "version": 7}, headers=auth)
        assert missing.status_code == 404
        ok = await client.post("/transcribe", files={"file": ("a.flac", an4_paths[0].read_bytes())})
        assert ok.status_code == 200 and ok.json()["model"]["version"] == 1
    shutil.rmtree(tmp_path, ignore_errors=True)
