"""publish_lm / load_lm_files round trips through a temporary model registry."""

from __future__ import annotations

import json
from pathlib import Path

import kenlm
import pytest

registry_mod = pytest.importorskip("model.registry", reason="model/registry.py is not importable yet")

from lm.beam import BeamDecoder  # noqa: E402
from lm.kenlm_tools import LMBuildError  # noqa: E402
from lm.store import load_lm_files, publish_lm  # noqa: E402
from tests.lm.helpers import CORPUS, LABELS, make_log_probs, spell  # noqa: E402


@pytest.fixture
def registry(tmp_path: Path):
    return registry_mod.Registry(tmp_path / "registry")


def test_publish_and_load_plain_text(kenlm_tools, registry, corpus_file: Path) -> None:
    ref = publish_lm(registry, "tiny-lm", corpus_file, order=3, prune=None, labels=LABELS)
    assert (ref.name, ref.version) == ("tiny-lm", 1)

    binary, unigrams, meta = load_lm_files(registry, "tiny-lm@latest")
    assert binary == ref.path / "lm.binary"
    assert unigrams == sorted({w for line in CORPUS for w in line.split()})
    assert meta["kind"] == "lm"
    assert set(meta["files"]) == {"lm.binary", "unigrams.txt"}
    extra = meta["extra"]
    assert extra["order"] == 3 and extra["prune"] == [] and extra["num_sentences"] == len(CORPUS)
    assert extra["labels"] == list(LABELS)

    model = kenlm.Model(str(binary))
    assert model.order == 3 and "cats" in model

    # the published LM drives the beam search like a freshly built one
    decoder = BeamDecoder(LABELS, binary, unigrams)
    log_probs = make_log_probs(spell([{"y": 0.9}, {"e": 0.9}, {"z": 0.55, "s": 0.40}]))
    assert decoder.decode(log_probs)[0].text == "yes"


def test_publish_from_nemo_manifest_normalises_text(kenlm_tools, registry, tmp_path: Path) -> None:
    manifest = tmp_path / "train_manifest.json"
    rows = [{"audio_filepath": f"a{i}.wav", "duration": 1.0, "text": text} for i, text in enumerate(
        ["Hello, World!", "It\u2019s a well-known world.", "", "HELLO again\u2026", "hello world"] * 3
    )]
    manifest.write_text("\n\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ref = publish_lm(registry, "manifest-lm", manifest, order=2, prune=[0, 1], labels=LABELS)
    _, unigrams, meta = load_lm_files(registry, f"manifest-lm@{ref.version}")
    assert unigrams == ["a", "again", "hello", "it's", "known", "well", "world"]
    assert meta["extra"]["num_sentences"] == 12  # the empty transcripts are skipped
    assert meta["extra"]["prune"] == [0, 1]


def test_second_publish_is_a_new_version(kenlm_tools, registry, corpus_file: Path) -> None:
    first = publish_lm(registry, "tiny-lm", corpus_file, 2, None, LABELS)
    corpus_file.write_text("one more sentence\n" + corpus_file.read_text(), encoding="utf-8")
    second = publish_lm(registry, "tiny-lm", corpus_file, 2, None, LABELS)
    assert (first.version, second.version) == (1, 2)
    assert "sentence" not in load_lm_files(registry, "tiny-lm@1")[1]
    assert "sentence" in load_lm_files(registry, "tiny-lm")[1]


def test_tampered_lm_is_refused(kenlm_tools, registry, corpus_file: Path) -> None:
    ref = publish_lm(registry, "tiny-lm", corpus_file, 2, None, LABELS)
    with open(ref.path / "unigrams.txt", "a", encoding="utf-8") as f:
        f.write("injected\n")
    with pytest.raises(registry_mod.IntegrityError, match="unigrams.txt"):
        load_lm_files(registry, "tiny-lm@1")


def test_acoustic_model_is_not_an_lm(registry) -> None:
    registry.publish("am", {"model.safetensors": b"x"}, kind="model")
    with pytest.raises(registry_mod.RegistryError, match="not a language model"):
        load_lm_files(registry, "am")


def test_bad_corpora(kenlm_tools, registry, tmp_path: Path) -> None:
    with pytest.raises(LMBuildError, match="not found"):
        publish_lm(registry, "x", tmp_path / "missing.txt", 3, None, LABELS)
    empty = tmp_path / "empty.txt"
    empty.write_text("123\n?!\n\n", encoding="utf-8")
    with pytest.raises(LMBuildError, match="no sentences"):
        publish_lm(registry, "x", empty, 3, None, LABELS)
    broken = tmp_path / "broken.json"
    broken.write_text('{"text": "fine"}\n{"duration": 1}\n', encoding="utf-8")
    with pytest.raises(LMBuildError, match=r"broken.json:2: .*'text'"):
        publish_lm(registry, "x", broken, 3, None, LABELS)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"fine line\n" * 2000 + b"caf\xe9\n")
    with pytest.raises(LMBuildError, match="not UTF-8"):
        publish_lm(registry, "x", latin1, 3, None, LABELS)
    assert registry.names() == []


