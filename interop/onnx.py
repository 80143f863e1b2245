"""ONNX export of a registry model's inference form, in NeMo's CTC export layout (features in, log-probs out).

The graph takes ``audio_signal`` (B, feat_in, T) log-mel features and ``length`` (B,) int64, and
returns ``logprobs`` (B, T', V+1) float32 plus ``encoded_lengths`` (B,): the names NeMo's own
ONNX export uses, so runtimes that load NeMo CTC exports (ONNX Runtime, OpenVINO, TensorRT,
sherpa-onnx) find what they expect. Batch and time axes are dynamic. The front end stays
outside the graph, as in NeMo's export; its settings travel in the file's metadata
(``feature_config``), with the vocabulary, blank index and frame duration.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from model.ensemble import EnsembleRecognizer
from model.errors import ASRError
from model.inference import for_inference
from model.recognizer import SpeechRecognizer

INPUT_NAMES = ["audio_signal", "length"]
OUTPUT_NAMES = ["logprobs", "encoded_lengths"]
OPSET = 17


class OnnxExportError(ASRError, ValueError):
    """A model that cannot be exported to ONNX, or an install without the exporter."""

    code = "onnx_export_refused"


def export_onnx(model: SpeechRecognizer | EnsembleRecognizer, path: Path, *, opset: int = OPSET) -> dict:
    """Writes the fp32 inference form of ``model`` to ``path``; returns the metadata it stored.

    Raises:
        OnnxExportError: an ensemble (its speed views and candidate scoring are not one graph),
            or the ``onnx`` package is missing.
    """
    if isinstance(model, EnsembleRecognizer):
        raise OnnxExportError("ensembles cannot be exported to ONNX (each view is a separate network and "
                              "the winner is chosen by rescoring); export a member instead")
    try:
        import onnx
    except ImportError:
        raise OnnxExportError("ONNX export needs the 'onnx' extra: pip install -e '.[onnx]'") from None
    network = for_inference(model, "fp32").network
    network.traceable = True
    feat_in = model.config.network.feat_in
    example = (torch.randn(2, feat_in, 64), torch.tensor([64, 41]))
    path = Path(path)
    partial = path.with_name(path.name + ".partial")  # a failed export leaves no half-written file behind
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(network, example, str(partial), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_axes={"audio_signal": {0: "batch", 2: "frames"}, "length": {0: "batch"},
                                        "logprobs": {0: "batch", 1: "encoded_frames"},
                                        "encoded_lengths": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    metadata = {
        "vocabulary": json.dumps(list(model.vocabulary.labels)),
        "vocab_size": str(len(model.vocabulary.labels) + 1),
        "blank_id": str(len(model.vocabulary.labels)),
        "sample_rate": str(model.sample_rate),
        "frame_duration_s": str(model.frame_duration_s),
        "subsampling_factor": str(model.config.network.subsampling),
        "normalize_type": model.config.features.normalize,
        "feature_config": json.dumps(model.config.features.to_dict()),
        "network_config": json.dumps(model.config.network.to_dict()),
        "producer": "quartznet-asr",
    }
    try:
        graph = onnx.load(str(partial))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(graph)
        onnx.save(graph, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return metadata
