"""The `asr` subcommands: each ``cmd_*`` takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from model.errors import ASRError

DEFAULT_MODEL_ENV = "ASR_DEFAULT_MODEL"
STARTER_MODEL = "an4-quartznet"


class UsageError(ASRError):
    """A user mistake the CLI reports in one line with exit code 2."""

    code = "usage"


def _default_model() -> str:
    """$ASR_DEFAULT_MODEL (else the starter); a hub source there (as a server takes it) names the registry model
    it is pulled as: the CLI never downloads unasked (`asr models pull` does)."""
    from interop.hubs import is_source, parse_source

    spec = os.environ.get(DEFAULT_MODEL_ENV, STARTER_MODEL)
    return parse_source(spec).default_name if is_source(spec) else spec


def _registry(args):
    from model.registry import Registry

    return Registry(args.registry)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


# ---- models ----


def cmd_models_presets(args) -> int:
    import torch

    from model.presets import PRESETS
    from model.quartznet import QuartzNet, count_parameters

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


def cmd_models_activate(args) -> int:
    """Records NAME@V as the version every server on this registry serves; they converge within their poll."""
    from model.registry import parse_spec

    name, version = parse_spec(args.spec)
    registry = _registry(args)
    if version is None:
        version = registry.resolve(name).version
    state = registry.record_active(name, version, action="activate", by=f"asr models activate ({_who()})",
                                   reason=args.reason)
    print(json.dumps({"active": f"{name}@{state['active']}", "previous": state["history"][-1]["previous"]}))
    return 0


def cmd_models_rollback(args) -> int:
    """Records the version that was active before the current one as active again."""
    from model.registry import validate_name

    registry = _registry(args)
    history = registry.serving_state(validate_name(args.name))["history"]
    previous = history[-1]["previous"] if history else None
    if previous is None:
        raise UsageError(f"nothing to roll back to: the registry records no earlier active version of {args.name!r}")
    state = registry.record_active(args.name, previous, action="rollback", by=f"asr models rollback ({_who()})",
                                   reason=args.reason)
    print(json.dumps({"active": f"{args.name}@{state['active']}", "previous": history[-1]["version"]}))
    return 0


def cmd_models_canary(args) -> int:
    """Offline WER gate on a dev manifest, then a canary the servers route ``--traffic`` % of requests to."""
    from model.registry import parse_spec

    name, version = parse_spec(args.spec)
    registry = _registry(args)
    candidate = registry.resolve(f"{name}@{version}" if version else name)
    print(json.dumps(_start_canary(registry, candidate, args)))
    return 0


def _start_canary(registry, candidate, args) -> dict:
    """Decodes ``args.gate`` with the active version and ``candidate``; refuses a worse one, else records the canary.

    ``args`` holds ``traffic``, ``gate``, ``max_wer_increase``, ``min_requests``, ``max_error_rate``,
    ``max_p99_increase`` and ``promote_after_minutes`` (``asr models canary``'s options, which
    ``asr train --canary`` shares).
    """
    import argparse

    from cli.evaluate import evaluate_manifest
    from model.checkpoint import load_model
    from service.canary import CanaryGate

    name = candidate.name
    active_version = registry.serving_state(name)["active"] or registry.resolve(name).version
    if candidate.version == active_version:
        raise UsageError(f"{candidate} is already the active version")
    if not 0 < args.traffic <= 100:
        raise UsageError(f"--traffic must be a percentage in (0, 100], got {args.traffic}")
    try:
        gate = CanaryGate(min_requests=args.min_requests, max_error_rate=args.max_error_rate,
                          max_p99_increase=args.max_p99_increase, promote_after_minutes=args.promote_after_minutes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    options = argparse.Namespace(decoder="greedy", batch_size=8, json=False, lm=None, alpha=None, beta=None)
    wers = {}
    for label, spec in (("active", f"{name}@{active_version}"), ("candidate", str(candidate))):
        model, ref, _ = load_model(registry, spec)
        wers[label] = evaluate_manifest(model.eval(), Path(args.gate), options, registry, ref.path)["wer"]
    said = (f"{candidate}'s WER on {Path(args.gate).name} is {wers['candidate'] * 100:.2f} % against the active "
            f"{name}@{active_version}'s {wers['active'] * 100:.2f} %")
    by = f"asr canary ({_who()})"
    if (wers["candidate"] - wers["active"]) * 100 > args.max_wer_increase:
        registry.note(name, candidate.version, action="canary_refused", by=by,
                      reason=f"{said}; the gate allows +{args.max_wer_increase} points")
        raise UsageError(f"canary refused: {said}; the gate allows +{args.max_wer_increase} points")
    registry.record_canary(name, candidate.version, traffic_percent=args.traffic, gate=gate.to_dict(), by=by,
                           reason=said)
    return {"canary": str(candidate), "traffic_percent": args.traffic, "active": f"{name}@{active_version}",
            "wer": wers, "gate": gate.to_dict()}


def cmd_fleet_status(args) -> int:
    """Every server that reports into this registry: what it serves, what it refused, its load."""
    from model.fleet import fleet_status

    replicas = fleet_status(_registry(args).root, stale_after_s=args.stale_after_s)
    if args.json:
        _print_json(replicas)
        return 0
    if not replicas:
        print("no server has reported into this registry")
    for r in replicas:
        serving = ", ".join(f"{m['name']}@{m['version']}" + ("" if m["state"] == "active" else f" ({m['state']})")
                            for m in r.get("serving", []))
        state = "alive" if r["alive"] else "LOST"
        load = r.get("load", {})
        print(f"{r['replica']:<28} {state:<5} {r.get('age_s', '?')} s ago  serving {serving or '-'}  "
              f"in flight {load.get('in_flight', '?')}")
        for refused in r.get("refused", []):
            print(f"    refused {refused['model']}: {refused['error']}")
        if r.get("error"):
            print(f"    {r['error']}")
    return 0


def _who() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def cmd_models_import_nemo(args) -> int:
    from interop.nemo import import_nemo
    from model.checkpoint import publish_model

    model, info = import_nemo(Path(args.file), frontend=args.frontend)
    ref = publish_model(_registry(args), args.name, model, source="imported", extra={"nemo": info})
    print(str(ref))
    return 0


def cmd_models_pull(args) -> int:
    """Fetches, checks, imports and publishes a hub's .nemo; progress bars on stderr, NAME@VERSION on stdout."""
    from interop.pull import pull_model

    pulled = pull_model(_registry(args), args.source, name=args.name, activate=args.activate,
                        by=f"asr models pull ({_who()})")
    if pulled.reused:
        print(f"asr: {args.source} is already in the registry as {pulled.ref} (sha256 "
              f"{pulled.fetched.sha256[:12]}...); nothing published", file=sys.stderr)
    print(str(pulled.ref))
    return 0


