"""The `asr` command: models, transcription, evaluation, training, language models and serving.

Usage:
    asr models presets [--json]
    asr models list [--json]
    asr models import-nemo FILE.nemo --name NAME
    asr models ensemble MEMBER... --name NAME [--speeds 0.95 1.0 1.05] [--fp16]
    asr models export NAME[@VERSION] --format onnx|nemo --out FILE
    asr transcribe AUDIO... [--model NAME[@VERSION]] [--json] [--decoder beam [--lm NAME]] [--precision P]
    asr eval --manifest M.json [--model ...] [--json]
    asr logprobs AUDIO --model NAME[@VERSION] --out FILE.npy [--precision fp32]
    asr bench [--model NAME[@VERSION]] [--batch-size N] [--clip-seconds S] [--threads N] [--precision P] [--json]
    asr train CONFIG.yaml [--set key=value ...] [--plot curve.png]
    asr lm build TEXT_OR_MANIFEST --order N --name NAME [--prune 0 1 1]
    asr serve [--port 8000] [--grpc-port 50051] [--model NAME]

Expected failures (bad audio, unknown model, bad config) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL_ENV = "ASR_DEFAULT_MODEL"
STARTER_MODEL = "an4-quartznet"


class UsageError(Exception):
    """A user mistake the CLI reports in one line with exit code 2."""


def _default_model() -> str:
    return os.environ.get(DEFAULT_MODEL_ENV, STARTER_MODEL)


def _registry(args):
    from model.registry import Registry

    return Registry(args.registry)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


# ---- models ----


def cmd_models_presets(args) -> int:
    import torch

    from model.quartznet import PRESETS, QuartzNet, count_parameters

    rows = []
    for name, factory in PRESETS.items():
        with torch.device("meta"):  # Jasper has 333M parameters: count them without allocating
            rows.append({"name": name, "parameters": count_parameters(QuartzNet(factory()))})
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(f"{row['name']:<16} {row['parameters']:>13,}")
    return 0


def cmd_models_list(args) -> int:
    rows = _registry(args).list()
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"(registry {args.registry or 'default'} is empty)")
    for row in rows:
        wer = (row.get("metrics") or {}).get("val_wer") or (row.get("metrics") or {}).get("test_wer")
        extra = f" WER {wer * 100:.2f}%" if isinstance(wer, (int, float)) else ""
        print(f"{row['name']}@{row['version']:<4} {row.get('kind', '?'):<6} {row.get('source', '?'):<9} "
              f"{row.get('created_at', row.get('error', ''))}{extra}")
    return 0


def cmd_models_import_nemo(args) -> int:
    from interop.nemo import import_nemo
    from model.checkpoint import publish_model

    model, info = import_nemo(Path(args.file), frontend=args.frontend)
    ref = publish_model(_registry(args), args.name, model, source="imported", extra={"nemo": info})
    print(str(ref))
    return 0


def cmd_models_ensemble(args) -> int:
    import torch

    from model.checkpoint import load_model, publish_model
    from model.ensemble import EnsembleRecognizer
    from model.recognizer import SpeechRecognizer

    registry = _registry(args)
    members, refs = [], []
    for spec in args.members:
        model, ref, _ = load_model(registry, spec)
        if not isinstance(model, SpeechRecognizer):
            raise UsageError(f"{ref} is an ensemble itself; list its members instead")
        members.append(model)
        refs.append(str(ref))
    try:
        ensemble = EnsembleRecognizer.of(members, args.speeds)
    except ValueError as exc:  # one member and no other speed, or members that cannot be combined
        raise UsageError(str(exc)) from None
    ref = publish_model(registry, args.name, ensemble, source="ensemble",
                        extra={"members": refs, "speeds": list(ensemble.config.speeds)},
                        dtype=torch.float16 if args.fp16 else torch.float32)
    print(str(ref))
    return 0


def cmd_models_export(args) -> int:
    from model.checkpoint import load_model

    model, ref, _ = load_model(_registry(args), args.model)
    if args.format == "onnx":
        from interop.onnx import export_onnx

        export_onnx(model, Path(args.out))
    else:
        from interop.nemo import export_nemo

        export_nemo(model, Path(args.out))
    print(f"{ref} -> {args.out}")
    return 0


def cmd_models_export_nemo(args) -> int:
    from interop.nemo import export_nemo
    from model.checkpoint import load_model

    model, ref, _ = load_model(_registry(args), args.model)
    export_nemo(model, Path(args.out))
    print(f"{ref} -> {args.out}")
    return 0


# ---- inference ----


def _load(args):
    """The inference form of the requested model at ``--precision`` on ``--device``, and its registry ref."""
    from model.checkpoint import load_model
    from model.inference import for_inference
    from model.precision import check_device, resolve_precision

    device = check_device(args.device)
    precision = resolve_precision(args.precision, device)  # before loading: a bad choice fails fast
    model, ref, _ = load_model(_registry(args), args.model or _default_model())
    return for_inference(model, precision, device), ref


def _check_audio_args(paths: list[str]) -> None:
    for path in paths:
        if not Path(path).exists():
            raise UsageError(f"{path}: file not found")


def _check_decoder_args(args) -> None:
    """Options argparse cannot range-check, refused before any model loads."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.decoder == "beam" and args.beam_width < 1:
        raise UsageError(f"--beam-width must be at least 1, got {args.beam_width}")


