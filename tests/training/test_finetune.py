"""Acceptance: fine-tuning from a registry version or a .nemo file, with a vocabulary change
(encoder kept, CTC head re-initialised), a frozen encoder and the parent version recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import artifact_files, load_model, publish_model
from model.recognizer import SpeechRecognizer
from model.registry import Registry
from tests.training.conftest import TINY_BLOCKS, write_config, write_manifest
from model.vocabulary import ENGLISH_LABELS as DEFAULT_LABELS
from training.config import config_from_dict, load_config
from training.init_model import build_recognizer, fresh_recognizer_config
from training.trainer import _resolve_init, run_training

NEMO_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "quartznet_small.nemo"
# A different vocabulary: letters and digits, no apostrophe (37 labels instead of 28).
NEW_LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", *"0123456789"]


def _cfg(labels, **run):
    return config_from_dict({"model": {"blocks": TINY_BLOCKS, "labels": list(labels)},
                             "data": {"train_manifests": [{"path": "unused.json"}]}, "run": run})


def _source_model() -> SpeechRecognizer:
    """A tiny English model with non-default weights and BatchNorm statistics."""
    torch.manual_seed(3)
    model = SpeechRecognizer(fresh_recognizer_config(_cfg(DEFAULT_LABELS)))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name.startswith("network."):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return model.eval()


def _encoder_state(model: SpeechRecognizer) -> dict[str, torch.Tensor]:
    """Everything but the CTC head: featurizer buffers, block weights and BatchNorm statistics."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("network.decoder.")}


def _assert_same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key].float(), right[key].float()), key


def _artifact_dir(model: SpeechRecognizer, folder: Path) -> str:
    folder.mkdir(parents=True)
    for name, data in artifact_files(model).items():
        (folder / name).write_bytes(data)
    return str(folder)


def test_new_vocabulary_keeps_the_encoder_and_reinitialises_the_head(tmp_path: Path) -> None:
    source = _source_model()
    init_dir = _artifact_dir(source, tmp_path / "src")
    model, info = build_recognizer(_cfg(NEW_LABELS, fine_tune_from="src@1", freeze_encoder=True), init_dir)

    assert info == {"init": "fine_tune", "source": "src@1", "vocabulary_changed": True}
    assert model.training
    assert model.vocabulary.labels == tuple(NEW_LABELS)
    assert model.network.decoder.weight.shape[0] == len(NEW_LABELS) + 1  # + the CTC blank
    assert model.network.decoder.bias.shape == (len(NEW_LABELS) + 1,)
    _assert_same(_encoder_state(model), _encoder_state(source))
    assert torch.isfinite(model.network.decoder.weight).all()
    # The old head (all values in [0.5, 1.5)) is not carried over into the new one.
    assert (model.network.decoder.weight < 0.5).any()
    # freeze_encoder: only the new head trains.
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"network.decoder.weight", "network.decoder.bias"}


def test_same_vocabulary_keeps_everything(tmp_path: Path) -> None:
    source = _source_model()
    model, info = build_recognizer(_cfg(DEFAULT_LABELS, fine_tune_from="src"), _artifact_dir(source, tmp_path / "s"))
    assert info["vocabulary_changed"] is False
    _assert_same(model.state_dict(), source.state_dict())
    assert all(p.requires_grad for p in model.parameters())


def test_registry_source_resolves_to_an_absolute_folder(tmp_path: Path, monkeypatch) -> None:
    # Ray workers run in another working directory, so a relative registry path must not leak to them.
    monkeypatch.chdir(tmp_path)
    source = _source_model()
    publish_model(Registry("registry"), "src", source, source="trained")
    init_dir, parent_version = _resolve_init(_cfg(DEFAULT_LABELS, fine_tune_from="src"), Registry("registry"),
                                             tmp_path / "scratch")
    assert parent_version == 1
    assert init_dir is not None and Path(init_dir).is_absolute()
    assert Path(init_dir) == (tmp_path / "registry" / "src" / "1").resolve()


def test_nemo_file_resolves_and_builds(tmp_path: Path) -> None:
    if not NEMO_FILE.is_file():
        pytest.skip(f"{NEMO_FILE} missing")
    from interop.nemo import import_nemo

    cfg = _cfg(NEW_LABELS, fine_tune_from=str(NEMO_FILE))
    init_dir, parent_version = _resolve_init(cfg, Registry(tmp_path / "registry"), tmp_path / "scratch")
    assert parent_version is None and init_dir is not None and (Path(init_dir) / "config.json").is_file()
    model, info = build_recognizer(cfg, init_dir)
    assert info["vocabulary_changed"] is True
    assert model.vocabulary.labels == tuple(NEW_LABELS)
    imported, _ = import_nemo(NEMO_FILE)
    _assert_same(_encoder_state(model), _encoder_state(imported))
    # The fine-tuned model runs on audio.
    log_probs, lengths = model.eval()(torch.zeros(1, 16000), torch.tensor([16000]))
    assert log_probs.shape[-1] == len(NEW_LABELS) + 1 and int(lengths[0]) > 0


def test_fine_tune_run_with_frozen_encoder_and_new_vocabulary(ray_cluster, an4_pick, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    source = _source_model()
    parent = publish_model(registry, "src", source, source="trained")
    assert parent.version == 1

    rows = an4_pick(6)
    train = write_manifest(tmp_path / "train.json", rows)
    val = write_manifest(tmp_path / "val.json", rows[:2])
    config = write_config(tmp_path, train, val, model={"blocks": TINY_BLOCKS, "labels": NEW_LABELS},
                          run={"output_dir": str(tmp_path / "out"), "registry": str(tmp_path / "registry"),
                               "publish_name": "tiny-ft", "fine_tune_from": "src@1", "freeze_encoder": True,
                               "log_every_steps": 1})
    ref, summary = run_training(load_config(config), run_name="ft")
    assert ref is not None and str(ref) == "tiny-ft@1", summary

    tuned, _, meta = load_model(registry, "tiny-ft")
    assert meta["parent_version"] == 1
    assert meta["extra"]["train_config"]["run"]["fine_tune_from"] == "src@1"
    assert meta["extra"]["global_steps"] >= 1
    assert tuned.vocabulary.labels == tuple(NEW_LABELS)
    assert tuned.network.decoder.weight.shape[0] == len(NEW_LABELS) + 1
    # Frozen: weights and BatchNorm statistics of the encoder are exactly the source's after training.
    _assert_same(_encoder_state(tuned), _encoder_state(source))


def test_an_ensemble_is_refused_as_a_fine_tuning_source(tmp_path: Path) -> None:
    from model.ensemble import EnsembleRecognizer
    from training.trainer import TrainingError, check_heads_fit_source

    init_dir = _artifact_dir(EnsembleRecognizer.of([_source_model(), _source_model()]), tmp_path / "duo")
    cfg = _cfg(DEFAULT_LABELS, fine_tune_from="duo@1")
    with pytest.raises(TrainingError, match="run.fine_tune_from: duo@1 is an ensemble"):
        check_heads_fit_source(cfg, init_dir)
    with pytest.raises(ValueError, match="is an ensemble"):
        build_recognizer(cfg, init_dir)
