"""`asr eval`: WER/CER of a registry model on a NeMo manifest (jiwer), skipping and counting bad lines."""

from __future__ import annotations

import json
from pathlib import Path

from cli.inference import BatchDecoder, decode_clip
from model.audio import AudioError
from model.errors import ASRError
from model.recognizer import SpeechRecognizer
from training.metrics import word_char_error_rates


class ManifestError(ASRError, ValueError):
    """A manifest that cannot be evaluated at all (missing, or no usable line)."""

    code = "bad_manifest"


def read_eval_manifest(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(audio path, text) pairs with paths resolved against the manifest's folder, plus problems."""
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    items, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, text = row["audio_filepath"], row["text"]
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"line {number}: not a manifest entry ({exc})")
            continue
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        items.append((str(audio_path), str(text)))
    return items, problems


def evaluate_manifest(model: SpeechRecognizer, manifest: Path, args, registry, model_path) -> dict:
    """Decodes every readable utterance and scores corpus WER/CER."""
    items, problems = read_eval_manifest(manifest)
    clips, refs, names = [], [], []
    for audio_path, text in items:
        try:
            clips.append(decode_clip(audio_path, model.sample_rate).samples)
        except AudioError as exc:
            problems.append(str(exc))
            continue
        refs.append(model.vocabulary.normalize(text))
        names.append(audio_path)
    if not clips:
        raise ManifestError(f"{manifest}: no readable utterances ({len(problems)} problems; first: "
                            f"{problems[0] if problems else 'empty manifest'})")
    decoder = BatchDecoder(model, args, registry, model_path)
    hyps = [decoder(lp).text for lp in model.log_probs_sorted(clips, args.batch_size)]
    scores = word_char_error_rates(refs, hyps)
    if not scores["num_utterances"]:
        raise ManifestError(f"{manifest}: no utterance with a non-empty reference transcript")
    return {"manifest": str(manifest), "decoder": args.decoder, **scores,
            "num_skipped": len(problems), "problems": problems[:20],
            "hypotheses": [{"file": n, "ref": r, "hyp": h} for n, r, h in zip(names, refs, hyps)]
            if getattr(args, "json", False) else []}

