"""Early stopping: the patience rule and its config field."""

from __future__ import annotations

import pytest
import torch

from training.config import config_from_dict
from training.run import Context
from training.selection import patience_exhausted
from training.state import TrainState

CPU = Context(rank=0, world_size=1, device=torch.device("cpu"), under_ray=False)


def _cfg(patience):
    return config_from_dict({"model": {"preset": "quartznet_5x3"},
                             "data": {"train_manifests": [{"path": "train.json"}]},
                             "run": {"early_stop_patience_epochs": patience}})


@pytest.mark.parametrize("epoch, best_epoch, patience, stop", [
    (10, 5, 5, True),      # five epochs without improvement
    (9, 5, 5, False),
    (10, 10, 1, False),    # the last epoch was the best
    (10, 0, 1, False),     # never validated: nothing to compare against
    (100, 1, None, False),  # off by default
])
def test_patience_counts_epochs_since_the_best(epoch, best_epoch, patience, stop):
    state = TrainState(epoch=epoch, best_epoch=best_epoch, best_wer=0.5)
    assert patience_exhausted(_cfg(patience), CPU, state) is stop


def test_patience_must_be_positive():
    with pytest.raises(ValueError, match="early_stop_patience_epochs"):
        _cfg(0)
