"""NovoGrad: Adam-like momentum with one scalar second moment per parameter tensor."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class NovoGrad(Optimizer):
    """Layer-wise adaptive optimiser used to train QuartzNet and Jasper.

    From Ginsburg et al. 2019, "Stochastic Gradient Methods with Layer-wise Adaptive
    Moments" (the optimiser of Kriman et al. 2019, QuartzNet). For each parameter tensor
    ``w`` with gradient ``g`` the update is, without bias correction::

        v  = ||g||^2                            on the tensor's first step
        v  = beta2 * v + (1 - beta2) * ||g||^2  afterwards          (v is a scalar)
        g' = g / (sqrt(v) + eps) + weight_decay * w
        g' = (1 - beta1) * g'                   only if grad_averaging
        m  = beta1 * m + g'
        w  = w - lr * m

    Weight decay applies to every tensor it is given (BatchNorm and biases included),
    as in NeMo; build separate param groups to exempt some.

    Parameters whose ``grad`` is None are skipped, so frozen or unused tensors keep
    their state, and the optimiser works under ``torch.amp.GradScaler`` (which unscales
    gradients in place and skips ``step`` when they overflow).

    Args:
        params: tensors or param-group dicts to optimise.
        lr: learning rate. (Default: 1e-3)
        betas: (beta1, beta2), the momentum and second-moment decay. (Default: (0.95, 0.98))
        eps: added to sqrt(v) so an all-zero gradient does not divide by zero. (Default: 1e-8)
        weight_decay: decoupled-from-v L2 coefficient added after normalisation. (Default: 0)
        grad_averaging: scale g' by (1 - beta1) so m is an average, not a sum. (Default: False)

    Examples:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = NovoGrad(model.parameters(), lr=0.01, betas=(0.8, 0.5), weight_decay=1e-3)
        >>> model(torch.randn(3, 4)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        grad_averaging=grad_averaging)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Applies one update to every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("NovoGrad does not support sparse gradients")
                state = self.state[param]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    # The second moment is one number per tensor; keep it in float32 so the
                    # squared norm of a half-precision gradient neither overflows nor rounds away.
                    state["exp_avg_sq"] = torch.zeros((), dtype=torch.float32, device=param.device)
                self._update(param, grad, state, group, beta1, beta2)
        return loss

    @staticmethod
    def _update(param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                group: dict[str, Any], beta1: float, beta2: float) -> None:
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        grad_sq_norm = grad.float().pow(2).sum()
        if state["step"] == 0:
            exp_avg_sq.copy_(grad_sq_norm)
        else:
            exp_avg_sq.mul_(beta2).add_(grad_sq_norm, alpha=1.0 - beta2)
        state["step"] += 1

        denom = exp_avg_sq.sqrt().add_(group["eps"])
        normalized = grad.float().div(denom)
        if group["weight_decay"] != 0.0:
            normalized.add_(param.float(), alpha=group["weight_decay"])
        if group["grad_averaging"]:
            normalized.mul_(1.0 - beta1)
        exp_avg.mul_(beta1).add_(normalized.to(exp_avg.dtype))
        param.add_(exp_avg, alpha=-group["lr"])
