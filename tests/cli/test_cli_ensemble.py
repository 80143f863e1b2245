"""`asr models ensemble`: members published as one model that transcribes; bad member lists exit 2."""

from __future__ import annotations

import json

from model.checkpoint import publish_model
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.registry import Registry
from model.vocabulary import Vocabulary
from tests.cli.helpers import asr_in_process
from tests.service.conftest import AN4_TEST, SPEECH_DIR
from tests.tiny_model import publish_tiny_model


def _publish_members(root) -> None:
    for seed in (0, 1):
        publish_tiny_model(root, seed=seed)
    other = RecognizerConfig(MelFeaturizerConfig(), QuartzNetConfig(
        (BlockConfig(32, 1, 11, stride=2), BlockConfig(64, 1, 1, separable=False)), num_labels=3),
        Vocabulary((" ", "a", "b")))
    publish_model(Registry(root), "ab", SpeechRecognizer(other).eval(), source="trained")


def test_ensemble_is_published_and_transcribes(tmp_path) -> None:
    root = tmp_path / "registry"
    _publish_members(root)
    result = asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "tiny@2", "--name", "duo", "--fp16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "duo@1"
    metadata = json.loads((root / "duo" / "1" / "metadata.json").read_text())
    assert metadata["source"] == "ensemble" and metadata["extra"]["members"] == ["tiny@1", "tiny@2"]
    audio = SPEECH_DIR / json.loads(AN4_TEST.read_text().splitlines()[0])["audio_filepath"]
    for decoder in ("greedy", "beam"):
        out = asr_in_process("--registry", root, "transcribe", audio, "--model", "duo", "--json", "--decoder", decoder)
        assert out.returncode == 0, out.stderr
        body = json.loads(out.stdout)
        assert body["model"] == "duo@1" and body["results"][0]["text"]
        assert [w["word"] for w in body["results"][0]["words"]] == body["results"][0]["text"].split()


def test_bad_member_lists_exit_2(tmp_path) -> None:
    root = tmp_path / "registry"
    _publish_members(root)
    asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "--name", "x").assert_one_line_error(
        "at least 2 members, or a speed besides 1.0")
    asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "--speeds", "0.9", "1.1", "--name", "x"
                   ).assert_one_line_error("must include 1.0")
    asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "ab@1", "--name", "x").assert_one_line_error(
        "vocabulary")
    asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "nope@1", "--name", "x").assert_one_line_error(
        "nope")
    assert asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "tiny@2", "--name", "duo").returncode == 0
    asr_in_process("--registry", root, "models", "ensemble", "duo", "tiny@1", "--name", "x").assert_one_line_error(
        "is an ensemble itself")
    asr_in_process("--registry", root, "models", "export-nemo", "duo", "--out", tmp_path / "d.nemo"
                   ).assert_one_line_error("ensembles cannot be exported")
    assert not (root / "x").exists()


def test_one_model_heard_at_three_speeds_is_an_ensemble(tmp_path) -> None:
    root = tmp_path / "registry"
    _publish_members(root)
    result = asr_in_process("--registry", root, "models", "ensemble", "tiny@1", "--speeds", "0.95", "1.0", "1.05",
                            "--name", "tta")
    assert result.returncode == 0, result.stderr
    metadata = json.loads((root / "tta" / "1" / "metadata.json").read_text())
    assert metadata["extra"] == {"members": ["tiny@1"], "speeds": [0.95, 1.0, 1.05]}
    audio = SPEECH_DIR / json.loads(AN4_TEST.read_text().splitlines()[0])["audio_filepath"]
    out = asr_in_process("--registry", root, "logprobs", audio, "--model", "tta", "--out", tmp_path / "lp.npy")
    assert out.returncode == 0, out.stderr
    assert "3 views x" in out.stdout
