"""NeMo interop: log-prob parity with real NeMo 3.0.0 outputs (no NeMo needed), export round trip, refusals."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from interop.nemo import CONFIG_MEMBER, WEIGHTS_MEMBER, NemoImportError, export_nemo, import_nemo
from model.inference import for_inference

from tests.cli.helpers import asr_console, asr_in_process
from tests.interop.clips import fixture_clips

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemo"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MODELS = sorted(MANIFEST["models"])  # jasper_small, quartznet_small
CASES = [(Path(f["model"]).stem, f) for f in MANIFEST["fixtures"]]
# fp32, CPU, batch of one. Measured: 0.0 (bit-identical) for all six cases with the eager
# modules, which run NeMo's operations in NeMo's order; the inference form (model.inference:
# BatchNorm folded, other kernels) differs by float32 rounding only (measured below 1e-5).
PARITY_ATOL = 1e-4


def _case_id(case) -> str:
    return f"{case[0]}-{Path(case[1]['clip']).stem}"


@pytest.fixture(scope="module")
def imported() -> dict:
    return {name: import_nemo(FIXTURES / f"{name}.nemo") for name in MODELS}


@pytest.fixture(scope="module")
def clips(speech_root) -> dict[str, np.ndarray]:
    return fixture_clips(speech_root, MANIFEST["fixtures"])


# ---- parity, Python API ----


@pytest.mark.parametrize("form", ["eager", "inference"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_import_matches_nemo_log_probs(case, form, imported, clips):
    name, fixture = case
    model, info = imported[name]
    assert info["frontend"] == "nemo25" and info["nemo_version"] == MANIFEST["nemo_version"]
    assert not model.training
    if form == "inference":  # what the service and the CLI run
        model = for_inference(model, "fp32")
    expected = np.load(FIXTURES / fixture["npy"])
    got = model.log_probs_batch([clips[fixture["clip"]]])[0]
    assert got.shape == expected.shape == tuple(fixture["shape"])
    diff = float(np.abs(got - expected).max())
    assert diff <= PARITY_ATOL, f"max |log-prob - NeMo| = {diff:.3g}"
    assert model.transcribe([clips[fixture["clip"]]])[0].text == fixture["transcribe_text"]


@pytest.mark.parametrize("name", MODELS)
def test_imported_structure_matches_the_manifest(name, imported):
    model, info = imported[name]
    expected = MANIFEST["models"][name]
    assert info["ignored_keys"] == []
    # NeMo counts the featurizer's window and fb buffers as part of its state dict; we have them too.
    assert len(model.state_dict()) == expected["num_state_dict_entries"]
    assert sum(p.numel() for p in model.network.parameters()) == expected["num_parameters"]
    assert model.vocabulary.labels == tuple(MANIFEST["labels"])
    assert model.network.blank_id == MANIFEST["blank_index"]
    assert [b.filters for b in model.config.network.blocks] == [b["filters"] for b in expected["encoder_blocks"]]
    assert model.frame_duration_s == pytest.approx(0.02)


# ---- parity, through the CLI ----


@pytest.fixture(scope="module")
def cli_registry(tmp_path_factory) -> Path:
    """Both fixtures imported with `asr models import-nemo FILE --name NAME` (one by the real console script)."""
    root = tmp_path_factory.mktemp("nemo_registry")
    for name in MODELS:
        run = asr_console if name == "quartznet_small" else asr_in_process
        result = run("--registry", root, "models", "import-nemo", FIXTURES / f"{name}.nemo", "--name", name)
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, f"{name}@1", "")
    return root


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cli_logprobs_match_nemo(case, cli_registry, speech_root, tmp_path):
    name, fixture = case
    out = tmp_path / "x.npy"
    args = ("--registry", cli_registry, "logprobs", speech_root / fixture["clip"], "--model", name, "--out", out)
    # One case goes through the real console script (~5 s to start), the rest through main() in-process.
    console = name == "quartznet_small" and fixture["clip"] == MANIFEST["fixtures"][0]["clip"]
    result = asr_console(*args) if console else asr_in_process(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    got = np.load(out)
    assert got.dtype == np.float32
    expected = np.load(FIXTURES / fixture["npy"])
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= PARITY_ATOL


def test_cli_import_records_the_source(cli_registry):
    result = asr_in_process("--registry", cli_registry, "models", "list", "--json")
    assert result.returncode == 0
    rows = {f"{r['name']}@{r['version']}": r for r in json.loads(result.stdout)}
    assert set(rows) == {f"{name}@1" for name in MODELS}
    assert all(r["source"] == "imported" and r["kind"] == "model" for r in rows.values())


# ---- export round trip ----


@pytest.mark.parametrize("name", MODELS)
def test_export_then_import_is_identical(name, imported, clips, tmp_path):
    model, _ = imported[name]
    path = tmp_path / f"{name}.nemo"
    export_nemo(model, path)
    with tarfile.open(path) as tar:
        members = {Path(m.name).name for m in tar.getmembers()}
        config = yaml.safe_load(tar.extractfile(f"./{CONFIG_MEMBER}").read())
    assert {CONFIG_MEMBER, WEIGHTS_MEMBER} <= members
    assert config["encoder"]["_target_"].endswith("ConvASREncoder")
    assert config["decoder"]["vocabulary"] == list(MANIFEST["labels"])
    again, info = import_nemo(path)
    assert again.config == model.config
    assert info["frontend"] == "nemo25"
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    clip = clips[MANIFEST["fixtures"][0]["clip"]]
    assert np.array_equal(again.log_probs_batch([clip])[0], model.log_probs_batch([clip])[0])


def test_export_keeps_the_nemo24_frontend(imported, tmp_path):
    model, _ = import_nemo(FIXTURES / "quartznet_small.nemo", frontend="nemo24")
    assert model.config.features.frontend == "nemo24"
    export_nemo(model, tmp_path / "old.nemo")
    again, info = import_nemo(tmp_path / "old.nemo")
    assert info["frontend"] == "nemo24" and again.config == model.config


def test_word_piece_models_are_exported_as_bpe_models_not_character_models(imported, tmp_path):
    from dataclasses import replace

    from interop.nemo import BPE_TARGET
    from model.recognizer import SpeechRecognizer
    from model.vocabulary import Vocabulary

    model, _ = imported[MODELS[0]]
    labels = tuple(f"\u2581w{i}" for i in range(len(model.vocabulary.labels)))
    pieces = SpeechRecognizer(replace(model.config, vocabulary=Vocabulary(labels)))
    export_nemo(pieces, tmp_path / "pieces.nemo")
    with tarfile.open(tmp_path / "pieces.nemo") as tar:
        config = yaml.safe_load(tar.extractfile(f"./{CONFIG_MEMBER}").read())
    assert config["target"] == BPE_TARGET and "labels" not in config
    assert config["decoder"]["vocabulary"] == [*labels, "<unk>"]  # SentencePiece needs one; never emitted


def test_self_conditioned_models_are_not_exported(imported, tmp_path):
    from dataclasses import replace

    from model.recognizer import SpeechRecognizer

    model, _ = imported[MODELS[0]]
    conditioned = replace(model.config.network, self_conditioning=(1,))
    with pytest.raises(NemoImportError, match="self-condition"):
        export_nemo(SpeechRecognizer(replace(model.config, network=conditioned)), tmp_path / "sc.nemo")
    assert not (tmp_path / "sc.nemo").exists()


def test_cli_export_then_import(cli_registry, tmp_path):
    out = tmp_path / "exported.nemo"
    result = asr_in_process("--registry", cli_registry, "models", "export-nemo", "quartznet_small", "--out", out)
    assert result.returncode == 0, result.stderr
    registry = tmp_path / "registry"
    result = asr_in_process("--registry", registry, "models", "import-nemo", out, "--name", "roundtrip")
    assert (result.returncode, result.stdout.strip()) == (0, "roundtrip@1")
    original = (cli_registry / "quartznet_small" / "1" / "model.safetensors").read_bytes()
    assert (registry / "roundtrip" / "1" / "model.safetensors").read_bytes() == original


def test_gzip_compressed_archive_imports(imported, tmp_path):
    # NeMo wrote tar.gz archives before 2022.
    path = tmp_path / "old.nemo"
    with tarfile.open(FIXTURES / "quartznet_small.nemo") as src, tarfile.open(path, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    model, _ = import_nemo(path)
    for key, value in imported["quartznet_small"][0].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ---- refusals ----


def _fixture_parts(name: str = "quartznet_small") -> tuple[dict, bytes]:
    with tarfile.open(FIXTURES / f"{name}.nemo") as tar:
        config = yaml.safe_load(tar.extractfile(f"./{CONFIG_MEMBER}").read())
        weights = tar.extractfile(f"./{WEIGHTS_MEMBER}").read()
    return config, weights


def _write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _modified_copy(path: Path, edit) -> Path:
    config, weights = _fixture_parts()
    config = copy.deepcopy(config)
    edit(config)
    return _write_archive(path, {CONFIG_MEMBER: yaml.safe_dump(config).encode(), WEIGHTS_MEMBER: weights})


def _wordpiece_tokenizer(c):
    c["tokenizer"] = {"dir": "tokenizer_wpe_v128", "type": "wpe"}


def _stride_every_sub_block(c):
    c["encoder"]["jasper"][1]["stride"] = [2]  # repeat 2 without stride_last: NeMo strides both


def _strided_residual_add(c):
    c["encoder"]["jasper"][1].update(stride=[2], stride_last=True)  # residual_mode stays "add"


def _conformer(c):
    c["encoder"]["_target_"] = "nemo.collections.asr.modules.ConformerEncoder"


def _swish(c):
    c["encoder"]["activation"] = "swish"


def _word_pieces(c):
    c["decoder"]["vocabulary"] = ["\u2581the"] + c["decoder"]["vocabulary"][1:]


def _no_preprocessor(c):
    del c["preprocessor"]


def _mfcc(c):
    c["preprocessor"]["_target_"] = "nemo.collections.asr.modules.AudioToMFCCPreprocessor"


UNSUPPORTED = {
    "wordpiece-tokenizer": (_wordpiece_tokenizer, "wpe"),
    "stride-every-sub-block": (_stride_every_sub_block, "every repeated sub-block"),
    "strided-residual-add": (_strided_residual_add, "residual_mode 'add'"),
    "conformer": (_conformer, "ConformerEncoder"),
    "swish": (_swish, "swish"),
    "word-pieces": (_word_pieces, "multi-character labels"),
    "no-preprocessor": (_no_preprocessor, "preprocessor"),
    "mfcc": (_mfcc, "AudioToMFCCPreprocessor"),
}


def _assert_refused(path: Path, registry: Path, fragment: str, match: str | None = None) -> str:
    """import_nemo raises NemoImportError naming ``fragment``; `asr models import-nemo` exits 2 in one line
    and publishes nothing. Returns the error message."""
    with pytest.raises(NemoImportError, match=match) as excinfo:
        import_nemo(path)
    assert fragment in str(excinfo.value)
    asr_in_process("--registry", registry, "models", "import-nemo", path, "--name", "x").assert_one_line_error(fragment)
    assert not (registry / "x").exists()  # nothing half-published
    return str(excinfo.value)


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_configs_are_refused_naming_the_feature(case, tmp_path):
    edit, fragment = UNSUPPORTED[case]
    path = _modified_copy(tmp_path / f"{case}.nemo", edit)
    _assert_refused(path, tmp_path / "registry", fragment, match="unsupported NeMo config")


def _not_a_tar(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(5_000))
    return path


def _no_config(path: Path) -> Path:
    return _write_archive(path, {WEIGHTS_MEMBER: _fixture_parts()[1]})


def _no_weights(path: Path) -> Path:
    return _write_archive(path, {CONFIG_MEMBER: yaml.safe_dump(_fixture_parts()[0]).encode()})


def _not_yaml(path: Path) -> Path:
    return _write_archive(path, {CONFIG_MEMBER: b"encoder: [unclosed\n", WEIGHTS_MEMBER: _fixture_parts()[1]})


def _not_torch(path: Path) -> Path:
    return _write_archive(path, {CONFIG_MEMBER: yaml.safe_dump(_fixture_parts()[0]).encode(),
                                 WEIGHTS_MEMBER: b"not a torch checkpoint"})


def _wrong_shape(path: Path) -> Path:
    return _modified_copy(path, lambda c: c["encoder"]["jasper"][1].update(filters=40))


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _bpe_without_tokenizer(path: Path) -> Path:
    return _modified_copy(path, lambda c: c.update(tokenizer={"dir": "tokenizer_spe_bpe_v128", "type": "bpe"}))


def _se_without_weights(path: Path) -> Path:
    return _modified_copy(path, lambda c: c["encoder"]["jasper"][1].update(se=True))


BROKEN = {
    "not-a-tar": (_not_a_tar, "unreadable .nemo archive"),
    "empty-file": (_empty, "unreadable .nemo archive"),
    "tar-without-config": (_no_config, f"no {CONFIG_MEMBER} inside"),
    "tar-without-weights": (_no_weights, f"no {WEIGHTS_MEMBER} inside"),
    "invalid-yaml": (_not_yaml, f"invalid {CONFIG_MEMBER}"),
    "weights-not-torch": (_not_torch, WEIGHTS_MEMBER),
    "weights-wrong-shape": (_wrong_shape, "encoder.encoder.1"),
    "bpe-without-tokenizer": (_bpe_without_tokenizer, "without its tokenizer"),
    "se-without-weights": (_se_without_weights, "encoder.encoder.1.mconv.8.fc"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_archives_are_refused(case, tmp_path):
    make, fragment = BROKEN[case]
    path = make(tmp_path / f"{case}.nemo")
    message = _assert_refused(path, tmp_path / "registry", fragment)
    assert str(path) in message and "\n" not in message


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(NemoImportError, match="file not found"):
        import_nemo(tmp_path / "nope.nemo")
    asr_in_process("--registry", tmp_path, "models", "import-nemo", tmp_path / "nope.nemo", "--name", "x"
                   ).assert_one_line_error("nope.nemo", "not found")


def _missing_filters(c):
    del c["encoder"]["jasper"][1]["filters"]


def _stride_and_dilation(c):
    c["encoder"]["jasper"][0]["dilation"] = [2]


def _block_not_a_mapping(c):
    c["encoder"]["jasper"][0] = "filters: 32"


def _duplicate_label(c):
    c["decoder"]["vocabulary"][-1] = " "


# Malformed configs must surface as NemoImportError (exit code 2), never KeyError/ValueError.
@pytest.mark.parametrize("edit", [_missing_filters, _stride_and_dilation, _block_not_a_mapping, _duplicate_label],
                         ids=lambda f: f.__name__.strip("_"))
def test_malformed_block_configs_are_refused_cleanly(edit, tmp_path):
    path = _modified_copy(tmp_path / "bad.nemo", edit)
    try:
        import_nemo(path)
    except NemoImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - the point is which type escapes
        raise AssertionError(f"{type(exc).__name__} escaped import_nemo: {exc}") from None
    else:
        raise AssertionError("malformed config was accepted")
