"""The request error types; kept free of torch/model imports so the batcher can raise them."""

from __future__ import annotations


class RequestError(ValueError):
    """The request itself is wrong (REST 400 / gRPC INVALID_ARGUMENT); the message says how."""

    reason = "bad_request"


class UnknownModelError(RequestError):
    """No such model, version or LM (REST 404 / gRPC NOT_FOUND)."""

    reason = "unknown_model"


class WrongModelKindError(RequestError):
    """A registry version that exists but is not an acoustic model, e.g. an LM (REST 400 / gRPC FAILED_PRECONDITION)."""

    reason = "wrong_model_kind"


class UnauthenticatedError(RequestError):
    """No or a wrong API key (REST 401 / gRPC UNAUTHENTICATED)."""

    reason = "unauthenticated"


class QueueFullError(RequestError):
    """The batch queue or the decoded-audio budget is full (REST 429 / gRPC RESOURCE_EXHAUSTED); retry later."""

    reason = "queue_full"


class DeadlineExceededError(RequestError):
    """The deadline passed before the work finished (REST 504 / gRPC DEADLINE_EXCEEDED)."""

    reason = "deadline"


class PayloadTooLargeError(RequestError):
    """Audio over the byte or duration limit (REST 413 / gRPC INVALID_ARGUMENT)."""

    reason = "too_large"


class ServiceUnavailableError(RequestError):
    """No ready model, or the server is draining (REST 503 / gRPC UNAVAILABLE)."""

    reason = "unavailable"
