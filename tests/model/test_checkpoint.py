"""Tests for model.checkpoint: the artifact files, their registry round trip, and tamper detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import (ARTIFACT_FORMAT, CONFIG_FILE, WEIGHTS_FILE, ArtifactError, artifact_files,
                              load_artifact, load_model, publish_model)
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import IntegrityError, NotFoundError, Registry
from model.vocabulary import Vocabulary

TINY = RecognizerConfig(
    MelFeaturizerConfig(frontend="nemo24", pad_to=16),
    QuartzNetConfig((BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 2, 7, residual=True),
                     BlockConfig(64, 1, 1, separable=False)), num_labels=28, name="tiny"),
    Vocabulary(),
)


@pytest.fixture
def model() -> SpeechRecognizer:
    torch.manual_seed(0)
    model = SpeechRecognizer(TINY)
    with torch.no_grad():  # non-default BatchNorm statistics must survive the round trip too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _write(files: dict[str, bytes], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _audio() -> torch.Tensor:
    return 0.1 * torch.randn(2, 12_000, generator=torch.Generator().manual_seed(1))


def test_artifact_files_layout(model):
    files = artifact_files(model, extra_config={"default_lm": "an4-lm@1"})
    assert set(files) == {CONFIG_FILE, WEIGHTS_FILE}
    config = json.loads(files[CONFIG_FILE])
    assert config["format"] == ARTIFACT_FORMAT
    assert config["sample_rate"] == 16_000
    assert config["vocabulary"] == list(Vocabulary().labels)
    assert config["features"]["frontend"] == "nemo24"
    assert config["network"]["name"] == "tiny"
    assert config["default_lm"] == "an4-lm@1"
    assert RecognizerConfig.from_dict(config) == TINY


def test_fp32_round_trip_is_exact(model, tmp_path):
    loaded = load_artifact(_write(artifact_files(model), tmp_path / "a"))
    assert loaded.config == model.config
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert restored[key].dtype == original[key].dtype, key
        assert torch.equal(restored[key], original[key]), key
    lengths = torch.tensor([12_000, 9_000])
    with torch.no_grad():
        assert torch.equal(loaded(_audio(), lengths)[0], model(_audio(), lengths)[0])


def test_fp16_storage_is_close_and_loads_as_fp32(model, tmp_path):
    files16 = artifact_files(model, dtype=torch.float16)
    assert len(files16[WEIGHTS_FILE]) < 0.6 * len(artifact_files(model)[WEIGHTS_FILE])
    loaded = load_artifact(_write(files16, tmp_path / "a16"))
    for key, value in model.state_dict().items():
        restored = loaded.state_dict()[key]
        if value.is_floating_point():
            assert restored.dtype == torch.float32, key
            torch.testing.assert_close(restored, value, atol=1e-3, rtol=1e-3)
        else:
            assert torch.equal(restored, value), key  # num_batches_tracked stays int64
    lengths = torch.tensor([12_000, 9_000])
    with torch.no_grad():
        torch.testing.assert_close(loaded(_audio(), lengths)[0], model(_audio(), lengths)[0], atol=5e-2, rtol=0)


def test_publish_and_load_through_a_registry(model, tmp_path):
    registry = Registry(tmp_path / "registry")
    ref = publish_model(registry, "tiny", model, source="trained", metrics={"val_wer": 0.5})
    assert str(ref) == "tiny@1"
    second = publish_model(registry, "tiny", model, source="trained", parent_version=1)
    assert second.version == 2
    loaded, loaded_ref, metadata = load_model(registry, "tiny@1")
    assert loaded_ref == ref
    assert metadata["metrics"] == {"val_wer": 0.5} and metadata["kind"] == "model"
    assert load_model(registry, "tiny")[1].version == 2  # no version: latest
    assert load_model(registry, "tiny@latest")[1].version == 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(NotFoundError):
        load_model(registry, "tiny@3")


@pytest.mark.parametrize("tamper", ["flip_byte", "truncate", "append"])
def test_tampered_weights_are_refused(model, tmp_path, tamper):
    registry = Registry(tmp_path / "registry")
    ref = publish_model(registry, "tiny", model, source="trained")
    weights = ref.path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    if tamper == "flip_byte":
        data[len(data) // 2] ^= 0xFF
    elif tamper == "truncate":
        del data[-100:]
    else:
        data += b"\0"
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=WEIGHTS_FILE):
        load_model(registry, "tiny")


def test_tampered_config_is_refused(model, tmp_path):
    registry = Registry(tmp_path / "registry")
    ref = publish_model(registry, "tiny", model, source="trained")
    config = ref.path / CONFIG_FILE
    config.chmod(0o644)
    config.write_text(config.read_text().replace('"nemo24"', '"nemo25"'))
    with pytest.raises(IntegrityError, match=CONFIG_FILE):
        load_model(registry, "tiny")


def test_broken_artifact_folders_raise_artifact_error(model, tmp_path):
    files = artifact_files(model)
    wrong_format = dict(files, **{CONFIG_FILE: json.dumps({"format": "other/9"}).encode()})
    with pytest.raises(ArtifactError, match="format"):
        load_artifact(_write(wrong_format, tmp_path / "fmt"))
    missing_weights = {CONFIG_FILE: files[CONFIG_FILE]}
    with pytest.raises(ArtifactError):
        load_artifact(_write(missing_weights, tmp_path / "noweights"))
    other = SpeechRecognizer(RecognizerConfig(TINY.features, QuartzNetConfig(
        (BlockConfig(16, 1, 5),), num_labels=28), TINY.vocabulary))
    mismatched = {CONFIG_FILE: files[CONFIG_FILE], WEIGHTS_FILE: artifact_files(other)[WEIGHTS_FILE]}
    with pytest.raises(ArtifactError, match="cannot load"):
        load_artifact(_write(mismatched, tmp_path / "mismatch"))
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "does-not-exist")


def test_lm_versions_are_not_loaded_as_models(tmp_path, model):
    registry = Registry(tmp_path / "registry")
    registry.publish("an4-lm", artifact_files(model), kind="lm", source="trained")
    with pytest.raises(ArtifactError, match="not an acoustic model"):
        load_model(registry, "an4-lm")


def test_transcribe_after_round_trip_gives_the_same_text(model, tmp_path):
    loaded = load_artifact(_write(artifact_files(model), tmp_path / "a"))
    clip = (0.1 * np.random.default_rng(2).standard_normal(16_000)).astype(np.float32)
    assert loaded.transcribe([clip]) == model.transcribe([clip])
