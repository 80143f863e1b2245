"""CpuSyncBatchNorm1d over two gloo processes equals one BatchNorm1d over the joint batch.

Both sides run in float64 so that the comparison measures the synchronisation, not rounding:
every compared value sums at most 2 * 3 * 20 = 120 products of magnitude below 10, so float64
rounding is below 120 * 10 * 2.2e-16 ~ 3e-13; TOL leaves three orders of margin. A wrong
reduction (one rank's statistics instead of both) moves outputs and gradients by ~1e-1.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.sync_bn import CpuSyncBatchNorm1d, convert_sync_batchnorm

WORLD_SIZE = 2
BATCH, CHANNELS, FRAMES = 3, 8, 20
TOL = dict(atol=1e-10, rtol=1e-10)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(CHANNELS, CHANNELS, 3, padding=1), nn.BatchNorm1d(CHANNELS, momentum=0.2),
                          nn.ReLU())
    with torch.no_grad():  # non-trivial affine parameters and running stats
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
        model[1].running_mean.fill_(0.3)
    return model.double()


def _inputs() -> torch.Tensor:
    return torch.randn(WORLD_SIZE * BATCH, CHANNELS, FRAMES, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model = convert_sync_batchnorm(_model(), use_cuda=False)
        assert isinstance(model[1], CpuSyncBatchNorm1d)
        x = _inputs()[rank * BATCH:(rank + 1) * BATCH].clone().requires_grad_(True)
        outputs = []
        for _ in range(2):  # two steps, so the running-stat momentum is applied twice
            model.zero_grad()
            y = model(x)
            y.sum().backward()
            outputs.append(y.detach())
        grads = {}
        for name, param in model.named_parameters():
            grad = param.grad.clone()
            dist.all_reduce(grad)
            grads[name] = grad / WORLD_SIZE  # what DDP's gradient averaging gives
        torch.save({"out": outputs[-1], "x_grad": x.grad, "grads": grads,
                    "buffers": {k: v.clone() for k, v in model.state_dict().items() if "running" in k}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_sync_bn_matches_single_process_batchnorm(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)

    reference = _model()
    x = _inputs().requires_grad_(True)
    for _ in range(2):
        reference.zero_grad()
        y = reference(x)
        # DDP averages over ranks, so the matching single-process loss is the mean over ranks.
        (y.sum() / WORLD_SIZE).backward()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    for rank, result in enumerate(results):
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        torch.testing.assert_close(result["out"], y.detach()[rows], **TOL)
        torch.testing.assert_close(result["x_grad"], x.grad[rows] * WORLD_SIZE, **TOL)
        for name, param in reference.named_parameters():
            torch.testing.assert_close(result["grads"][name], param.grad, **TOL)
        for name, buffer in reference.state_dict().items():
            if "running" in name:
                torch.testing.assert_close(result["buffers"][name], buffer, **TOL)


def test_without_process_group_it_is_batchnorm():
    plain = nn.BatchNorm1d(4, momentum=None)
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(4, momentum=None)), use_cuda=False)[0]
    assert isinstance(synced, CpuSyncBatchNorm1d) and synced.momentum is None
    x = torch.randn(5, 4, 7)
    for module in (plain, synced):
        module.train()
    torch.testing.assert_close(synced(x), plain(x), atol=0, rtol=0)
    torch.testing.assert_close(synced.running_var, plain.running_var, atol=0, rtol=0)
    plain.eval()
    synced.eval()
    torch.testing.assert_close(synced(x), plain(x), atol=0, rtol=0)


def test_convert_shares_parameters_and_keeps_mode():
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Sequential(nn.BatchNorm1d(4, eps=1e-3)))
    weight = model[1][0].weight
    model.eval()
    converted = convert_sync_batchnorm(model, use_cuda=False)
    layer = converted[1][0]
    assert converted is model and isinstance(layer, CpuSyncBatchNorm1d)
    assert layer.weight is weight and layer.eps == 1e-3 and not layer.training
