"""Model cards: what a registry version was trained on, which words it knows, and how well it does.

A version may store a card in its metadata (``extra.card``, written when it is published); every
field it leaves out is derived from the rest of the metadata and the artifact's config: the
training manifests, the vocabulary (for word-piece models, the whole words it can emit), and the
measured WERs. Serving shows the card (``/v1/models``, ``ListModels``, the web page), so a user
learns what a model can recognise before sending it audio it was never meant for.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

CARD_KEY = "card"
_WORD_START = "\u2581"
_MAX_LISTED_WORDS = 40


def vocabulary_summary(labels: list[str]) -> dict[str, Any]:
    """How a label set reads to a person: characters (open vocabulary) or a closed list of words."""
    words = [label[1:] for label in labels if label.startswith(_WORD_START) and len(label) > 2]
    subwords = [label for label in labels if not label.startswith((_WORD_START, "<")) and len(label) > 1]
    if subwords:  # a SentencePiece vocabulary (a NeMo BPE model's): its whole-word pieces are no word list
        return {"kind": "word pieces", "size": len(labels),
                "description": f"{len(labels)} SentencePiece word pieces: spells any word its pieces cover "
                               "(open vocabulary)"}
    if not words:
        return {"kind": "characters", "size": len(labels),
                "description": f"{len(labels)} characters: spells any word (open vocabulary)"}
    return {"kind": "word pieces", "size": len(labels), "words": words,
            "description": f"{len(words)} whole words ({', '.join(words[:_MAX_LISTED_WORDS])}"
                           f"{', ...' if len(words) > _MAX_LISTED_WORDS else ''}) plus single letters that "
                           "spell other words"}


def model_card(metadata: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The card of a version: its stored card, completed from its metadata and config.json."""
    extra = metadata.get("extra") or {}
    stored = dict(extra.get(CARD_KEY) or {})
    labels = config.get("vocabulary") or (config.get("ensemble") or [{}])[0].get("vocabulary") or []
    manifests = extra.get("train_manifests") or []
    metrics = metadata.get("metrics") or {}
    card = {
        "summary": stored.get("summary") or f"{metadata.get('name', 'model')}@{metadata.get('version', '?')}: "
                                              f"{metadata.get('source', 'trained')} model",
        "trained_on": stored.get("trained_on") or [PurePath(m).stem for m in manifests],
        "vocabulary": vocabulary_summary(list(labels)),
        "measured_wer": stored.get("measured_wer") or {k: round(v, 4) for k, v in metrics.items()
                                                         if k.endswith("wer") and isinstance(v, (int, float))},
    }
    for key in ("recognises", "not_for", "general_english", "source", "license", "published_wer"):
        if key in stored:
            card[key] = stored[key]
    return card
