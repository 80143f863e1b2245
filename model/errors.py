"""One taxonomy for every error a user causes or can wait out, from the registry to the wire.

Such an error is an ``ASRError``. Its ``kind`` says what went wrong in terms each wire maps once, in one
table: HTTP and OpenAI's error types (service.http_errors), gRPC status codes (service.grpc_api), the
realtime socket's close codes (derived from the HTTP status), and the CLI's exit code 2 (cli.main).
Its ``code`` names it for clients (OpenAI's ``error.code``) and for ``asr_errors_total{reason}``.
Anything else that escapes is a bug: HTTP 500, gRPC INTERNAL, CLI exit 1, never its text.

A new error is a subclass with a ``kind`` and a ``code``; a new kind is one line in each wire's
table, and tests/test_errors.py fails until every table has it.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """What a failure means to the one who asked."""

    BAD_REQUEST = "bad_request"
    """The input is wrong: fix it and ask again."""
    UNSUPPORTED_MEDIA = "unsupported_media"
    """The request's body is not a kind of content this endpoint reads."""
    TOO_LARGE = "too_large"
    """More audio (bytes or seconds) than the limits allow."""
    NOT_FOUND = "not_found"
    """No such model, version or language model (here or upstream)."""
    WRONG_KIND = "wrong_kind"
    """It exists but is the wrong kind of thing, e.g. an LM where an acoustic model is needed."""
    UNAUTHENTICATED = "unauthenticated"
    """No or a wrong API key."""
    BUSY = "busy"
    """Full queues or memory budget: retry shortly."""
    DEADLINE = "deadline"
    """The deadline passed before the work finished."""
    IDLE = "idle"
    """A stream that sent nothing for too long."""
    CANCELLED = "cancelled"
    """The client went away; its work was stopped."""
    UNAVAILABLE = "unavailable"
    """Not now: draining, not ready, or a model that cannot be loaded."""
    UPSTREAM = "upstream"
    """A host this server fetches from refused or failed (a model hub)."""
    STORAGE = "storage"
    """The server's own disk cannot take it (the registry, a cache)."""


class ASRError(Exception):
    """Root of the errors in the taxonomy above; subclasses set ``kind`` and ``code`` (or pass them per instance)."""

    kind: Kind = Kind.BAD_REQUEST
    code: str = "bad_request"

    def __init__(self, *args, kind: Kind | None = None, code: str | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            self.kind = kind
        if code is not None:
            self.code = code
