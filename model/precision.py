"""Inference precisions (fp32, bf16, fp16, int8, auto): what each needs and what this machine can run."""

from __future__ import annotations

import torch

from model.errors import ASRError

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ASRError, ValueError):
    """A precision or device this machine cannot run (or an unknown name); never silently replaced by another."""

    code = "bad_precision"


def check_device(device: torch.device | str) -> torch.device:
    """The device as a torch.device; raises PrecisionError for CUDA on a machine without it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrecisionError(f"unknown device {device!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrecisionError("device cuda was asked for, but this machine has no usable CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise PrecisionError(f"device {device.type!r} is not supported; use cpu or cuda")
    return device


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX), so bf16 is faster than fp32."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_native_fp16() -> bool:
    """True where oneDNN runs fp16 natively (AVX512-FP16 or AMX-FP16)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_fp16_supported())


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Maps a requested precision to the one that runs on ``device``; ``auto`` picks the fastest safe one.

    ``auto`` is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere. An explicit choice
    the device cannot run raises PrecisionError naming what it needs.
    """
    device = check_device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return "bf16"
        return "fp32"
    if device.type == "cpu":
        if precision == "bf16" and not cpu_has_native_bf16():
            raise PrecisionError("bf16 needs a CPU with AVX512-BF16 or AMX (this one has neither); use fp32 or int8")
        if precision == "fp16" and not cpu_has_native_fp16():
            raise PrecisionError("fp16 on CPU needs AVX512-FP16 or AMX-FP16 (this CPU has neither); "
                                 "use bf16 or fp32, or fp16 on CUDA")
    else:
        if precision == "int8":
            raise PrecisionError("int8 runs on CPU only; on CUDA use fp16 or bf16")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise PrecisionError("bf16 needs a CUDA GPU of compute capability 8.0 or newer; use fp16")
    return precision