def cmd_transcribe(args) -> int:
    from cli.inference import decode_files

    _check_audio_args(args.audio)
    _check_decoder_args(args)
    model, ref = _load(args)
    results = decode_files(model, args.audio, args, _registry(args), ref.path, batch_size=args.batch_size)
    if args.json:
        _print_json({"model": str(ref), "decoder": args.decoder, "results": results})
    else:
        for item in results:
            print(item["text"] if len(results) == 1 else f"{item['file']}\t{item['text']}")
    return 0


def cmd_eval(args) -> int:
    from cli.evaluate import evaluate_manifest

    _check_decoder_args(args)
    model, ref = _load(args)
    report = evaluate_manifest(model, Path(args.manifest), args, _registry(args), ref.path)
    report["model"] = str(ref)
    if args.json:
        _print_json(report)
    else:
        print(f"{ref} on {args.manifest} ({report['num_utterances']} utterances, decoder {args.decoder}): "
              f"WER {report['wer'] * 100:.2f}%  CER {report['cer'] * 100:.2f}%"
              + (f"  ({report['num_skipped']} skipped)" if report["num_skipped"] else ""))
    return 0


def cmd_logprobs(args) -> int:
    import numpy as np

    from cli.inference import decode_clip

    _check_audio_args([args.audio])
    model, _ = _load(args)
    audio = decode_clip(args.audio, model.sample_rate)
    log_probs = model.log_probs_batch([audio.samples])[0].astype(np.float32)
    np.save(args.out, log_probs)
    views = f"{log_probs.shape[1]} views x " if log_probs.ndim == 3 else ""  # an ensemble
    print(f"{args.out}: {log_probs.shape[0]} frames x {views}{log_probs.shape[-1]} classes")
    return 0


