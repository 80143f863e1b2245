"""TrainConfig loading: valid YAML, dotted overrides, and errors that name the field."""

from pathlib import Path

import pytest

from training.augment import AugmentConfig
from training.config import ConfigError, load_config

VALID = """
model:
  preset: quartznet_5x5
data:
  train_manifests:
    - {path: /data/librispeech.json}
    - {path: /data/cv.json, weight: 0.5}
  val_manifests: [{path: /data/dev.json}]
  batch_size: 16
augment:
  speed_prob: 0.5
optim:
  lr: 0.015
  warmup_steps: 8000
scaling:
  num_workers: 2
amp: bf16
run:
  publish_name: qn-5x5.en
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(VALID)
    return path


def _error(config_file, overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, overrides)
    return str(info.value)


def test_valid_yaml_loads(config_file, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    cfg = load_config(config_file, [])
    assert cfg.model.preset == "quartznet_5x5" and cfg.model.labels[0] == " " and len(cfg.model.labels) == 28
    assert cfg.data.train_manifests[1].weight == 0.5 and cfg.data.batch_size == 16
    assert cfg.optim.name == "novograd" and cfg.optim.betas == (0.8, 0.5)
    assert cfg.scaling.ray_address == "ray://head:10001"
    assert cfg.augment == AugmentConfig(speed_prob=0.5)


def test_overrides_parse_yaml_values(config_file):
    cfg = load_config(config_file, ["optim.lr=0.05", "data.train_manifests.0.weight=2",
                                    "augment.speed_rates=[0.95, 1.05]", "optim.decoder_lr=1e-3",
                                    "scaling.use_gpu=true", "amp=fp16"])
    assert cfg.optim.lr == 0.05 and cfg.data.train_manifests[0].weight == 2.0
    assert cfg.augment.speed_rates == (0.95, 1.05) and cfg.optim.decoder_lr == 1e-3 and cfg.amp == "fp16"


def test_explicit_blocks_replace_preset(config_file):
    cfg = load_config(config_file, ["model.preset=null",
                                    "model.blocks=[{filters: 256, repeat: 1, kernel: 33, stride: 2}]"])
    assert cfg.model.blocks[0].stride == 2 and cfg.model.blocks[0].separable


@pytest.mark.parametrize("overrides, expected", [
    (["optim.lr=0"], "optim.lr: Input should be greater than 0"),
    (["optim.lrr=0.1"], "optim.lrr: Extra inputs are not permitted"),
    (["data.batch_size=many"], "data.batch_size: Input should be a valid integer"),
    (["model.preset=quartznet_99x9"], "model.preset: unknown preset"),
    (["model.blocks=[{filters: 8, repeat: 1, kernel: 3}]"], "model: set exactly one of model.preset"),
    (["data.train_manifests=null"], "data.train_manifests: Input should be a valid list"),
    (["optim.betas=[0.9, 1.0]"], "optim.betas.1: Input should be less than 1"),
    (["amp=fp16"], "amp: fp16 needs scaling.use_gpu"),
    (["run.publish_name=../evil"], "run.publish_name:"),
    (["augment.time_width=2.5"], "augment: time_width as a fraction must lie in (0, 1]"),
    (["model.labels=[a, bc]"], "model.labels: labels must be single characters"),
    (["model.labels=['\u2581a', 'b c']"], "model.labels: word-piece labels must be"),
])
def test_errors_name_the_field(config_file, overrides, expected):
    assert expected in _error(config_file, overrides)


def test_word_piece_labels_are_accepted(config_file):
    cfg = load_config(config_file, ["model.labels=['\u2581yes', '\u2581a', b]"])
    assert cfg.model.labels == ("\u2581yes", "\u2581a", "b")


def test_missing_manifests_and_sections(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("model: {preset: quartznet_15x5}\ndata: {batch_size: 4}\n")
    assert "data.train_manifests: Field required" in _error(path, [])
    path.write_text("model: {preset: quartznet_15x5}\n")
    assert "data: Field required" in _error(path, [])


def test_bad_files_and_overrides(tmp_path, config_file):
    assert "cannot read" in _error(tmp_path / "nope.yaml", [])
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert "invalid YAML" in _error(tmp_path / "bad.yaml", [])
    assert "expected dotted.key=value" in _error(config_file, ["optim.lr"])
    assert "no list item" in _error(config_file, ["data.train_manifests.9.path=x"])


RECIPES = Path(__file__).parents[2] / "training" / "recipes"


def test_shipped_recipe_loads():
    cfg = load_config(RECIPES / "an4.yaml")
    assert cfg.model.blocks and cfg.augment.time_width == 0.05


def test_recipe_trains_its_last_epochs_with_fixed_batch_norm_and_short_kernels():
    cfg = load_config(RECIPES / "an4.yaml")
    # Inference normalises with one set of statistics; the last epochs train that way too.
    assert cfg.run.freeze_bn_last_epochs and cfg.run.freeze_bn_last_epochs < cfg.optim.epochs
    assert cfg.run.early_stop_patience_epochs is None  # an early stop would skip the fixed-BN epochs
    # 3-frame kernels after the 8x reduction: whole-utterance receptive fields memorised speakers.
    residual = [b for b in cfg.model.blocks if b.residual]
    assert residual and all(b.kernel == 3 for b in residual)
    assert cfg.data.holdout_speakers


def test_recipe_trains_with_intermediate_ctc_on_inner_blocks():
    cfg = load_config(RECIPES / "an4.yaml")
    assert 0 < cfg.loss.inter_ctc_weight < 1
    last = len(cfg.model.blocks) - 1
    assert cfg.loss.inter_ctc_blocks and all(cfg.model.blocks[b].residual and b < last
                                             for b in cfg.loss.inter_ctc_blocks)
