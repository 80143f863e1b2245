"""`asr models activate / rollback`, `asr fleet status` and `asr train --activate`: the registry's desired state."""

from __future__ import annotations

import json
import time

import pytest

from model.fleet import write_heartbeat
from model.registry import ModelRef, Registry
from tests.cli.helpers import REPO_ROOT, asr_in_process
from tests.tiny_model import publish_tiny_model


@pytest.fixture()
def registry(tmp_path) -> Registry:
    for seed in (0, 1):
        publish_tiny_model(tmp_path, "tiny", seed=seed)
    return Registry(tmp_path)


def test_activate_records_the_newest_version_by_name_and_rollback_goes_back(registry) -> None:
    assert json.loads(asr_in_process("--registry", registry.root, "models", "activate", "tiny@1").stdout) == {
        "active": "tiny@1", "previous": None}
    assert json.loads(asr_in_process("--registry", registry.root, "models", "activate", "tiny").stdout) == {
        "active": "tiny@2", "previous": 1}
    assert json.loads(asr_in_process("--registry", registry.root, "models", "rollback", "tiny", "--reason",
                                     "WER regression").stdout) == {"active": "tiny@1", "previous": 2}
    last = registry.serving_state("tiny")["history"][-1]
    assert (last["action"], last["reason"]) == ("rollback", "WER regression")
    asr_in_process("--registry", registry.root, "models", "activate", "no-such").assert_one_line_error("no model named")


def test_fleet_status_shows_live_lost_and_refused_replicas(registry) -> None:
    now = time.time()
    write_heartbeat(registry.root, {"replica": "a:8000", "serving": [{"name": "tiny", "version": 2, "state": "active"}],
                                    "refused": [{"model": "tiny@3", "error": "checksum mismatch"}],
                                    "load": {"in_flight": 3}})
    write_heartbeat(registry.root, {"replica": "b:8000", "serving": [], "load": {}})
    beat = registry.root / ".fleet" / "b_8000.json"
    beat.write_text(json.dumps({**json.loads(beat.read_text()), "reported_at": now - 60}))
    status = json.loads(asr_in_process("--registry", registry.root, "fleet", "status", "--json").stdout)
    assert [(r["replica"], r["alive"]) for r in status] == [("a:8000", True), ("b:8000", False)]
    text = asr_in_process("--registry", registry.root, "fleet", "status").stdout
    assert "a:8000" in text and "serving tiny@2" in text and "refused tiny@3: checksum mismatch" in text
    assert "b:8000" in text and "LOST" in text


def test_train_activates_what_it_published_only_when_asked(registry, monkeypatch) -> None:
    import training.trainer

    published = ModelRef("tiny", 2, registry.root / "tiny" / "2")
    monkeypatch.setattr(training.trainer, "run_training", lambda cfg, run_name=None: (published, {"best": 1}))
    recipe = REPO_ROOT / "training" / "recipes" / "an4.yaml"  # validated, then the trainer above "runs" it
    quiet = asr_in_process("--registry", registry.root, "train", recipe)
    assert quiet.returncode == 0, quiet.stderr
    assert registry.serving_state("tiny")["active"] is None
    loud = asr_in_process("--registry", registry.root, "train", recipe, "--activate")
    assert loud.returncode == 0 and json.loads(loud.stdout)["activated"] == "tiny@2"
    assert registry.serving_state("tiny")["history"][-1]["by"].startswith("asr train --activate")


def test_train_canary_needs_a_gate_before_it_trains(registry, monkeypatch) -> None:
    import training.trainer

    monkeypatch.setattr(training.trainer, "run_training", lambda *a, **k: pytest.fail("trained without a gate"))
    recipe = REPO_ROOT / "training" / "recipes" / "an4.yaml"
    asr_in_process("--registry", registry.root, "train", recipe, "--canary", "10").assert_one_line_error(
        "--canary needs --gate")
