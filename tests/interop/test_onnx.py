"""ONNX export (interop.onnx): ONNX Runtime reproduces our log-probs on padded batches of any shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interop.onnx import INPUT_NAMES, OUTPUT_NAMES, OnnxExportError, export_onnx
from model.checkpoint import publish_model
from model.ensemble import EnsembleRecognizer
from model.inference import for_inference
from model.registry import Registry
from tests.cli.helpers import asr_in_process
from tests.model.test_inference import SELF_CONDITIONED_CONFIG, _recognizer, assert_fp32_close
from tests.model.test_quartznet import DENSE_CONFIG, SEPARABLE_CONFIG

ort = pytest.importorskip("onnxruntime")


def _features(model, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(i))
    with torch.inference_mode():
        return model.featurizer(audio, torch.tensor(lengths))


@pytest.mark.parametrize("config", [SEPARABLE_CONFIG, DENSE_CONFIG, SELF_CONDITIONED_CONFIG], ids=lambda c: c.name)
def test_onnx_runtime_matches_the_inference_form(config, tmp_path):
    model = _recognizer(config)
    path = tmp_path / "model.onnx"
    metadata = export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == INPUT_NAMES
    assert [o.name for o in session.get_outputs()] == OUTPUT_NAMES
    stored = session.get_modelmeta().custom_metadata_map
    assert stored == metadata and json.loads(stored["vocabulary"]) == list(model.vocabulary.labels)
    fast = for_inference(model, "fp32")
    for lengths in ([16_000, 9_001, 23_456], [4_000], [30_000, 30_000]):  # other batch and time sizes than traced
        features, feature_lengths = _features(model, lengths)
        with torch.inference_mode():
            want, want_lengths = fast.network(features, feature_lengths)
        got, got_lengths = session.run(None, {"audio_signal": features.numpy(), "length": feature_lengths.numpy()})
        assert got_lengths.tolist() == want_lengths.tolist()
        assert_fp32_close([got[i, :n] for i, n in enumerate(got_lengths)],
                          [want[i, :n].numpy() for i, n in enumerate(want_lengths)])


def test_ensembles_are_refused_and_nothing_is_written(tmp_path):
    ensemble = EnsembleRecognizer.of([_recognizer(SEPARABLE_CONFIG, 3), _recognizer(SEPARABLE_CONFIG, 4)])
    with pytest.raises(OnnxExportError, match="ensembles cannot be exported"):
        export_onnx(ensemble, tmp_path / "e.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_a_registry_version(tmp_path):
    registry = Registry(tmp_path / "registry")
    ref = publish_model(registry, "tiny", _recognizer(SEPARABLE_CONFIG), source="trained")
    out = tmp_path / "tiny.onnx"
    result = asr_in_process("--registry", registry.root, "models", "export", str(ref), "--format", "onnx", "--out", out)
    assert (result.returncode, result.stdout.strip()) == (0, f"{ref} -> {out}")
    assert out.is_file() and not (tmp_path / "tiny.onnx.partial").exists()
    publish_model(registry, "pair", EnsembleRecognizer.of([_recognizer(SEPARABLE_CONFIG, 3),
                                                          _recognizer(SEPARABLE_CONFIG, 4)]), source="ensemble")
    result = asr_in_process("--registry", registry.root, "models", "export", "pair", "--format", "onnx",
                            "--out", tmp_path / "pair.onnx")
    assert result.returncode == 2 and "ensembles cannot be exported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
