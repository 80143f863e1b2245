"""The `asr` command: models, transcription, evaluation, training, language models and serving.

Usage:
    asr models presets [--json]
    asr models list [--json]
    asr models import-nemo FILE.nemo --name NAME
    asr models pull hf:ORG/REPO[@REV][:FILE.nemo] | ngc:ORG/[TEAM/]MODEL:VERSION | https://.../X.nemo [--name N] [--activate]
    asr models catalog [--json]
    asr models ensemble MEMBER... --name NAME [--speeds 0.95 1.0 1.05] [--fp16]
    asr models export NAME[@VERSION] --format onnx|nemo --out FILE
    asr models activate NAME@VERSION [--reason TEXT]
    asr models rollback NAME [--reason TEXT]
    asr models canary NAME@VERSION --traffic PERCENT --gate MANIFEST.json [--max-wer-increase 0.5] [--min-requests 200]
    asr fleet status [--json]
    asr transcribe AUDIO... [--model NAME[@VERSION]] [--json] [--decoder beam [--lm NAME]] [--precision P]
    asr transcribe-batch INPUT --out DIR [--format jsonl,srt,vtt,txt] [--address auto|HOST:PORT] [--workers N]
        [--gpus-per-worker G] [--model ...] [--decoder beam [--lm NAME]] [--precision P] [--limit N]
    asr eval --manifest M.json [--model ...] [--json]
    asr logprobs AUDIO --model NAME[@VERSION] --out FILE.npy [--precision fp32]
    asr bench [--model NAME[@VERSION]] [--batch-size N] [--clip-seconds S] [--threads N] [--precision P] [--json]
    asr train CONFIG.yaml [--set key=value ...] [--address HOST:PORT|auto] [--plot curve.png] [--activate | --canary PERCENT --gate M.json]
    asr lm build TEXT_OR_MANIFEST --order N --name NAME [--prune 0 1 1]
    asr lm import FILE.arpa[.gz] | FILE.bin --words WORDS.txt --name NAME [--vocabulary-from MODEL]
    asr serve [--port 8000] [--grpc-port 50051] [--model NAME]

Expected failures (bad audio, unknown model, bad config) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli.commands import (DEFAULT_MODEL_ENV, STARTER_MODEL, UsageError, cmd_bench, cmd_eval, cmd_fleet_status,
                          cmd_lm_build, cmd_lm_import, cmd_logprobs, cmd_models_activate, cmd_models_canary,
                          cmd_models_catalog, cmd_models_ensemble, cmd_models_export,
                          cmd_models_export_nemo, cmd_models_import_nemo, cmd_models_list, cmd_models_presets,
                          cmd_models_pull, cmd_models_rollback, cmd_serve, cmd_train, cmd_transcribe, cmd_transcribe_batch)

def _add_decoder_args(parser: argparse.ArgumentParser) -> None:
    from lm.beam import DEFAULT_BEAM_WIDTH

    parser.add_argument("--model", help=f"NAME[@VERSION] (default ${DEFAULT_MODEL_ENV} or {STARTER_MODEL})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--lm", help="LM registry NAME[@VERSION] (default: the LM recorded with the model)")
    parser.add_argument("--beam-width", type=int, default=DEFAULT_BEAM_WIDTH)
    parser.add_argument("--alpha", type=float, help="LM weight (default: the value tuned for the model's LM)")
    parser.add_argument("--beta", type=float, help="word insertion bonus (default: the value tuned for the model's LM)")
    parser.add_argument("--batch-size", type=int, default=8)
    _add_precision_arg(parser, "auto")


def _add_precision_arg(parser: argparse.ArgumentParser, default: str) -> None:
    from model.precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help=f"inference precision (default {default}; auto = bf16 on CUDA and on CPUs with "
                             "native bf16, else fp32)")


def _add_canary_gate_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--gate", required=required, metavar="MANIFEST.json",
                        help="a dev-set manifest both versions are decoded on first (never a test set)")
    parser.add_argument("--max-wer-increase", type=float, default=0.5, help="WER points the candidate may lose (0.5)")
    parser.add_argument("--min-requests", type=int, default=200, help="requests before it can be promoted (200)")
    parser.add_argument("--max-error-rate", type=float, default=0.01,
                        help="failures per request it may have; its budget is this times --min-requests (0.01)")
    parser.add_argument("--max-p99-increase", type=float, default=0.5,
                        help="how far its p99 latency may exceed the active version's, as a fraction (0.5)")
    parser.add_argument("--promote-after-minutes", type=float, default=None, metavar="MINUTES",
                        help="for low traffic: judge it this long after it started even short of --min-requests "
                             "(its failures within --max-error-rate of what it answered); default: wait")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="QuartzNet speech recognition: train, publish, serve.")
    parser.add_argument("--registry", default=None,
                        help="model registry folder (default $ASR_REGISTRY, else ./registry, else "
                             "~/.local/share/quartznet-asr/registry, which scripts/setup.sh links to the checkout's)")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model presets and the registry").add_subparsers(dest="models_cmd",
                                                                                         required=True)
    p = models.add_parser("presets", help="named architectures and their parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_presets)
    p = models.add_parser("list", help="every version in the registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("activate", help="make NAME@VERSION the version every server on this registry serves")
    p.add_argument("spec", metavar="NAME@VERSION")
    p.add_argument("--reason", help="why, for the registry's history")
    p.set_defaults(func=cmd_models_activate)
    p = models.add_parser("canary", help="after an offline WER gate, send a share of the requests to NAME@VERSION; "
                                         "promote or roll back automatically on the fleet's measurements")
    p.add_argument("spec", metavar="NAME@VERSION")
    p.add_argument("--traffic", type=float, required=True, help="percent of the requests that name no version")
    _add_canary_gate_args(p, required=True)
    p.set_defaults(func=cmd_models_canary)
    p = models.add_parser("rollback", help="serve again the version that was active before the current one")
    p.add_argument("name")
    p.add_argument("--reason", help="why, for the registry's history")
    p.set_defaults(func=cmd_models_rollback)
    p = models.add_parser("import-nemo", help="import a NeMo .nemo checkpoint as a registry version")
    p.add_argument("file")
    p.add_argument("--name", required=True)
    p.add_argument("--frontend", choices=("nemo25", "nemo24"),
                   help="front-end behaviour (default: from the file's nemo_version)")
    p.set_defaults(func=cmd_models_import_nemo)
    p = models.add_parser("pull", help="fetch a NeMo checkpoint from the Hugging Face Hub, NGC or a URL, check it, "
                                       "import it and publish it (see `asr models catalog`)")
    p.add_argument("source", metavar="SOURCE",
                   help="hf:ORG/REPO[@REVISION][:FILE.nemo], ngc:ORG/[TEAM/]MODEL:VERSION[:FILE.nemo], or an "
                        "https:// URL of a .nemo (append #sha256=HEX to have it checked)")
    p.add_argument("--name", help="registry name (default: the model's own, e.g. stt_en_citrinet_256_ls)")
    p.add_argument("--activate", action="store_true", help="record it as the version servers on this registry serve")
    p.set_defaults(func=cmd_models_pull)
    p = models.add_parser("catalog", help="NVIDIA's English CTC checkpoints this importer reads, with their sources, "
                                          "sizes, licenses and published WERs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_catalog)
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

    fleet = sub.add_parser("fleet", help="the servers that share this registry").add_subparsers(dest="fleet_cmd",
                                                                                            required=True)
    p = fleet.add_parser("status", help="every server reporting into the registry: what it serves, refused, load")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stale-after-s", type=float, default=6.0,
                   help="a server silent this long is reported lost (default 6: three of its 2 s polls)")
    p.set_defaults(func=cmd_fleet_status)
    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument("audio", nargs="+")
    p.add_argument("--json", action="store_true", help="JSON with word times and confidences")
    _add_decoder_args(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("transcribe-batch", help="transcribe an archive on a Ray cluster (Ray Data); resumable")
    p.add_argument("input", help="a folder (recursive), a glob, a text file of paths, or a NeMo manifest")
    p.add_argument("--out", required=True, help="results folder; a rerun into it finishes only what is left")
    p.add_argument("--format", default="jsonl", help="comma-separated: jsonl (per-file .json and results.jsonl), "
                                                     "srt, vtt, txt (default jsonl)")
    p.add_argument("--address", help="a Ray cluster to join: auto or HOST:PORT (default: $RAY_ADDRESS, else a new "
                                     "local Ray instance)")
    p.add_argument("--workers", type=int, help="transcribing actors (default: one per GPU with --gpus-per-worker, "
                                                "else the cluster's CPUs over --cpus-per-worker, one CPU per node "
                                                "left for reading)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs (and torch threads) per actor (default 1: single-threaded actors lose nothing to "
                        "other processes on a shared core)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor; above 0 runs on CUDA")
    p.add_argument("--limit", type=int, help="only the first N files (by key)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_decoder_args(p)
    p.set_defaults(func=cmd_transcribe_batch)

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
    p.add_argument("--address", metavar="HOST:PORT|auto",
                   help="join this Ray cluster (default $RAY_ADDRESS, else a local Ray); same as "
                        "--set scaling.ray_address=...")
    p.add_argument("--plot", help="write loss/WER curves to this PNG")
    rollout = p.add_mutually_exclusive_group()
    rollout.add_argument("--activate", action="store_true",
                         help="make the published version the one every server on the registry serves")
    rollout.add_argument("--canary", type=float, metavar="PERCENT",
                         help="start a canary of the published version (asr models canary; needs --gate)")
    _add_canary_gate_args(p, required=False)
    p.set_defaults(func=cmd_train)

    lm = sub.add_parser("lm", help="n-gram language models").add_subparsers(dest="lm_cmd", required=True)
    p = lm.add_parser("build", help="build a KenLM model from text or a manifest and publish it")
    p.add_argument("source", help="plain text (one sentence per line) or a NeMo manifest")
    p.add_argument("--order", type=int, default=4)
    p.add_argument("--name", required=True)
    p.add_argument("--prune", type=int, nargs="*", default=None, help="lmplz --prune thresholds, e.g. 0 1 1")
    p.add_argument("--model", help="take the vocabulary from this model (default: English letters)")
    p.set_defaults(func=cmd_lm_build)
    p = lm.add_parser("import", help="publish a language model made elsewhere: ARPA (plain or .gz) or a KenLM binary")
    p.add_argument("arpa", metavar="FILE", help="FILE.arpa, FILE.arpa.gz (e.g. LibriSpeech's 3-gram.arpa.gz) or a "
                                                "KenLM binary (with --words)")
    p.add_argument("--name", required=True)
    p.add_argument("--words", metavar="WORDS.txt",
                   help="for a KenLM binary: its words, one per line (a binary cannot list them itself)")
    p.add_argument("--vocabulary-from", metavar="MODEL",
                   help="check its words against this model's labels (default: English letters)")
    p.set_defaults(func=cmd_lm_import)

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
    """What exits 2 with one line: every error of the taxonomy (model.errors), whatever its kind, and two
    foreign ones that only a user's input raises here: a path that does not exist, and a settings value
    (ASR_*) pydantic refuses."""
    from pydantic import ValidationError

    from model.errors import ASRError

    return ASRError, FileNotFoundError, ValidationError


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