def cmd_bench(args) -> int:
    import torch

    from cli.bench import MAX_CLIP_SECONDS, MIN_RUNS, bench_report

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0 < args.clip_seconds <= MAX_CLIP_SECONDS:
        raise UsageError(f"--clip-seconds must be in (0, {MAX_CLIP_SECONDS:.0f}], got {args.clip_seconds}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.runs < MIN_RUNS:
        raise UsageError(f"--runs must be at least {MIN_RUNS} (the median needs them), got {args.runs}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, ref = _load(args)
    report = bench_report(model, ref, batch_size=args.batch_size, clip_seconds=args.clip_seconds,
                          threads=torch.get_num_threads(), precision=model.precision, device=args.device,
                          runs=args.runs)
    if args.json:
        _print_json(report)
    else:
        print(f"{ref} {report['precision']} on {report['device']} ({report['cpu']}, {report['threads']} threads), "
              f"{args.batch_size} x {args.clip_seconds:g} s: {report['x_realtime']:.1f}x real time, "
              f"{report['ms_per_batch']:.1f} ms per batch (median of {args.runs})")
    return 0


# ---- training and language models ----


def cmd_train(args) -> int:
    from training.config import load_config

    cfg = load_config(args.config, args.set or [])  # before the heavy imports: bad configs fail fast
    from training.plot import plot_metrics
    from training.trainer import run_training

    if args.registry:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"registry": args.registry})})
    ref, summary = run_training(cfg, run_name=args.run_name)
    if args.plot:
        plot_metrics(Path(cfg.run.output_dir) / "metrics.jsonl", Path(args.plot))
    print(json.dumps(summary, default=str))
    return 0 if ref is not None else 1


def cmd_lm_build(args) -> int:
    from lm.store import publish_lm
    from model.vocabulary import ENGLISH_LABELS

    source = Path(args.source)
    if not source.is_file():
        raise UsageError(f"{source}: file not found")
    labels = ENGLISH_LABELS
    if args.model:
        from model.checkpoint import load_model

        labels = load_model(_registry(args), args.model)[0].vocabulary.labels
    ref = publish_lm(_registry(args), args.name, source, order=args.order, prune=args.prune, labels=labels)
    print(str(ref))
    return 0


def cmd_serve(args) -> int:
    from service.server import config_from_args, run_server

    return int(run_server(config_from_args(args)) or 0)


# ---- parser ----


def _add_decoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"NAME[@VERSION] (default ${DEFAULT_MODEL_ENV} or {STARTER_MODEL})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--lm", help="LM registry NAME[@VERSION] (default: the LM recorded with the model)")
    parser.add_argument("--beam-width", type=int, default=64)
    parser.add_argument("--alpha", type=float, help="LM weight (default: the model's tuned value)")
    parser.add_argument("--beta", type=float, help="word insertion bonus (default: the model's tuned value)")
    parser.add_argument("--batch-size", type=int, default=8)
    _add_precision_arg(parser, "auto")


