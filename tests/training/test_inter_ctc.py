"""Intermediate CTC: its config, the mixed loss, and that its head stays out of the published model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model.recognizer import SpeechRecognizer
from tests.training.conftest import TINY_BLOCKS, write_config, write_manifest
from training.config import ConfigError, config_from_dict, load_config
from training.init_model import fresh_recognizer_config
from training.loop import train_loop_per_worker
from training.losses import ctc_loss, mixed_ctc_loss
from training.run import WorkerConfig
from training.train_step import TrainStep, inter_ctc_blocks


def _cfg(**loss):
    return config_from_dict({"model": {"blocks": TINY_BLOCKS}, "data": {"train_manifests": [{"path": "t.json"}]},
                             "loss": loss})


def test_off_by_default_and_the_middle_block_when_no_index_is_given():
    assert inter_ctc_blocks(_cfg(), fresh_recognizer_config(_cfg()).network) == ()
    cfg = _cfg(inter_ctc_weight=0.3)
    assert inter_ctc_blocks(cfg, fresh_recognizer_config(cfg).network) == (1,)  # 3 blocks // 2
    cfg = _cfg(inter_ctc_weight=0.3, inter_ctc_blocks=[1, 0])
    assert inter_ctc_blocks(cfg, fresh_recognizer_config(cfg).network) == (0, 1)


def test_mixed_loss_weights_the_mean_of_the_intermediate_heads():
    final, inner1, inner2 = torch.tensor(2.0), torch.tensor(4.0), torch.tensor(8.0)
    assert mixed_ctc_loss([final], 0.3) == final
    assert torch.isclose(mixed_ctc_loss([final, inner1], 0.25), torch.tensor(0.75 * 2 + 0.25 * 4))
    assert torch.isclose(mixed_ctc_loss([final, inner1, inner2], 0.5), torch.tensor(0.5 * 2 + 0.5 * 6))


@pytest.mark.parametrize("loss, field", [
    ({"inter_ctc_weight": 1.0}, "loss.inter_ctc_weight"),
    ({"inter_ctc_weight": -0.1}, "loss.inter_ctc_weight"),
    ({"inter_ctc_weight": 0.3, "inter_ctc_blocks": [0, 2]}, "loss.inter_ctc_blocks must be below"),  # the last
    ({"inter_ctc_weight": 0.3, "inter_ctc_blocks": [-1]}, "loss.inter_ctc_blocks"),
    ({"inter_ctc_weight": 0.3, "inter_ctc_blocks": [1, 1]}, "loss.inter_ctc_blocks: blocks must be distinct"),
])
def test_bad_settings_name_the_field(loss, field):
    with pytest.raises(ConfigError, match=field):
        _cfg(**loss)


def test_preset_block_count_is_checked_too():
    with pytest.raises(ConfigError, match="below the last block's index 7"):
        config_from_dict({"model": {"preset": "quartznet_5x3"}, "data": {"train_manifests": [{"path": "t.json"}]},
                          "loss": {"inter_ctc_weight": 0.3, "inter_ctc_blocks": [7]}})


def test_step_returns_every_head_and_all_get_gradients():
    cfg = _cfg(inter_ctc_weight=0.5)
    recognizer = SpeechRecognizer(fresh_recognizer_config(cfg)).train()
    step = TrainStep(recognizer, None, seed=0, inter_ctc_blocks=(1, 0))
    audio, audio_lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    (final, final_lengths), (first, _), (inner, inner_lengths) = step(audio, audio_lengths)
    assert final.shape == inner.shape and torch.equal(final_lengths, inner_lengths)  # no stride after block 1
    assert step.inter_ctc_heads[0].in_channels == 32 and first.shape == final.shape
    assert torch.allclose(inner.exp().sum(-1), torch.ones(inner.shape[:2]))
    targets, target_lengths = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    blank = recognizer.vocabulary.blank_id
    losses = [ctc_loss(lp, n, targets, target_lengths, blank) for lp, n in ((final, final_lengths),
                                                                            (inner, inner_lengths))]
    assert not torch.allclose(losses[0], losses[1])  # two different heads
    (0.5 * losses[0] + 0.5 * losses[1] + first.sum() * 0.01).backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in step.inter_ctc_heads)
    assert recognizer.network.decoder.weight.grad.abs().sum() > 0
    assert not any("inter_ctc" in key for key in recognizer.state_dict())


def test_loop_checkpoints_the_head_apart_from_the_model(an4_pick, tmp_path):
    rows = an4_pick(6)
    train = write_manifest(tmp_path / "train.json", rows[:4])
    val = write_manifest(tmp_path / "val.json", rows[4:])
    cfg = load_config(write_config(tmp_path, train, val, loss={"inter_ctc_weight": 0.3}, optim={"epochs": 2}), [])
    train_loop_per_worker(WorkerConfig(cfg).loop_config())

    first, last = sorted((tmp_path / "out" / "checkpoints").iterdir())
    model_keys = set(load_file(last / "model.safetensors"))
    assert model_keys == set(SpeechRecognizer(fresh_recognizer_config(cfg)).state_dict())
    head_before, head = load_file(first / "aux_heads.safetensors"), load_file(last / "aux_heads.safetensors")
    assert set(head) == {"0.weight", "0.bias"} and head["0.weight"].shape[:2] == (len(cfg.model.labels) + 1, 32)
    assert not torch.equal(head_before["0.weight"], head["0.weight"])  # it trains
    history = json.loads((last / "train_state.json").read_text())["state"]["history"]
    # The logged train_loss mixes the heads; the model's own head is logged beside it.
    assert all(h["train_loss_final_head"] != h["train_loss"] and h["train_loss_final_head"] > 0 for h in history)


def test_resume_state_restores_the_head(tmp_path, monkeypatch):
    ray_train = pytest.importorskip("ray.train")
    from training.schedule import build_warmup_cosine_scheduler
    from training.state import TrainState, load_resume_state, save_resume_state

    cfg = _cfg(inter_ctc_weight=0.3)

    def parts():
        recognizer = SpeechRecognizer(fresh_recognizer_config(cfg))
        step = TrainStep(recognizer, None, seed=0, inter_ctc_blocks=(1,))
        optimizer = torch.optim.AdamW(step.parameters(), lr=1e-3)
        scheduler = build_warmup_cosine_scheduler(optimizer, warmup_steps=0, max_steps=10, min_lr=0.0)
        return step, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)

    saved, optimizer, scheduler, scaler = parts()
    save_resume_state(tmp_path, cfg, TrainState(epoch=1), saved.recognizer, optimizer, scheduler, scaler,
                      saved.inter_ctc_heads)
    monkeypatch.setattr(ray_train, "get_checkpoint", lambda: ray_train.Checkpoint.from_directory(str(tmp_path)))
    restored, optimizer, scheduler, scaler = parts()
    assert not torch.equal(restored.inter_ctc_heads[0].weight, saved.inter_ctc_heads[0].weight)  # fresh init
    state = load_resume_state(True, restored.recognizer, optimizer, scheduler, scaler, restored.inter_ctc_heads)
    assert state.epoch == 1
    assert torch.equal(restored.inter_ctc_heads[0].weight, saved.inter_ctc_heads[0].weight)
    assert torch.equal(restored.inter_ctc_heads[0].bias, saved.inter_ctc_heads[0].bias)
