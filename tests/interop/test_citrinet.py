"""NeMo Citrinet (EncDecCTCModelBPE) interop: parity with NeMo 3.0.0, preset sizes, export, CLI and beam search."""

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
from interop.tokenizer import build_tokenizer, read_pieces
from lm.beam import BeamDecoder
from model.decoding import greedy_decode
from model.inference import for_inference
from model.presets import PRESETS
from model.quartznet import QuartzNet, count_parameters

from tests.cli.helpers import asr_in_process
from tests.interop.clips import fixture_clips

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemo"
NEMO_FILE = FIXTURES / "citrinet_small.nemo"
MANIFEST = json.loads((FIXTURES / "citrinet_manifest.json").read_text())
PRESET_COUNTS = json.loads((FIXTURES / "citrinet_presets.json").read_text())
PIECES = tuple(MANIFEST["tokenizer"]["pieces"])
CASES = MANIFEST["fixtures"]
# fp32 on both sides. The eager modules run NeMo's operations in NeMo's order and measure 0.0
# (bit-identical) on all three clips, alone and batched. The inference form folds BatchNorm in
# float64 and rounds once, sums SE means and products in another order: float32 rounding
# (2^-24 relative, ~6e-8) through 8 blocks of up to 3 sub-blocks, SE gates and a log-softmax
# over 97 columns adds up to a few 1e-6 on log-probs of magnitude ~5 (measured 6.7e-6). 1e-4
# leaves 15x headroom, while a masking or SE mistake moves log-probs by 1e-2 or more.
PARITY_ATOL = 1e-4


def _clip_id(case) -> str:
    return Path(case["clip"]).stem


@pytest.fixture(scope="module")
def imported():
    return import_nemo(NEMO_FILE)


@pytest.fixture(scope="module")
def clips(speech_root) -> dict[str, np.ndarray]:
    return fixture_clips(speech_root, CASES)


# ---- parity with NeMo ----


@pytest.mark.parametrize("form", ["eager", "inference"])
@pytest.mark.parametrize("case", CASES, ids=_clip_id)
def test_log_probs_match_nemo(case, form, imported, clips):
    model, info = imported
    assert info["tokenizer"] == "bpe" and info["nemo_target"].endswith("EncDecCTCModelBPE")
    if form == "inference":
        model = for_inference(model, "fp32")
    expected = np.load(FIXTURES / case["npy"])
    got = model.log_probs_batch([clips[case["clip"]]])[0]
    assert got.shape == expected.shape == tuple(case["shape"]) == (case["encoded_len"], len(PIECES) + 1)
    assert float(np.abs(got - expected).max()) <= PARITY_ATOL
    # Greedy BPE decoding: CTC collapse on token ids, then the pieces joined, as NeMo's tokenizer does.
    assert model.transcribe([clips[case["clip"]]])[0].text == case["greedy_transcript"] == case["transcribe_text"]


@pytest.mark.parametrize("form", ["eager", "inference"])
def test_a_padded_batch_matches_nemos_batch(form, imported, clips):
    model = imported[0] if form == "eager" else for_inference(imported[0], "fp32")
    got = model.log_probs_batch([clips[case["clip"]] for case in CASES])
    for case, rows in zip(CASES, got):
        expected = np.load(FIXTURES / MANIFEST["batch"][case["clip"]]["npy"])
        assert rows.shape == expected.shape
        assert float(np.abs(rows - expected).max()) <= PARITY_ATOL


def test_the_parity_test_would_catch_unmasked_squeeze_excitation(imported, clips, monkeypatch):
    """NeMo pads the features to a multiple of 16 frames, so even one clip has padding for SE's mean."""
    import model.quartznet as quartznet

    model = copy.deepcopy(imported[0])
    case = CASES[0]
    monkeypatch.setattr(quartznet.SqueezeExcite, "_pool", lambda se, x, n: x.mean(dim=-1, keepdim=True))
    got = model.log_probs_batch([clips[case["clip"]]])[0]
    assert float(np.abs(got - np.load(FIXTURES / case["npy"])).max()) > 1e-2


def test_imported_structure_matches_nemos(imported):
    model, info = imported
    expected = MANIFEST["model"]
    assert info["ignored_keys"] == []
    assert model.vocabulary.labels == PIECES and model.network.blank_id == MANIFEST["blank_index"] == len(PIECES)
    assert len(model.state_dict()) == expected["num_state_dict_entries"]
    assert sum(p.numel() for p in model.network.parameters()) == expected["num_parameters"]
    assert model.config.network.subsampling == expected["subsampling_factor"] == 8
    assert model.frame_duration_s == pytest.approx(0.08)
    assert model.config.features.num_mels == 80 and model.config.features.win_length == 400
    assert _block_table(model.config.network) == _nemo_table(expected["built_blocks"])


