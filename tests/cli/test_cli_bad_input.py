"""`asr transcribe/eval/logprobs` on bad input: exit code 2, one stderr line naming the problem, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cli.helpers import asr_console, asr_in_process
from tests.conftest import SPEECH_ROOT

# A real FLAC cut to 40% of its bytes: libsndfile 1.2 stops with "flac decoder lost sync".
TRUNCATE_SOURCE = "samples/librispeech/61-70968-0000.flac"

# case -> words the one-line message must contain
BAD_AUDIO = {
    "empty-file": "empty file",
    "random-bytes": "not a readable audio file",
    "truncated-flac": "not a readable audio file",
    "zero-frames": "zero length",
    "nan-samples": "NaN or infinite",
    "inf-samples": "NaN or infinite",
    "rate-4khz": "sample rate 4000 Hz",
    "missing-file": "not found",
}
FILE_NAMES = {"empty-file": "empty.wav", "random-bytes": "x.wav", "truncated-flac": "cut.flac",
              "zero-frames": "zero.wav", "nan-samples": "nan.wav", "inf-samples": "inf.wav",
              "rate-4khz": "low_rate.wav", "missing-file": "missing.wav"}


def _decodes(path: Path) -> bool:
    try:
        sf.read(path)
    except Exception:  # noqa: BLE001 - any refusal counts
        return False
    return True


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_audio")
    paths = {case: folder / name for case, name in FILE_NAMES.items()}
    paths["empty-file"].write_bytes(b"")
    paths["random-bytes"].write_bytes(np.random.default_rng(0).bytes(8_000))
    source = SPEECH_ROOT / TRUNCATE_SOURCE
    if source.is_file():
        data = source.read_bytes()
        paths["truncated-flac"].write_bytes(data[: int(0.4 * len(data))])
    sf.write(paths["zero-frames"], np.zeros(0, dtype=np.float32), 16_000)
    for case, bad_value in (("nan-samples", np.nan), ("inf-samples", np.inf)):
        samples = 0.1 * np.sin(np.arange(16_000, dtype=np.float32) / 10)
        samples[1234] = bad_value
        sf.write(paths[case], samples, 16_000, subtype="FLOAT")
    sf.write(paths["rate-4khz"], 0.1 * np.sin(np.arange(4_000, dtype=np.float32) / 5), 4_000)
    return paths  # "missing-file" is never created


@pytest.fixture(scope="module")
def good_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "tone.wav"
    t = np.arange(16_000, dtype=np.float32) / 16_000
    sf.write(path, 0.2 * np.sin(2 * np.pi * 440 * t), 16_000)
    return path


def _bad(bad_files, case) -> Path:
    path = bad_files[case]
    if case == "truncated-flac" and not path.exists():
        pytest.skip(f"needs {TRUNCATE_SOURCE} from the shared speech data")
    return path


def _check(result, case: str, path: Path) -> None:
    if case == "truncated-flac" and _decodes(path):
        # libsndfile decoded the truncated FLAC partially without an error: then the CLI may accept
        # it, but must still never crash.
        assert "Traceback" not in result.stderr and result.returncode in (0, 2), result.stderr
        return
    result.assert_one_line_error(path.name, BAD_AUDIO[case])


def test_truncated_flac_really_fails_to_decode(bad_files):
    path = _bad(bad_files, "truncated-flac")
    assert sf.info(SPEECH_ROOT / TRUNCATE_SOURCE).frames > 0
    assert not _decodes(path), "libsndfile decoded a FLAC cut to 40% of its bytes without an error"


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_transcribe_bad_audio(case, tiny_registry, bad_files):
    path = _bad(bad_files, case)
    result = asr_in_process("--registry", tiny_registry, "transcribe", path, "--model", "tiny")
    _check(result, case, path)
    assert result.stdout == ""


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_logprobs_bad_audio(case, tiny_registry, bad_files, tmp_path):
    path = _bad(bad_files, case)
    out = tmp_path / "x.npy"
    result = asr_in_process("--registry", tiny_registry, "logprobs", path, "--model", "tiny", "--out", out)
    _check(result, case, path)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_eval_manifest_whose_only_entry_is_bad(case, tiny_registry, bad_files, tmp_path):
    path = _bad(bad_files, case)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"audio_filepath": str(path), "duration": 1.0, "text": "hello"}) + "\n")
    result = asr_in_process("--registry", tiny_registry, "eval", "--manifest", manifest, "--model", "tiny")
    if case == "truncated-flac" and _decodes(path):
        _check(result, case, path)
        return
    result.assert_one_line_error("no readable utterances", path.name, BAD_AUDIO[case])


def test_eval_skips_and_counts_bad_lines_among_good_ones(tiny_registry, bad_files, good_wav, tmp_path):
    bad = [p for case, p in bad_files.items() if case != "truncated-flac" or p.exists()]
    lines = [json.dumps({"audio_filepath": str(good_wav), "duration": 1.0, "text": "one"})]
    lines += [json.dumps({"audio_filepath": str(p), "duration": 1.0, "text": "bad"}) for p in bad]
    lines += ["{not json", json.dumps({"audio_filepath": str(good_wav)}), "",
              # relative paths resolve against the manifest's folder
              json.dumps({"audio_filepath": good_wav.name, "duration": 1.0, "text": "two"})]
    manifest = good_wav.parent / "mixed.json"
    manifest.write_text("\n".join(lines) + "\n")
    result = asr_in_process("--registry", tiny_registry, "eval", "--manifest", manifest, "--model", "tiny", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["num_utterances"] == 2
    assert report["num_skipped"] == len(bad) + 2
    assert len(report["problems"]) == len(bad) + 2
    for path in bad:
        assert any(path.name in problem for problem in report["problems"]), path
    assert sum("not a manifest entry" in problem for problem in report["problems"]) == 2
    assert 0.0 <= report["cer"] and 0.0 <= report["wer"]
    assert report["model"] == "tiny@1"
    text = asr_in_process("--registry", tiny_registry, "eval", "--manifest", manifest, "--model", "tiny")
    assert text.returncode == 0 and f"({len(bad) + 2} skipped)" in text.stdout


def test_transcribe_aborts_when_one_of_several_files_is_bad(tiny_registry, bad_files, good_wav):
    path = bad_files["random-bytes"]
    asr_in_process("--registry", tiny_registry, "transcribe", good_wav, path, "--model", "tiny"
                   ).assert_one_line_error(path.name, "not a readable audio file")


def test_eval_missing_manifest(tiny_registry, tmp_path):
    asr_in_process("--registry", tiny_registry, "eval", "--manifest", tmp_path / "none.json", "--model", "tiny"
                   ).assert_one_line_error("none.json", "not found")


def test_logprobs_unwritable_output(tiny_registry, good_wav, tmp_path):
    asr_in_process("--registry", tiny_registry, "logprobs", good_wav, "--model", "tiny",
                   "--out", tmp_path / "no" / "such" / "dir.npy").assert_one_line_error("dir.npy")


@pytest.mark.parametrize("command", ["transcribe", "eval", "logprobs"])
@pytest.mark.parametrize("spec, fragment", [("nosuch", "no model named 'nosuch'"), ("tiny@7", "tiny@7"),
                                            ("../escape", "invalid name")])
def test_unknown_model(command, spec, fragment, tiny_registry, good_wav, tmp_path):
    args = {"transcribe": ["transcribe", good_wav],
            "eval": ["eval", "--manifest", _one_line_manifest(good_wav, tmp_path)],
            "logprobs": ["logprobs", good_wav, "--out", tmp_path / "x.npy"]}[command]
    result = asr_in_process("--registry", tiny_registry, *args, "--model", spec)
    line = result.assert_one_line_error(fragment)
    if spec == "nosuch":
        assert "tiny" in line  # the message lists what is available


def test_default_model_missing(tiny_registry, good_wav, monkeypatch):
    monkeypatch.delenv("ASR_DEFAULT_MODEL", raising=False)
    asr_in_process("--registry", tiny_registry, "transcribe", good_wav).assert_one_line_error("an4-quartznet")


def _one_line_manifest(audio: Path, folder: Path) -> Path:
    manifest = folder / "one.json"
    manifest.write_text(json.dumps({"audio_filepath": str(audio), "duration": 1.0, "text": "tone"}) + "\n")
    return manifest


def test_console_script_reports_bad_audio_in_one_line(tiny_registry, bad_files):
    # The real process: no warnings, log lines or tracebacks may reach the terminal either.
    path = bad_files["random-bytes"]
    result = asr_console("--registry", tiny_registry, "transcribe", path, "--model", "tiny")
    line = result.assert_one_line_error(path.name, "not a readable audio file")
    assert line.startswith("asr: error: ")
    assert result.stdout == ""


# ---- models presets / list ----


def test_models_presets_json():
    result = asr_in_process("models", "presets", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {row["name"]: row["parameters"] for row in rows} == {
        "quartznet_5x3": 6_407_005, "quartznet_5x5": 6_713_181, "quartznet_10x5": 12_818_781,
        "quartznet_15x5": 18_924_381, "jasper_10x5dr": 332_632_349,
        # with NeMo's 1024-piece English tokenizers (tests/interop/test_citrinet.py checks them against NeMo)
        "citrinet_256": 10_259_729, "citrinet_512": 36_994_321, "citrinet_1024": 141_224_337}
    table = asr_in_process("models", "presets")
    assert table.returncode == 0 and "332,632,349" in table.stdout


def test_models_list_json(tiny_registry, tmp_path):
    result = asr_in_process("--registry", tiny_registry, "models", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r["version"], r["kind"], r["source"]) for r in rows] == [("tiny", 1, "model", "trained")]
    assert Path(rows[0]["path"]) == tiny_registry / "tiny" / "1"
    empty = asr_in_process("--registry", tmp_path / "empty", "models", "list", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    assert "is empty" in asr_in_process("--registry", tmp_path / "empty", "models", "list").stdout


# ---- options argparse cannot range-check ----


@pytest.mark.parametrize("args, fragment", [
    (["--decoder", "beam", "--beam-width", "0"], "--beam-width must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--device", "cuda"], "no usable CUDA GPU"),
])
def test_bad_options_exit_2_in_one_line(args, fragment, tiny_registry, good_wav):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for command in (["transcribe", good_wav], ["eval", "--manifest", _one_line_manifest(good_wav, good_wav.parent)]):
        asr_in_process("--registry", tiny_registry, *command, "--model", "tiny", *args).assert_one_line_error(fragment)


def test_a_garbage_mp3_gets_one_line_naming_the_problem(tiny_registry, tmp_path):
    """The real process: libmpg123 prints its own notes straight to file descriptor 2 unless muted."""
    path = tmp_path / "garbage.mp3"
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + np.random.default_rng(3).bytes(20_000))
    result = asr_console("--registry", tiny_registry, "transcribe", path, "--model", "tiny")
    line = result.assert_one_line_error("garbage.mp3", "not a readable audio file (unrecognised or corrupt data)")
    assert "does not exist" not in line and result.stdout == ""