def _arpa(tiny_lm, tmp_path: Path, *, upper: bool = False, gz: bool = False) -> Path:
    """The ARPA file the project's own tools built (lmplz), as it is, upper-cased (LibriSpeech's style) or gzipped."""
    import gzip

    text = tiny_lm.arpa_path.read_text(encoding="utf-8")
    if upper:
        text = "\n".join(line if line.startswith("\\") or "\t" not in line else
                         "\t".join(p.upper() if i == 1 else p for i, p in enumerate(line.split("\t")))
                         for line in text.split("\n")).replace("<S>", "<s>").replace("</S>", "</s>").replace(
            "<UNK>", "<unk>")
    path = tmp_path / ("lm.arpa.gz" if gz else "lm.arpa")
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("upper, gz", [(False, False), (True, True)])
def test_an_imported_arpa_decodes_like_the_built_lm(kenlm_tools, tiny_lm, registry, tmp_path, upper, gz) -> None:
    from lm.store import import_lm

    ref = import_lm(registry, "imported", _arpa(tiny_lm, tmp_path, upper=upper, gz=gz), LABELS)
    binary, unigrams, meta = load_lm_files(registry, str(ref))
    assert unigrams == tiny_lm.unigrams and meta["source"] == "imported" and meta["extra"]["order"] == 3
    imported, built = BeamDecoder(LABELS, binary, unigrams), BeamDecoder(LABELS, tiny_lm.binary_path, tiny_lm.unigrams)
    for frames in ([{"y": 0.9}, {"e": 0.9}, {"z": 0.55, "s": 0.40}], [{"t": 0.9}, {"u": 0.5, "w": 0.45}, {"o": 0.9}]):
        log_probs = make_log_probs(spell(frames))
        got, want = imported.decode(log_probs)[0], built.decode(log_probs)[0]
        assert (got.text, got.lm_score) == (want.text, want.lm_score)
    assert built.decode(make_log_probs(spell([{"y": 0.9}, {"e": 0.9}, {"z": 0.55, "s": 0.40}])))[0].text == "yes"


def test_a_file_that_is_not_an_arpa_lm_is_refused(kenlm_tools, registry, tmp_path) -> None:
    from lm.store import import_lm

    not_arpa = tmp_path / "notes.arpa"
    not_arpa.write_text("hello world\n")
    spelled_otherwise = tmp_path / "digits.arpa"
    spelled_otherwise.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<s>\t0\n-1\t</s>\n-1\t42\n\n\\end\\\n")
    for path, fragment in ((tmp_path / "missing.arpa", "not found"), (not_arpa, "not an ARPA file"),
                           (spelled_otherwise, "cannot be spelled")):
        with pytest.raises(LMBuildError, match=fragment):
            import_lm(registry, "bad", path, LABELS)
    assert registry.versions("bad") == []


def test_the_cli_imports_an_arpa_and_refuses_a_bad_one_in_one_line(kenlm_tools, tiny_lm, tmp_path) -> None:
    from tests.cli.helpers import asr_in_process

    root = tmp_path / "registry"
    result = asr_in_process("--registry", root, "lm", "import", _arpa(tiny_lm, tmp_path), "--name", "libri")
    assert result.returncode == 0 and result.stdout.strip() == "libri@1", result.stderr
    (tmp_path / "x.arpa").write_text("not an lm\n")
    asr_in_process("--registry", root, "lm", "import", tmp_path / "x.arpa", "--name", "libri"
                   ).assert_one_line_error("not an ARPA file")


def test_an_imported_kenlm_binary_decodes_like_the_built_lm(kenlm_tools, tiny_lm, registry, tmp_path) -> None:
    from lm.store import import_binary_lm

    words = tmp_path / "words.txt"
    words.write_text("".join(w + "\n" for w in tiny_lm.unigrams), encoding="utf-8")
    ref = import_binary_lm(registry, "binary", tiny_lm.binary_path, words, LABELS)
    binary, unigrams, meta = load_lm_files(registry, str(ref))
    assert unigrams == tiny_lm.unigrams and meta["extra"]["order"] == 3 and meta["source"] == "imported"
    imported, built = BeamDecoder(LABELS, binary, unigrams), BeamDecoder(LABELS, tiny_lm.binary_path, tiny_lm.unigrams)
    log_probs = make_log_probs(spell([{"y": 0.9}, {"e": 0.9}, {"z": 0.55, "s": 0.40}]))
    got, want = imported.decode(log_probs)[0], built.decode(log_probs)[0]
    assert (got.text, got.lm_score) == (want.text, want.lm_score) and got.text == "yes"


def test_a_kenlm_binary_with_a_foreign_word_list_or_upper_case_words_is_refused(kenlm_tools, tiny_lm, registry,
                                                                                  tmp_path) -> None:
    from lm.kenlm_tools import arpa_to_binary
    from lm.store import import_binary_lm

    foreign = tmp_path / "foreign.txt"
    foreign.write_text("alpha\nbravo\ncharlie\n")
    upper_words = tmp_path / "upper.txt"
    upper_words.write_text("".join(w.upper() + "\n" for w in tiny_lm.unigrams))
    upper_binary = arpa_to_binary(_arpa(tiny_lm, tmp_path, upper=True), tmp_path / "upper.bin")
    not_binary = tmp_path / "lm.bin"
    not_binary.write_bytes(b"\x00" * 64)
    for binary, words, fragment in ((tiny_lm.binary_path, foreign, "are not in the LM"),
                                    (upper_binary, upper_words, "import its ARPA file instead"),
                                    (not_binary, foreign, "not a KenLM binary")):
        with pytest.raises(LMBuildError, match=fragment):
            import_binary_lm(registry, "bad", binary, words, LABELS)
    assert registry.versions("bad") == []


def test_the_cli_imports_a_kenlm_binary_only_with_its_words(kenlm_tools, tiny_lm, tmp_path) -> None:
    from tests.cli.helpers import asr_in_process

    root = tmp_path / "registry"
    asr_in_process("--registry", root, "lm", "import", tiny_lm.binary_path, "--name", "libri"
                   ).assert_one_line_error("--words")
    words = tmp_path / "words.txt"
    words.write_text("".join(w + "\n" for w in tiny_lm.unigrams))
    result = asr_in_process("--registry", root, "lm", "import", tiny_lm.binary_path, "--words", words, "--name", "libri")
    assert result.returncode == 0 and result.stdout.strip() == "libri@1", result.stderr