def cmd_models_catalog(args) -> int:
    """NVIDIA's English CTC checkpoints the importer reads, with where to pull them from."""
    from dataclasses import asdict

    from interop.catalog import CATALOG, VERIFIED_HOW

    if args.json:
        print(json.dumps({"verified": VERIFIED_HOW, "models": [asdict(e) for e in CATALOG]}, indent=2))
        return 0
    def wers(wer: dict) -> str:
        for split, label in (("test", "test"), ("dev", "dev")):
            clean, other = wer.get(f"librispeech_{split}_clean"), wer.get(f"librispeech_{split}_other")
            if clean is not None and other is not None:
                return f"{label} {clean:g} / {other:g}"
        return "-"

    def shown(value, unit: str) -> str:
        return f"{value:g}{unit}" if value is not None else "?"

    print(f"{'pull with':<63} {'params':>7} {'size':>7}  {'license':<10} {'WER clean/other %':<19} trained on")
    for e in CATALOG:
        print(f"{e.pull:<63} {shown(e.params_m, 'M'):>7} {shown(e.size_mb, 'MB'):>7}  {e.license or '?':<10} "
              f"{wers(e.published_wer):<19} {', '.join(e.trained_on) or '?'}")
    print(f"\n{VERIFIED_HOW}")
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


