"""Self-conditioned CTC: config, the heads the model owns, their loss, publishing and fine-tuning."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import artifact_files, load_artifact
from model.recognizer import SpeechRecognizer
from tests.training.conftest import TINY_BLOCKS, write_config, write_manifest
from model.vocabulary import ENGLISH_LABELS as DEFAULT_LABELS
from training.config import ConfigError, config_from_dict, load_config
from training.init_model import build_recognizer, fresh_recognizer_config
from training.loop import train_loop_per_worker
from training.run import WorkerConfig
from training.train_step import TrainStep, inter_ctc_blocks
from training.trainer import TrainingError, check_heads_fit_source


def _cfg(labels=DEFAULT_LABELS, run=None, **loss):
    return config_from_dict({"model": {"blocks": TINY_BLOCKS, "labels": list(labels)},
                             "data": {"train_manifests": [{"path": "t.json"}]}, "loss": loss, "run": run or {}})


def test_needs_the_intermediate_loss():
    with pytest.raises(ConfigError, match="loss: .*self_conditioning needs inter_ctc_weight > 0"):
        _cfg(self_conditioning=True)


def test_the_heads_belong_to_the_model_and_replace_the_training_only_ones():
    cfg = _cfg(inter_ctc_weight=0.5, self_conditioning=True)
    recognizer = SpeechRecognizer(fresh_recognizer_config(cfg)).train()
    assert recognizer.network.config.self_conditioning == (1,)  # the middle block, as for intermediate CTC
    assert inter_ctc_blocks(cfg, recognizer.network.config) == ()
    step = TrainStep(recognizer, None, seed=0, inter_ctc_blocks=inter_ctc_blocks(cfg, recognizer.network.config))
    assert step.has_intermediate_heads and len(step.inter_ctc_heads) == 0
    audio, audio_lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    (final, final_lengths), (inner, inner_lengths) = step(audio, audio_lengths)
    assert final.shape == inner.shape and torch.equal(final_lengths, inner_lengths)
    assert torch.allclose(inner.exp().sum(-1), torch.ones(inner.shape[:2]))
    inner.sum().backward()  # the intermediate loss trains the head, and through it the earlier blocks
    conditioner = recognizer.network.conditioners["1"]
    assert conditioner.head.weight.grad.abs().sum() > 0
    assert recognizer.network.blocks[0].sub[0].pointwise.weight.grad.abs().sum() > 0


def test_run_publishes_the_heads_and_they_load_back(an4_pick, tmp_path):
    rows = an4_pick(6)
    train = write_manifest(tmp_path / "train.json", rows[:4])
    val = write_manifest(tmp_path / "val.json", rows[4:])
    cfg = load_config(write_config(tmp_path, train, val, optim={"epochs": 2},
                                   loss={"inter_ctc_weight": 0.3, "self_conditioning": True}), [])
    train_loop_per_worker(WorkerConfig(cfg).loop_config())

    last = sorted((tmp_path / "out" / "checkpoints").iterdir())[-1]
    assert not (last / "aux_heads.safetensors").exists()  # nothing lives outside the model
    weights = load_file(last / "model.safetensors")
    assert {"network.conditioners.1.head.weight", "network.conditioners.1.back.weight"} <= set(weights)
    model = SpeechRecognizer(fresh_recognizer_config(cfg))
    model.load_state_dict(weights)
    folder = tmp_path / "artifact"
    folder.mkdir()
    for name, data in artifact_files(model).items():
        (folder / name).write_bytes(data)
    loaded = load_artifact(folder)
    assert loaded.network.config.self_conditioning == (1,)
    clip = torch.randn(8000).numpy() * 0.1
    assert (loaded.log_probs_batch([clip])[0] == model.eval().log_probs_batch([clip])[0]).all()


def _saved(model: SpeechRecognizer, folder) -> str:
    folder.mkdir()
    for name, data in artifact_files(model).items():
        (folder / name).write_bytes(data)
    return str(folder)


def test_fine_tuning_keeps_the_source_heads_or_starts_new_ones(tmp_path):
    torch.manual_seed(0)
    source = SpeechRecognizer(fresh_recognizer_config(_cfg(inter_ctc_weight=0.5, self_conditioning=True)))
    source_dir = _saved(source, tmp_path / "src")
    source_state = source.state_dict()

    # Same vocabulary, nothing asked: the source's heads carry over with their weights.
    kept, info = build_recognizer(_cfg(run={"fine_tune_from": "src"}), source_dir)
    assert kept.network.config.self_conditioning == (1,) and info["self_conditioning"] == [1]
    assert all(torch.equal(v, source_state[k]) for k, v in kept.state_dict().items())

    # A new vocabulary resizes the heads: the encoder is kept, the heads start afresh.
    labels = [*DEFAULT_LABELS, "0"]
    resized, info = build_recognizer(_cfg(labels, run={"fine_tune_from": "src"}), source_dir)
    head = resized.network.conditioners["1"].head.weight
    assert head.shape[0] == len(labels) + 1 and info["vocabulary_changed"]
    key = "network.blocks.1.sub.0.pointwise.weight"
    assert torch.equal(resized.state_dict()[key], source_state[key])

    # Self-conditioning added to a source without it: new heads on the source's encoder.
    plain = SpeechRecognizer(fresh_recognizer_config(_cfg()))
    added, _ = build_recognizer(_cfg(run={"fine_tune_from": "p"}, inter_ctc_weight=0.5, self_conditioning=True,
                                     inter_ctc_blocks=[0]), _saved(plain, tmp_path / "plain"))
    assert added.network.config.self_conditioning == (0,)
    assert torch.equal(added.state_dict()[key], plain.state_dict()[key])


def test_a_frozen_encoder_freezes_the_source_heads_but_not_new_ones(tmp_path):
    source = SpeechRecognizer(fresh_recognizer_config(_cfg(inter_ctc_weight=0.5, self_conditioning=True)))
    source_dir = _saved(source, tmp_path / "src")

    def trainable(labels):
        model, _ = build_recognizer(_cfg(labels, run={"fine_tune_from": "src", "freeze_encoder": True}), source_dir)
        return {name for name, p in model.named_parameters() if p.requires_grad}

    # The source's heads feed the later blocks: frozen with them, so only the CTC head trains.
    assert trainable(DEFAULT_LABELS) == {"network.decoder.weight", "network.decoder.bias"}
    # A new vocabulary starts the heads afresh; frozen random heads would feed noise to the encoder.
    assert trainable([*DEFAULT_LABELS, "0"]) == {"network.decoder.weight", "network.decoder.bias",
                                                 *(f"network.conditioners.1.{layer}.{kind}"
                                                   for layer in ("head", "back") for kind in ("weight", "bias"))}


def test_heads_that_do_not_fit_the_source_stop_the_run_before_ray_starts(tmp_path):
    source = SpeechRecognizer(fresh_recognizer_config(_cfg(inter_ctc_weight=0.5, self_conditioning=True)))
    source_dir = _saved(source, tmp_path / "src")
    check_heads_fit_source(_cfg(run={"fine_tune_from": "src"}, inter_ctc_weight=0.5), source_dir)  # its own heads
    with pytest.raises(TrainingError, match=r"loss.inter_ctc_blocks \[0\] differ from the model's "
                                            r"self-conditioning blocks \[1\].*fine-tuning source src"):
        check_heads_fit_source(_cfg(run={"fine_tune_from": "src"}, inter_ctc_weight=0.5, inter_ctc_blocks=[0]),
                               source_dir)
    # Moving them is allowed: the new blocks get new heads.
    check_heads_fit_source(_cfg(run={"fine_tune_from": "src"}, inter_ctc_weight=0.5, inter_ctc_blocks=[0],
                                self_conditioning=True), source_dir)


def test_the_default_middle_block_is_checked_in_the_config():
    two_blocks = [TINY_BLOCKS[0], TINY_BLOCKS[2]]
    with pytest.raises(ConfigError, match=r"below the last block's index 1, got \[1\] \(the middle block"):
        config_from_dict({"model": {"blocks": two_blocks}, "data": {"train_manifests": [{"path": "t.json"}]},
                          "loss": {"inter_ctc_weight": 0.5, "self_conditioning": True}})
