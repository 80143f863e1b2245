"""Reads an uploaded audio file from a request body into a spooled file, the byte limit enforced while streaming.

Accepts ``multipart/form-data`` (a ``file`` field plus form fields) or a raw body with an
``audio/*`` or ``application/octet-stream`` content type. The limit is checked against
Content-Length before reading and against the running byte count while reading, so an
oversized upload is refused without being buffered. The file itself goes to a temporary file
(kept in memory up to 1 MB), never into one bytes object: it is decoded a window at a time
(model.audio_stream).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from model.errors import Kind
from service.domain import PayloadTooLargeError, RequestError

# Form fields and part headers ride along with the file in a multipart body.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024
_RAW_TYPES = ("application/octet-stream",)
# Upload bytes kept in memory before the spool moves to a temporary file on disk.
_SPOOL_MEMORY_BYTES = 1024 * 1024


class UnsupportedMediaTypeError(RequestError):
    """A body whose content type is neither multipart nor audio (HTTP 415)."""

    kind, code = Kind.UNSUPPORTED_MEDIA, "unsupported_media_type"


@dataclass
class Upload:
    """An uploaded file (a seekable binary file at position 0) and the form fields that came with it.

    Use it as a context manager (or call ``close``): the spooled file is deleted at the end.
    """

    file: BinaryIO
    size: int
    filename: str
    content_type: str
    fields: dict[str, list[str]] = field(default_factory=dict)
    _close: Callable[[], None] | None = None

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def close(self) -> None:
        (self._close or self.file.close)()

    def __enter__(self) -> "Upload":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"audio upload exceeds the limit of {max_bytes} bytes ({max_bytes / 1e6:.1f} MB)")


async def _limited_stream(request: Request, limit: int, max_bytes: int):
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(max_bytes)
        yield chunk


async def read_upload(request: Request, *, max_bytes: int, file_field: str = "file") -> Upload:
    """Reads the audio file of a transcription request.

    Raises:
        PayloadTooLargeError: Content-Length or the bytes received exceed ``max_bytes``.
        UnsupportedMediaTypeError: content type is neither multipart nor audio/octet-stream.
        RequestError: empty body, missing file field, malformed multipart.
    """
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    multipart = media_type == "multipart/form-data"
    if not multipart and not (media_type.startswith("audio/") or media_type in _RAW_TYPES):
        raise UnsupportedMediaTypeError(
            f"unsupported content type {media_type or '(none)'!r}: send multipart/form-data with a "
            f"'{file_field}' field, or the raw file with an audio/* or application/octet-stream content type")
    limit = max_bytes + (_MULTIPART_OVERHEAD_BYTES if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(max_bytes)
    try:
        if not multipart:
            spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)
            try:
                size = 0
                async for chunk in _limited_stream(request, limit, max_bytes):
                    spool.write(chunk)
                    size += len(chunk)
            except BaseException:
                spool.close()
                raise
            if not size:
                spool.close()
                raise RequestError("empty request body: no audio was sent")
            spool.seek(0)
            return Upload(spool, size, "audio", media_type)
        parser = MultiPartParser(request.headers, _limited_stream(request, limit, max_bytes), max_files=4,
                                 max_fields=64)
        form = await parser.parse()
    except MultiPartException as e:
        raise RequestError(f"malformed multipart body: {e.message}") from None
    except ClientDisconnect:
        raise RequestError("client disconnected before the upload finished") from None
    try:
        fields: dict[str, list[str]] = {}
        upload = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == file_field and upload is None:
                    upload = value
            else:
                fields.setdefault(key, []).append(value)
        if upload is None:
            raise RequestError(f"missing multipart file field {file_field!r}")
        size = upload.size if upload.size is not None else _file_size(upload.file)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if not size:
            raise RequestError(f"uploaded file {upload.filename or file_field!r} is empty (0 bytes)")
        upload.file.seek(0)
    except BaseException:
        await form.close()
        raise
    # The multipart parser already spooled the file; it is deleted when the form closes.
    return Upload(upload.file, size, upload.filename or file_field, upload.content_type or "", fields,
                  _close=lambda: _close_parts(form))


def _close_parts(form) -> None:
    for _, part in form.multi_items():
        if isinstance(part, UploadFile):
            part.file.close()


def _file_size(handle: BinaryIO) -> int:
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(0)
    return size