def cmd_transcribe_batch(args) -> int:
    """An archive on a Ray cluster (cli.archive_job); a rerun into the same --out finishes only what is left."""
    from cli.archive_inputs import InputError, list_inputs
    from cli.archive_job import JobSpec, print_summary, registry_files, run_job, summarize
    from cli.archive_outputs import FORMATS, is_done, read_record

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"--format takes a comma-separated list of {', '.join(FORMATS)}, got {args.format!r}")
    if (args.workers is not None and args.workers < 1) or args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise UsageError("--workers must be at least 1, --cpus-per-worker above 0 and --gpus-per-worker at least 0")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    _check_decoder_args(args)
    try:
        items, kind = list_inputs(args.input, args.limit)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if args.device != "cpu" and args.gpus_per_worker <= 0:
        raise UsageError("the actors run on GPUs only with --gpus-per-worker (e.g. 1); --device is for the driver")
    device = "cuda" if args.gpus_per_worker > 0 else "cpu"
    registry = _registry(args)
    model, ref = _load(args)  # the driver's copy: checks the model and gives its rate to the readers
    lm_ref = choice = None
    if args.decoder == "beam":
        from lm.model_lm import choose_lm, recorded_lm
        from model.checkpoint import read_config

        choice = choose_lm(recorded_lm(read_config(ref.path)), lm=args.lm, alpha=args.alpha, beta=args.beta)
        lm_ref = registry.resolve(choice.spec) if choice.spec is not None else None
    spec = JobSpec(model=str(ref), lm=str(lm_ref) if lm_ref else None, decoder=args.decoder,
                   beam_width=args.beam_width, alpha=choice.alpha if choice else None,
                   beta=choice.beta if choice else None, precision=args.precision, device=device,
                   batch_size=args.batch_size, threads=max(1, int(args.cpus_per_worker)),
                   sample_rate=model.sample_rate, frame_duration_s=model.frame_duration_s)
    started = time.monotonic()
    outcome = run_job(items, out, formats, spec, registry_files(ref.path),
                      registry_files(lm_ref.path) if lm_ref else None,
                      address=args.address or os.environ.get("RAY_ADDRESS") or None, workers=args.workers,
                      cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                      progress=not args.quiet)
    wall_s = time.monotonic() - started
    scores = None
    if kind == "manifest":
        from training.metrics import word_char_error_rates

        scored = [(i, read_record(out, i.key)["text"]) for i in items if i.text is not None and is_done(out, i.key)]
        scores = word_char_error_rates([model.vocabulary.normalize(i.text) for i, _ in scored],
                                       [hyp for _, hyp in scored])
    summary = summarize(items, out, outcome, wall_s, kind, "jsonl" in formats, scores)
    if args.json:
        _print_json(summary)
    else:
        print_summary(summary, outcome.failed)
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

    overrides = list(args.set or []) + ([f"scaling.ray_address={args.address}"] if args.address else [])
    cfg = load_config(args.config, overrides)  # before the heavy imports: bad configs fail fast
    if args.canary is not None and not args.gate:
        raise UsageError("--canary needs --gate MANIFEST.json: the dev set both versions are compared on")
    from training.plot import plot_metrics
    from training.trainer import run_training

    if args.registry:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"registry": args.registry})})
    ref, summary = run_training(cfg, run_name=args.run_name)
    if args.plot:
        plot_metrics(Path(cfg.run.output_dir) / "metrics.jsonl", Path(args.plot))
    if ref is not None and (args.activate or args.canary is not None):  # publishing alone never changes what servers serve
        from model.registry import Registry

        registry = Registry(cfg.run.registry)
        if args.canary is not None:
            summary = {**summary, "canary": _start_canary(registry, ref, argparse.Namespace(
                **{**vars(args), "traffic": args.canary}))}
        else:
            registry.record_active(ref.name, ref.version, action="activate", by=f"asr train --activate ({_who()})",
                                   reason=f"trained {ref}")
            summary = {**summary, "activated": str(ref)}
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


def cmd_lm_import(args) -> int:
    from lm.store import import_binary_lm, import_lm, is_kenlm_binary
    from model.vocabulary import ENGLISH_LABELS

    labels = ENGLISH_LABELS
    if args.vocabulary_from:
        from model.checkpoint import load_model

        labels = load_model(_registry(args), args.vocabulary_from)[0].vocabulary.labels
    path = Path(args.arpa)
    if path.is_file() and is_kenlm_binary(path):
        if not args.words:
            raise UsageError(f"{path} is a KenLM binary: give its word list with --words WORDS.txt")
        print(str(import_binary_lm(_registry(args), args.name, path, Path(args.words), labels)))
        return 0
    if args.words:
        raise UsageError("--words is for KenLM binaries; an ARPA file lists its own words")
    print(str(import_lm(_registry(args), args.name, path, labels)))
    return 0


def cmd_serve(args) -> int:
    from service.server import config_from_args, run_server

    return int(run_server(config_from_args(args)) or 0)