def _block_table(network) -> list[tuple]:
    """(filters, repeat, kernel, per-sub-block strides, SE hidden units, residual stride) per block."""
    return [(b.filters, b.repeat, b.kernel, [b.stride_of(i) for i in range(b.repeat)],
             b.filters // b.se_reduction_ratio if b.se else None, b.stride if b.residual else None)
            for b in network.blocks]


def _nemo_table(built: list[dict]) -> list[tuple]:
    return [(b["filters"], b["repeat"], b["kernel"], b["strides"], b["se_hidden"], b["residual_stride"])
            for b in built]


# ---- presets: NeMo's own counts and block tables ----


@pytest.mark.parametrize("name", sorted(PRESET_COUNTS["presets"]))
def test_citrinet_presets_have_nemos_parameter_counts_and_blocks(name):
    nemo = PRESET_COUNTS["presets"][name]
    config = PRESETS[name]()
    assert config.num_labels == PRESET_COUNTS["vocab_size"] == 1024
    with torch.device("meta"):  # Citrinet-1024 has 141M parameters: count them without allocating
        assert count_parameters(QuartzNet(config)) == nemo["num_parameters"]
    assert config.subsampling == nemo["subsampling_factor"] == 8
    assert _block_table(config) == _nemo_table(nemo["blocks"])
    assert [b.dropout for b in config.blocks] == [b["dropout"] for b in nemo["blocks"]]


def test_preset_counts_are_the_published_sizes():
    counts = {name: p["num_parameters"] for name, p in PRESET_COUNTS["presets"].items()}
    assert counts == {"citrinet_256": 10_259_729, "citrinet_512": 36_994_321, "citrinet_1024": 141_224_337}


# ---- export ----


def test_export_then_import_is_identical(imported, clips, tmp_path):
    model, _ = imported
    path = tmp_path / "citrinet.nemo"
    export_nemo(model, path)
    with tarfile.open(path) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        config = yaml.safe_load(tar.extractfile(members[CONFIG_MEMBER]).read())
        tokenizer = tar.extractfile(members["tokenizer.model"]).read()
    assert {CONFIG_MEMBER, WEIGHTS_MEMBER, "tokenizer.model", "vocab.txt", "tokenizer.vocab"} <= set(members)
    assert config["target"].endswith("EncDecCTCModelBPE") and "labels" not in config
    assert config["tokenizer"]["type"] == "bpe" and config["tokenizer"]["model_path"] == "nemo:tokenizer.model"
    assert config["decoder"]["vocabulary"] == list(PIECES)
    assert read_pieces(tokenizer) == PIECES
    again, info = import_nemo(path)
    assert again.config == model.config and info["tokenizer"] == "bpe"
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    clip = clips[CASES[0]["clip"]]
    assert np.array_equal(again.log_probs_batch([clip])[0], model.log_probs_batch([clip])[0])


def test_the_rebuilt_tokenizer_encodes_like_nemos():
    """A BPE tokenizer's scores are its merge order, so the piece order alone gives back its encoding."""
    import sentencepiece

    with tarfile.open(NEMO_FILE) as tar:
        original = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith("tokenizer.model"))
    ours, theirs = sentencepiece.SentencePieceProcessor(), sentencepiece.SentencePieceProcessor()
    ours.LoadFromSerializedProto(build_tokenizer(PIECES)["model_path"])
    theirs.LoadFromSerializedProto(original)
    for text in ("seven rubout enter", "twenty five oh", "sixty eight nine three", "Go Stop quit"):
        assert ours.encode(text) == theirs.encode(text), text


def test_word_pieces_without_unk_gain_one_class_that_never_wins(imported, clips, tmp_path):
    """SentencePiece vocabularies all have <unk>; pieces without one (the starter's) export with <unk> added
    just before the blank, its logit at -1e4: imported back, every other column's log-probs are unchanged to
    float32 rounding (exp(-1e4) is 0 in float32, so the softmax's sum is too) and <unk> is never emitted."""
    from dataclasses import replace

    from model.recognizer import SpeechRecognizer
    from model.vocabulary import Vocabulary

    model, _ = imported
    labels = tuple(p for p in PIECES if p != "<unk>")  # a vocabulary one class smaller
    network = replace(model.config.network, num_labels=len(labels))
    without = SpeechRecognizer(replace(model.config, network=network, vocabulary=Vocabulary(labels)))
    state = model.state_dict()
    unk = PIECES.index("<unk>")
    keep = [i for i in range(len(PIECES) + 1) if i != unk]  # every class but <unk>, blank last
    state["network.decoder.weight"] = state["network.decoder.weight"][keep]
    state["network.decoder.bias"] = state["network.decoder.bias"][keep]
    without.load_state_dict(state)
    without.eval()
    export_nemo(without, tmp_path / "x.nemo")
    again, _ = import_nemo(tmp_path / "x.nemo")
    again.eval()
    assert again.vocabulary.labels == (*labels, "<unk>")
    for case in CASES:
        clip = clips[case["clip"]]
        before, after = without.log_probs_batch([clip])[0], again.log_probs_batch([clip])[0]
        # The log-softmax sums one more (zero) term, in another order: float32 rounding of a sum of ~100 terms
        # of log-probs ~5 is a few 1e-7 (measured up to 1e-6 on the starter); a wrong row would move them by 1.
        np.testing.assert_allclose(np.delete(after, len(labels), axis=1), before, rtol=0, atol=1e-5)
        assert (after.argmax(axis=1) != len(labels)).all()


