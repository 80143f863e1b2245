"""An equal-weight running mean of model weights taken at several epochs' ends (SWA-style)."""

from __future__ import annotations

import torch


class WeightAverage:
    """Mean of state dicts added one at a time; integer buffers keep the latest value.

    Used only while BatchNorm statistics are fixed: then every snapshot normalises with the
    same statistics, so their mean is a coherent model and needs no recalibration.
    """

    def __init__(self, mean: dict[str, torch.Tensor] | None = None, count: int = 0) -> None:
        if (mean is None) != (count == 0):
            raise ValueError("a restored average needs both its tensors and a count > 0")
        self.mean = mean
        self.count = count

    @torch.no_grad()
    def add(self, state_dict: dict[str, torch.Tensor]) -> None:
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
        self.count += 1
        if self.mean is None:
            self.mean = {k: v.double() if v.is_floating_point() else v for k, v in snapshot.items()}
            return
        for key, value in snapshot.items():
            if value.is_floating_point():
                self.mean[key] += (value.double() - self.mean[key]) / self.count
            else:
                self.mean[key] = value  # e.g. BatchNorm's num_batches_tracked

    def weights(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean, cast back to the dtypes of ``like`` (a state dict of the model)."""
        if self.mean is None:
            raise ValueError("no weights have been added")
        return {k: self.mean[k].to(like[k].dtype) for k in like}
