"""`asr bench` and `--precision`: the timing report, and one-line exit-2 errors for what cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.precision import cpu_has_native_bf16, cpu_has_native_fp16
from tests.cli.helpers import asr_in_process


def test_bench_reports_the_timing_and_the_machine(tiny_registry):
    result = asr_in_process("--registry", tiny_registry, "bench", "--model", "tiny", "--batch-size", "2",
                            "--clip-seconds", "1.5", "--threads", "1", "--precision", "fp32", "--runs", "5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"x_realtime", "ms_per_batch", "batch_size", "clip_seconds", "precision", "threads", "device",
            "cpu"} <= set(report)
    assert (report["model"], report["batch_size"], report["clip_seconds"]) == ("tiny@1", 2, 1.5)
    assert (report["precision"], report["threads"], report["device"], report["runs"]) == ("fp32", 1, "cpu", 5)
    assert report["cpu"] and report["ms_per_batch"] > 0
    # x real time is the audio per batch over the median batch time
    assert report["x_realtime"] == pytest.approx(2 * 1.5 / (report["ms_per_batch"] / 1e3), rel=1e-3)


def test_bench_prints_one_line_without_json(tiny_registry):
    result = asr_in_process("--registry", tiny_registry, "bench", "--model", "tiny", "--clip-seconds", "1",
                            "--precision", "fp32", "--runs", "5")
    assert result.returncode == 0 and len(result.stdout.strip().splitlines()) == 1
    assert "x real time" in result.stdout and "ms per batch" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--clip-seconds", "0"], "--clip-seconds must be in"),
    (["--clip-seconds", "-3"], "--clip-seconds must be in"),
    (["--clip-seconds", "99999"], "--clip-seconds must be in"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--runs", "3"], "--runs must be at least 5"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--model", "nosuch"], "no model named 'nosuch'"),
])
def test_bad_bench_arguments_exit_2_in_one_line(args, fragment, tiny_registry):
    asr_in_process("--registry", tiny_registry, "bench", "--model", "tiny", *args).assert_one_line_error(fragment)


def test_argparse_rejects_unknown_precisions_with_exit_2(tiny_registry):
    result = asr_in_process("--registry", tiny_registry, "bench", "--model", "tiny", "--precision", "fp64")
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.skipif(cpu_has_native_fp16(), reason="this CPU runs fp16")
def test_a_precision_this_cpu_cannot_run_is_refused_not_replaced(tiny_registry, tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "x.wav", np.zeros(8_000, dtype=np.float32), 16_000)
    for command in (["bench"], ["logprobs", tmp_path / "x.wav", "--out", tmp_path / "x.npy"]):
        asr_in_process("--registry", tiny_registry, *command, "--model", "tiny", "--precision", "fp16"
                       ).assert_one_line_error("fp16 on CPU needs")


def test_cuda_without_cuda_is_a_usage_error(tiny_registry, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    asr_in_process("--registry", tiny_registry, "bench", "--model", "tiny", "--device", "cuda"
                   ).assert_one_line_error("no usable CUDA")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "auto"])
def test_transcribe_runs_at_each_precision_this_cpu_has(precision, tiny_registry, tmp_path):
    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    import numpy as np
    import soundfile as sf

    path = tmp_path / "tone.wav"
    sf.write(path, 0.2 * np.sin(np.arange(16_000, dtype=np.float32) / 7), 16_000)
    result = asr_in_process("--registry", tiny_registry, "transcribe", path, "--model", "tiny",
                            "--precision", precision, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["duration"] == 1.0