# ---- refusals specific to BPE models ----


def _rewritten(path: Path, edit_config=None, edit_tokenizer=None) -> Path:
    with tarfile.open(NEMO_FILE) as src, tarfile.open(path, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and member.name.endswith(CONFIG_MEMBER) and edit_config:
                config = yaml.safe_load(data)
                edit_config(config)
                data = yaml.safe_dump(config, allow_unicode=True).encode()
            if data is not None and member.name.endswith("tokenizer.model") and edit_tokenizer:
                data = edit_tokenizer(data)
            if data is not None:
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _swap_two_pieces(config):
    vocabulary = config["decoder"]["vocabulary"]
    vocabulary[1], vocabulary[2] = vocabulary[2], vocabulary[1]


REFUSED = {
    "vocabulary-mismatch": (dict(edit_config=_swap_two_pieces), "differs from the tokenizer"),
    "not-a-tokenizer": (dict(edit_tokenizer=lambda _: b"not a sentencepiece model"), "not a SentencePiece model"),
    "aggregate-tokenizer": (dict(edit_config=lambda c: c["tokenizer"].update(type="agg")), "'agg'"),
    "se-context-zero": (dict(edit_config=lambda c: c["encoder"]["jasper"][0].update(se_context_size=0)),
                        "se_context_size"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_bpe_archives_are_refused_in_one_line(case, tmp_path):
    edits, fragment = REFUSED[case]
    path = _rewritten(tmp_path / f"{case}.nemo", **edits)
    with pytest.raises(NemoImportError, match="unsupported NeMo config|malformed") as excinfo:
        import_nemo(path)
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)
    asr_in_process("--registry", tmp_path / "registry", "models", "import-nemo", path, "--name", "x"
                   ).assert_one_line_error(fragment)
    assert not (tmp_path / "registry" / "x").exists()


# ---- import -> registry -> `asr transcribe`, greedy and with a KenLM beam ----


@pytest.fixture(scope="module")
def cli_registry(tmp_path_factory, speech_root) -> Path:
    """The fixture imported as "citrinet"@1, and a word 3-gram of AN4 train normalised by its pieces."""
    root = tmp_path_factory.mktemp("citrinet_registry")
    result = asr_in_process("--registry", root, "models", "import-nemo", NEMO_FILE, "--name", "citrinet")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "citrinet@1", "")
    result = asr_in_process("--registry", root, "lm", "build", speech_root / "an4_train.json", "--order", "3",
                            "--name", "an4-words", "--model", "citrinet")
    assert result.returncode == 0, result.stderr
    return root


def _transcribe(registry: Path, speech_root: Path, *extra: str) -> list[dict]:
    paths = [str(speech_root / case["clip"]) for case in CASES]
    result = asr_in_process("--registry", registry, "transcribe", *paths, "--model", "citrinet", "--precision",
                            "fp32", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["results"]


def test_cli_transcribes_greedily_like_nemo(cli_registry, speech_root):
    rows = _transcribe(cli_registry, speech_root)
    assert [row["text"] for row in rows] == [case["greedy_transcript"] for case in CASES]
    for row in rows:  # word times from the pieces that start with "▁", in 80 ms frames
        assert [w["word"] for w in row["words"]] == row["text"].split()
        assert all(round(w["start"] / 0.08, 6).is_integer() and w["start"] < w["end"] for w in row["words"])


def test_cli_beam_search_with_a_kenlm_in_bpe_mode(cli_registry, speech_root):
    from lm.store import load_lm_files
    from model.registry import Registry

    rows = _transcribe(cli_registry, speech_root, "--decoder", "beam", "--lm", "an4-words", "--alpha", "2.0",
                       "--beta", "1.0")
    binary, unigrams, _ = load_lm_files(Registry(cli_registry), "an4-words")
    decoder = BeamDecoder(PIECES, binary, unigrams, alpha=2.0, beta=1.0)
    for row, case in zip(rows, CASES):
        # The same search over NeMo's own log-probs: the CLI's path is NeMo's numbers plus our decoder.
        assert row["text"] == decoder.decode(np.load(FIXTURES / case["npy"]))[0].text
        assert row["text"] != case["greedy_transcript"]  # the LM is in play
    known = set(unigrams)
    in_lm = [w in known for row in rows for w in row["text"].split()]
    greedy_in_lm = [w in known for case in CASES for w in case["greedy_transcript"].split()]
    assert np.mean(in_lm) > np.mean(greedy_in_lm)  # the LM pulls the words towards AN4's


def test_greedy_decode_of_nemos_log_probs_gives_nemos_text():
    for case in CASES:
        transcript = greedy_decode(np.load(FIXTURES / case["npy"]), PIECES, 0.08)
        assert transcript.text == case["greedy_transcript"]
