"""NVIDIA's English CTC checkpoints that the `.nemo` importer reads, and where `asr models pull` finds them.

Every figure is the publisher's, as read (2026-12) from the Hugging Face model cards, from the
NGC locations NeMo's own ``list_available_models()`` gives, and from NeMo's documentation score
tables where the NGC card was not available; ``wer_source`` says which, and ``None`` means the
sources read do not state it. Nothing here was measured by this project: no checkpoint was
downloaded (this machine has no route to the hubs). The importer was verified on NeMo-made
checkpoints of the same architectures (tests/fixtures/nemo, NeMo 3.0.0); see ``VERIFIED_HOW``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERIFIED_HOW = ("Verified here: the importer reproduces NeMo 3.0.0's log-probs (within 1e-4) on NeMo-made, "
                "random-weight QuartzNet, Jasper and Citrinet checkpoints of these architectures, pulled through "
                "loopback stand-ins for the Hub and NGC; none of the listed checkpoints was downloaded or "
                "evaluated here. WERs are the publishers' (LibriSpeech, %).")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    """The registry name a pull publishes under by default (the checkpoint's own name)."""
    title: str
    architecture: str
    pull: str
    """The source to give `asr models pull`."""
    also: tuple[str, ...] = ()
    """Other sources with the same file."""
    params_m: float | None = None
    size_mb: float | None = None
    license: str | None = None
    trained_on: tuple[str, ...] = ()
    tokenizer: str = ""
    published_wer: dict[str, float] = field(default_factory=dict)
    """LibriSpeech split -> WER %, e.g. librispeech_test_clean."""
    wer_source: str = ""
    note: str = ""


_CARD = "the model card (greedy decoding)"
_NEMO_SCORES = "NeMo's documentation score table (decoding not stated); the NGC card was not read"
_LS960 = ("LibriSpeech 960 h",)
_ASRSET = ("NeMo ASRSET: LibriSpeech 960 h, Fisher, Switchboard-1, WSJ-0, WSJ-1, National Speech Corpus",)


def _wer(dev_clean=None, dev_other=None, test_clean=None, test_other=None) -> dict[str, float]:
    named = {"librispeech_dev_clean": dev_clean, "librispeech_dev_other": dev_other,
             "librispeech_test_clean": test_clean, "librispeech_test_other": test_other}
    return {split: value for split, value in named.items() if value is not None}


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("stt_en_citrinet_256_ls", "Citrinet-256 (LibriSpeech)", "Citrinet-256, SentencePiece BPE",
                 "hf:nvidia/stt_en_citrinet_256_ls", params_m=10, size_mb=36.7, license="cc-by-4.0",
                 trained_on=_LS960, tokenizer="SentencePiece unigram, 256 pieces",
                 published_wer=_wer(test_clean=3.8, test_other=9.8), wer_source=_CARD,
                 note="the card's metadata says 3.78 / 9.6, its table 3.8 / 9.8"),
    CatalogEntry("stt_en_citrinet_512_ls", "Citrinet-512 (LibriSpeech)", "Citrinet-512, SentencePiece BPE",
                 "hf:nvidia/stt_en_citrinet_512_ls", params_m=36, size_mb=136, license="cc-by-4.0",
                 trained_on=_LS960, tokenizer="SentencePiece unigram",
                 published_wer=_wer(test_clean=3.1, test_other=7.8), wer_source=_CARD),
    CatalogEntry("stt_en_citrinet_1024_ls", "Citrinet-1024 (LibriSpeech)", "Citrinet-1024, SentencePiece BPE",
                 "hf:nvidia/stt_en_citrinet_1024_ls", params_m=140, license="cc-by-4.0", trained_on=_LS960,
                 tokenizer="SentencePiece unigram", published_wer=_wer(test_clean=2.5, test_other=6.3),
                 wer_source=_CARD,
                 note="its repository's main branch may hold no .nemo (a listing showed one only in an unmerged "
                      "pull request); the pull then says so"),
    CatalogEntry("stt_en_citrinet_1024_gamma_0_25", "Citrinet-1024, gamma 0.25 (NeMo ASRSET)",
                 "Citrinet-1024, SentencePiece BPE", "hf:nvidia/stt_en_citrinet_1024_gamma_0_25",
                 also=("ngc:nvidia/nemo/stt_en_citrinet_1024_gamma_0_25:1.0.0",), params_m=145, size_mb=484,
                 license="cc-by-4.0", trained_on=_ASRSET, tokenizer="SentencePiece unigram, 1024 pieces",
                 published_wer=_wer(test_clean=3.4, test_other=7.6), wer_source=_CARD),
    CatalogEntry("stt_en_citrinet_256", "Citrinet-256 (NeMo ASRSET)", "Citrinet-256, SentencePiece BPE",
                 "ngc:nvidia/nemo/stt_en_citrinet_256:1.0.0rc1", tokenizer="SentencePiece",
                 published_wer=_wer(4.2, 10.7, 4.4, 10.7), wer_source=_NEMO_SCORES),
    CatalogEntry("stt_en_citrinet_512", "Citrinet-512 (NeMo ASRSET)", "Citrinet-512, SentencePiece BPE",
                 "ngc:nvidia/nemo/stt_en_citrinet_512:1.0.0rc1", tokenizer="SentencePiece",
                 published_wer=_wer(3.7, 8.9, 3.7, 8.9), wer_source=_NEMO_SCORES),
    CatalogEntry("stt_en_citrinet_1024", "Citrinet-1024 (NeMo ASRSET)", "Citrinet-1024, SentencePiece BPE",
                 "ngc:nvidia/nemo/stt_en_citrinet_1024:1.0.0rc1", trained_on=_ASRSET, tokenizer="SentencePiece",
                 published_wer=_wer(3.7, 8.3, 3.6, 7.9), wer_source=_NEMO_SCORES),
    CatalogEntry("stt_en_quartznet15x5", "QuartzNet 15x5", "QuartzNet 15x5, characters",
                 "ngc:nvidia/nemo/stt_en_quartznet15x5:1.0.0rc1", params_m=18.9, tokenizer="characters",
                 published_wer=_wer(dev_clean=4.38, dev_other=11.3), wer_source=_NEMO_SCORES,
                 note="18.9 M is the architecture's count (NGC's QuartzNet 15x5 page)"),
    CatalogEntry("QuartzNet15x5Base-En", "QuartzNet 15x5 (NeMo 1.0 base)", "QuartzNet 15x5, characters",
                 "ngc:nvidia/nemospeechmodels:1.0.0a5:QuartzNet15x5Base-En.nemo", params_m=18.9,
                 trained_on=("LibriSpeech", "Mozilla Common Voice (en_1488h_2019-12-10)", "WSJ", "Fisher",
                             "Switchboard", "NSC Singapore English"),
                 tokenizer="characters", published_wer=_wer(dev_clean=3.79, dev_other=10.05),
                 wer_source="NeMo's description of the checkpoint (decoding not stated)"),
    CatalogEntry("stt_en_jasper10x5dr", "Jasper 10x5 DR", "Jasper 10x5 dense residual, characters",
                 "ngc:nvidia/nemo/stt_en_jasper10x5dr:1.0.0rc1", tokenizer="characters",
                 published_wer=_wer(dev_clean=3.74, dev_other=10.21), wer_source=_NEMO_SCORES),
)


def entry_for(source) -> CatalogEntry | None:
    """The catalog entry a pull source (interop.hubs.Source) points at, whatever revision it names."""
    for entry in CATALOG:
        for spec in (entry.pull, *entry.also):
            scheme, _, rest = spec.partition(":")
            repo = rest.split(":", 1)[0].split("@", 1)[0]
            if scheme == source.scheme and repo == source.repo:
                return entry
    return None
