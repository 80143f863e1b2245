"""The request error types (model.errors' taxonomy: each has a ``kind`` the wires map and a ``code``), and the
one sanitiser every transport passes an error's message through.

Kept free of torch imports (model.errors has none) so the batcher can raise them.
"""

from __future__ import annotations

import re

from model.errors import ASRError, Kind

# An absolute path: a "/" that does not follow a word character or a dot, then no spaces, quotes or brackets.
_PATH = re.compile(r"(?<![\w.])/[^\s:'\"()]+")


def without_paths(message: str) -> str:
    """A message with the server's file paths taken out: clients learn what failed, not where files live."""
    return " ".join(_PATH.sub("<path>", message).split())


def public_message(exc: BaseException) -> str:
    """What a client is told of a known failure: the first line of its message, with no server path in it."""
    text = str(exc)
    return without_paths(text.splitlines()[0]) if text.strip() else type(exc).__name__


class RequestError(ASRError, ValueError):
    """The request itself is wrong (REST 400 / gRPC INVALID_ARGUMENT); the message says how."""

    code = "bad_request"


class UnknownModelError(RequestError):
    """No such model, version or LM (REST 404 / gRPC NOT_FOUND)."""

    kind, code = Kind.NOT_FOUND, "model_not_found"


class WrongModelKindError(RequestError):
    """A registry version that exists but is not an acoustic model, e.g. an LM (REST 400 / gRPC FAILED_PRECONDITION)."""

    kind, code = Kind.WRONG_KIND, "wrong_model_kind"


class UnauthenticatedError(RequestError):
    """No or a wrong API key (REST 401 / gRPC UNAUTHENTICATED)."""

    kind, code = Kind.UNAUTHENTICATED, "invalid_api_key"


class QueueFullError(RequestError):
    """The batch queue or the decoded-audio budget is full (REST 429 / gRPC RESOURCE_EXHAUSTED); retry later."""

    kind, code = Kind.BUSY, "queue_full"


class MemoryBudgetError(QueueFullError):
    """The process-wide memory budget is spent (service.budget); retry later (REST 429 / gRPC RESOURCE_EXHAUSTED)."""

    kind, code = Kind.BUSY, "memory_budget"


class DeadlineExceededError(RequestError):
    """The deadline passed before the work finished (REST 504 / gRPC DEADLINE_EXCEEDED)."""

    kind, code = Kind.DEADLINE, "deadline_exceeded"


class ClientGoneError(RequestError):
    """The client closed the connection before the answer was ready; its work was stopped (REST 499, as nginx
    logs it / gRPC CANCELLED)."""

    kind, code = Kind.CANCELLED, "client_closed_request"


class IdleTimeoutError(RequestError):
    """A stream that sent nothing for ``stream_idle_timeout_s`` (REST 408, WebSocket 1001 / gRPC OUT_OF_RANGE,
    as Google's streaming API answers an audio timeout)."""

    kind, code = Kind.IDLE, "idle_timeout"


class PayloadTooLargeError(RequestError):
    """Audio over the byte or duration limit (REST 413 / gRPC INVALID_ARGUMENT)."""

    kind, code = Kind.TOO_LARGE, "too_large"


class ServiceUnavailableError(RequestError):
    """No ready model, or the server is draining (REST 503 / gRPC UNAVAILABLE)."""

    kind, code = Kind.UNAVAILABLE, "unavailable"
