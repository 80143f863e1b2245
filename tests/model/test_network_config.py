"""Tests for model.network_config: block tables round-trip through dicts and JSON, and bad ones are refused."""

from __future__ import annotations

import json

import pytest

from model.network_config import BlockConfig, QuartzNetConfig
from model.presets import citrinet_256, jasper_10x5dr, quartznet_15x5
from tests.model.test_quartznet import DENSE_CONFIG, SC_BLOCKS, SE_CONFIG, SEPARABLE_CONFIG


@pytest.mark.parametrize("config", [SEPARABLE_CONFIG, DENSE_CONFIG, SE_CONFIG, quartznet_15x5(), jasper_10x5dr(),
                                    citrinet_256()], ids=lambda c: c.name)
def test_config_round_trips_through_dict_and_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    restored = QuartzNetConfig.from_dict(data)
    assert restored == config
    assert restored.name == config.name  # name is compare=False, so check it separately
    assert restored.blocks == config.blocks and isinstance(restored.blocks, tuple)


def test_blocks_given_as_a_list_become_a_tuple():
    config = QuartzNetConfig([BlockConfig(16, 1, 3)], num_labels=5)
    assert isinstance(config.blocks, tuple)
    hash(config)  # frozen config must stay hashable


@pytest.mark.parametrize("kwargs", [
    dict(filters=0),
    dict(filters=-8),
    dict(filters=32, repeat=0),
    dict(filters=32, kernel=0),
    dict(filters=32, stride=0),
    dict(filters=32, dilation=0),
    dict(filters=32, kernel=11, stride=2, dilation=2),
    dict(filters=32, dropout=1.0),
    dict(filters=32, dropout=-0.1),
    dict(filters=32, residual_dense=True, residual=False),
    dict(filters=32, se=True, se_reduction_ratio=0),
    dict(filters=32, se=True, se_reduction_ratio=33),
    dict(filters=32, se=True, se_context_size=0),
    dict(filters=32, residual=True, residual_dense=True, stride=2),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_invalid_block_configs_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        BlockConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(blocks=()), dict(num_labels=0), dict(feat_in=0)],
                         ids=["no-blocks", "no-labels", "no-features"])
def test_invalid_network_configs_raise_value_error(kwargs):
    args = dict(blocks=(BlockConfig(32, 1, 11),), num_labels=28, feat_in=64) | kwargs
    with pytest.raises(ValueError):
        QuartzNetConfig(**args)


def test_self_conditioning_round_trips_and_is_validated():
    config = QuartzNetConfig(SC_BLOCKS, num_labels=5, feat_in=8, self_conditioning=(1, 2))
    assert QuartzNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "self_conditioning" not in QuartzNetConfig(SC_BLOCKS, num_labels=5).to_dict()
    with pytest.raises(ValueError, match="distinct"):
        QuartzNetConfig(SC_BLOCKS, num_labels=5, self_conditioning=(1, 1))
    for bad in ((3,), (-1,)):  # block 3 is the last: its output goes to the model's own head
        with pytest.raises(ValueError, match="self_conditioning"):
            QuartzNetConfig(SC_BLOCKS, num_labels=5, self_conditioning=bad)


def test_citrinet_fields_are_left_out_of_configs_that_do_not_use_them():
    assert set(SEPARABLE_CONFIG.blocks[0].to_dict()) == {"filters", "repeat", "kernel", "stride", "dilation",
                                                         "dropout", "residual", "separable", "residual_dense"}
    assert SE_CONFIG.blocks[3].to_dict()["se_reduction_ratio"] == 4
