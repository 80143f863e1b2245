"""`asr client transcribe FILE`: send a file to a running server over REST, gRPC, or gRPC streaming.

    asr client transcribe clip.wav                                  # REST, http://127.0.0.1:8000
    asr client transcribe clip.wav --grpc 127.0.0.1:50051 --json    # gRPC Recognize
    asr client transcribe clip.wav --grpc 127.0.0.1:50051 --stream  # real-time stream, interims on stderr

Exit codes: 0 success, 1 server unreachable or failing, 2 bad input (missing or undecodable
file, rejected parameters, unknown model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _ClientError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_client_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers `client transcribe ...` on the top-level CLI's subparsers; handlers set ``func``."""
    client = subparsers.add_parser("client", help="talk to a running ASR server")
    _add_transcribe(client.add_subparsers(dest="client_cmd", required=True))
    return client


def main(argv: list[str] | None = None) -> int:
    """`asr-client transcribe FILE ...`: the command of the standalone client distribution (client/pyproject.toml)."""
    parser = argparse.ArgumentParser(prog="asr-client", description="Talk to a running QuartzNet ASR server.")
    _add_transcribe(parser.add_subparsers(dest="client_cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _add_transcribe(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("transcribe", help="transcribe one audio file on a server",
                            description="Transcribe FILE on a running server (REST by default).")
    p.add_argument("file", metavar="FILE", help="audio file (wav, flac, ogg, mp3)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="REST base URL (default: %(default)s)")
    p.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at HOST:PORT instead of REST")
    p.add_argument("--stream", action="store_true",
                   help="stream over gRPC at real-time pace in 100 ms chunks; prints interim results as they arrive")
    p.add_argument("--model", help="NAME[@VERSION] (default: the server's default model)")
    p.add_argument("--json", action="store_true", help="print the server's full response as JSON (one line per "
                                                       "response when streaming)")
    p.add_argument("--timeout", type=float, default=300.0, help="request timeout in seconds (default: %(default)s)")
    p.set_defaults(func=main_client)


def main_client(args: argparse.Namespace) -> int:
    """Runs `client transcribe`; returns the process exit code."""
    try:
        path = _check_file(args.file)
        if args.stream and not args.grpc:
            raise _ClientError(EXIT_BAD_INPUT, "--stream needs --grpc HOST:PORT")
        if args.grpc:
            return _run_grpc(path, args)
        return _run_rest(path, args)
    except _ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


def _check_file(name: str) -> Path:
    path = Path(name)
    if not path.exists():
        raise _ClientError(EXIT_BAD_INPUT, f"{name}: file not found")
    if not path.is_file():
        raise _ClientError(EXIT_BAD_INPUT, f"{name}: not a regular file")
    if path.stat().st_size == 0:
        raise _ClientError(EXIT_BAD_INPUT, f"{name}: empty file (0 bytes)")
    return path


def _run_rest(path: Path, args: argparse.Namespace) -> int:
    import httpx

    from client.rest import RestClient, RestError

    try:
        with RestClient(args.url, timeout_s=args.timeout) as rest:
            result = rest.transcribe(path, model=args.model)
    except RestError as e:
        raise _ClientError(EXIT_BAD_INPUT if 400 <= e.status < 500 and e.status not in (408, 429) else EXIT_FAILED,
                           str(e)) from None
    except httpx.HTTPError as e:
        raise _ClientError(EXIT_FAILED, f"cannot reach {args.url}: {e}") from None
    print(json.dumps(result) if args.json else result.get("text", ""))
    return EXIT_OK


def _run_grpc(path: Path, args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from client.grpc_client import GrpcClient

    try:
        with GrpcClient(args.grpc, timeout_s=args.timeout) as client:
            if args.stream:
                return _stream(client, path, args)
            response = client.recognize(path.read_bytes(), model=args.model)
    except grpc.RpcError as e:
        raise _grpc_error(e, args.grpc) from None
    if args.json:
        print(json.dumps(MessageToDict(response)))
    else:
        results = response.results
        print(results[0].alternatives[0].transcript if results and results[0].alternatives else "")
    return EXIT_OK


def _stream(client, path: Path, args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    samples, rate = _read_mono(path)  # sent at the file's own rate: the server resamples a stream
    finals = []
    interim_shown = False
    for response in client.stream(samples, rate, model=args.model):
        if args.json:
            print(json.dumps(MessageToDict(response)), flush=True)
            finals += [r.alternatives[0].transcript for r in response.results if r.is_final and r.alternatives]
            continue
        for result in response.results:
            if result.is_final:
                finals.append(result.alternatives[0].transcript if result.alternatives else "")
        if any(r.is_final for r in response.results):
            if interim_shown and sys.stderr.isatty():
                print("\r\033[K", end="", file=sys.stderr)
            print(finals[-1], flush=True)
            interim_shown = False
        else:
            text = " ".join(r.alternatives[0].transcript for r in response.results if r.alternatives)
            if sys.stderr.isatty():
                print(f"\r\033[K... {text}", end="", file=sys.stderr, flush=True)
            else:
                print(f"... {text}", file=sys.stderr, flush=True)
            interim_shown = True
    return EXIT_OK


def _read_mono(path: Path):
    """The file's samples, down-mixed to mono float32, and its rate (soundfile: wav, flac, ogg, mp3)."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise _ClientError(EXIT_BAD_INPUT, f"{path}: not a readable audio file ({e})") from None
    if not len(data):
        raise _ClientError(EXIT_BAD_INPUT, f"{path}: audio has zero length")
    return data.mean(axis=1), int(rate)


def _grpc_error(error, target: str) -> _ClientError:
    import grpc

    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    details = details.splitlines()[0] if details else ""
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE):
        return _ClientError(EXIT_BAD_INPUT, f"{code.name}: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        return _ClientError(EXIT_FAILED, f"cannot reach {target}: {details}")
    return _ClientError(EXIT_FAILED, f"{code.name if code else 'error'}: {details}")