def _add_precision_arg(parser: argparse.ArgumentParser, default: str) -> None:
    from model.precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help=f"inference precision (default {default}; auto = bf16 on CUDA and on CPUs with "
                             "native bf16, else fp32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="QuartzNet speech recognition: train, publish, serve.")
    parser.add_argument("--registry", default=None, help="model registry folder (default $ASR_REGISTRY or ./registry)")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model presets and the registry").add_subparsers(dest="models_cmd",
                                                                                         required=True)
    p = models.add_parser("presets", help="named architectures and their parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_presets)
    p = models.add_parser("list", help="every version in the registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("import-nemo", help="import a NeMo .nemo checkpoint as a registry version")
    p.add_argument("file")
    p.add_argument("--name", required=True)
    p.add_argument("--frontend", choices=("nemo25", "nemo24"),
                   help="front-end behaviour (default: from the file's nemo_version)")
    p.set_defaults(func=cmd_models_import_nemo)
    p = models.add_parser("ensemble", help="publish registry versions, each heard at one or more input speeds, "
                                           "as one ensemble model (same vocabulary)")
    p.add_argument("members", nargs="+", help="NAME[@VERSION] of each member")
    p.add_argument("--name", required=True)
    p.add_argument("--speeds", nargs="+", type=float, default=[1.0],
                   help="input speeds every member hears, 1.0 included (test-time augmentation; default 1.0)")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size)")
    p.set_defaults(func=cmd_models_ensemble)
    p = models.add_parser("export", help="write a registry version as ONNX (features in, log-probs out; "
                                         "dynamic batch and time) or as a .nemo file")
    p.add_argument("model")
    p.add_argument("--format", choices=("onnx", "nemo"), required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_models_export)
    p = models.add_parser("export-nemo", help="write a registry version as a .nemo file")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_models_export_nemo)

    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument("audio", nargs="+")
    p.add_argument("--json", action="store_true", help="JSON with word times and confidences")
    _add_decoder_args(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("eval", help="WER/CER against a NeMo manifest")
    p.add_argument("--manifest", required=True)
    p.add_argument("--json", action="store_true")
    _add_decoder_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("logprobs", help="raw float32 CTC log-probabilities [T, V+1] of one file ([T, K, V+1] "
                                        "for an ensemble of K views)")
    p.add_argument("audio")
    p.add_argument("--model", help="NAME[@VERSION]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    _add_precision_arg(p, "fp32")
    p.set_defaults(func=cmd_logprobs)

    p = sub.add_parser("bench", help="time a model on this machine: front end, network and greedy decode, "
                                     "as the service runs them")
    p.add_argument("--model", help=f"NAME[@VERSION] (default ${DEFAULT_MODEL_ENV} or {STARTER_MODEL})")
    p.add_argument("--batch-size", type=int, default=1, help="clips per batch (default 1)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="length of each synthetic clip (default 10)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runs", type=int, default=10, help="timed runs after 2 warm-up runs; the median is reported")
    p.add_argument("--json", action="store_true")
    _add_precision_arg(p, "auto")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train with Ray Train and publish the best model")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--run-name", default=None, help="Ray run name; the same name resumes a killed run")
    p.add_argument("--plot", help="write loss/WER curves to this PNG")
    p.set_defaults(func=cmd_train)

    lm = sub.add_parser("lm", help="n-gram language models").add_subparsers(dest="lm_cmd", required=True)
    p = lm.add_parser("build", help="build a KenLM model from text or a manifest and publish it")
    p.add_argument("source", help="plain text (one sentence per line) or a NeMo manifest")
    p.add_argument("--order", type=int, default=4)
    p.add_argument("--name", required=True)
    p.add_argument("--prune", type=int, nargs="*", default=None, help="lmplz --prune thresholds, e.g. 0 1 1")
    p.add_argument("--model", help="take the vocabulary from this model (default: English letters)")
    p.set_defaults(func=cmd_lm_build)

    p = sub.add_parser("serve", help="start the REST + gRPC server")
    try:
        from service.server import add_serve_arguments

        add_serve_arguments(p)
        p.set_defaults(func=cmd_serve)
    except ImportError as exc:  # a train-only install: say what is missing instead of hiding the command
        p.set_defaults(func=_missing_extra("serve", exc))

    try:
        from client.cli import add_client_arguments

        add_client_arguments(sub)
    except ImportError as exc:
        p = sub.add_parser("client", help="REST/gRPC client (needs the serve extra)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_missing_extra("serve", exc))
    return parser


def _missing_extra(extra: str, exc: ImportError):
    def fail(args) -> int:
        raise UsageError(f"this command needs the '{extra}' extra: pip install -e '.[{extra}]' ({exc})")

    return fail


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug; imported lazily to keep startup fast."""
    from model.audio import AudioError
    from model.precision import PrecisionError
    from model.registry import RegistryError

    errors: list[type[BaseException]] = [UsageError, AudioError, RegistryError, FileNotFoundError, PrecisionError]
    for module, name in (("interop.nemo", "NemoImportError"), ("interop.onnx", "OnnxExportError"), ("training.config", "ConfigError"),
                         ("training.trainer", "TrainingError"), ("lm.kenlm_tools", "LMBuildError"),
                         ("lm.kenlm_tools", "KenLMNotFoundError"), ("cli.evaluate", "ManifestError"),
                         ("training.datasets", "DataError"), ("pydantic", "ValidationError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("asr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the CLI's contract is one line, never a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, _expected_errors()):
            print(f"asr: error: {message}", file=sys.stderr)
            return 2
        print(f"asr: internal error: {type(exc).__name__}: {message} (set ASR_DEBUG=1 for a traceback)",
              file=sys.stderr)
        if os.environ.get("ASR_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
