"""What `asr transcribe-batch` transcribes: a folder, a glob, a text file of paths, or a NeMo manifest.

Every input gets a key: its path relative to the folder, or to the common folder of the glob's or the
list's paths, so results land at the same relative place under ``--out`` and a rerun finds them.
A folder, list or manifest may also be a URI of any filesystem pyarrow reads (``s3://``, ``gs://``,
``hdfs://``, ``file://``); its files are then fetched one at a time into a temporary file to be read.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model.errors import ASRError

# What model.audio reads: libsndfile's containers and PyAV's (model.audio_container).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mpga", ".mpeg", ".m4a", ".mp4",
                              ".aac", ".webm", ".mov", ".aif", ".aiff", ".au", ".caf", ".w64"})


class InputError(ASRError, ValueError):
    """INPUT names nothing to transcribe (the CLI's one-line error, exit 2)."""

    code = "bad_input"


@dataclass(frozen=True)
class Item:
    """One file: its path, its key under the output folder, and a reference text (from a manifest)."""

    path: str
    key: str
    text: str | None = None


def list_inputs(spec: str, limit: int | None = None) -> tuple[list[Item], str]:
    """The files INPUT names, sorted by key, and what kind of INPUT it was ("folder", "glob", "list", "manifest").

    Raises:
        InputError: nothing matched, a key appears twice, or the list cannot be read.
    """
    if "://" in spec:
        items, kind = _list_uri(spec)
        return _checked(spec, items, limit), kind
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        items, kind = [Item(str(p), p.relative_to(path).as_posix()) for p in files], "folder"
    elif path.is_file():
        items, kind = _read_list(path)
    elif glob.has_magic(spec):
        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        items, kind = _keyed([(p, None) for p in matches]), "glob"
    else:
        raise InputError(f"{spec}: no such folder, file or glob")
    return _checked(spec, items, limit), kind


def _checked(spec: str, items: list[Item], limit: int | None) -> list[Item]:
    if not items:
        raise InputError(f"{spec}: no audio files found (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})")
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"{spec}: {duplicate} is listed twice")
    items.sort(key=lambda i: i.key)
    return items[:limit] if limit is not None else items


def _list_uri(uri: str) -> tuple[list[Item], str]:
    """A folder, list or manifest on a pyarrow filesystem; items keep their URIs as paths."""
    import pyarrow.fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise InputError(f"{uri}: cannot be opened ({exc})") from None
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.Directory:
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and Path(f.path).suffix.lower() in AUDIO_EXTENSIONS)
        return [Item(f"{scheme}://{f}", Path(f).relative_to(root).as_posix()) for f in files], "folder"
    if info.type == pafs.FileType.File:
        with filesystem.open_input_stream(root) as stream:
            entries, kind = _parse_list(stream.read().decode("utf-8", errors="replace"), uri)
        return _keyed_uris(f"{scheme}://{Path(root).parent.as_posix()}", entries), kind
    raise InputError(f"{uri}: no such folder or file")


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path for ``path``: itself, or a temporary copy of a URI's file, deleted afterwards."""
    if "://" not in path:
        yield path
        return
    import pyarrow.fs as pafs

    filesystem, remote = pafs.FileSystem.from_uri(path)
    fd, local = tempfile.mkstemp(prefix="asr-batch-", suffix=Path(remote).suffix)
    try:
        with os.fdopen(fd, "wb") as out, filesystem.open_input_stream(remote) as stream:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        yield local
    finally:
        os.unlink(local)


def _read_list(path: Path) -> tuple[list[Item], str]:
    """A local manifest or list: relative paths are relative to its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as a list of files ({exc.__class__.__name__})") from None
    entries, kind = _parse_list(text, str(path))
    return _keyed([(p if os.path.isabs(p) else str(path.parent / p), t) for p, t in entries]), kind


def _parse_list(text: str, name: str) -> tuple[list[tuple[str, str | None]], str]:
    """(path, reference text) entries of a NeMo manifest (JSON lines with audio_filepath) or a list of paths."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not (lines and lines[0].startswith("{")):
        return [(line, None) for line in lines], "list"
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            entries.append((row["audio_filepath"], str(row["text"]) if "text" in row else None))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{name}: line {number} is not a manifest entry with audio_filepath") from None
    return entries, "manifest"


def _keyed_uris(base: str, entries: list[tuple[str, str | None]]) -> list[Item]:
    """Items for a list fetched from ``base`` (SCHEME://FOLDER): relative entries resolved against it, keyed by
    their paths below the scheme."""
    scheme, folder = base.split("://", 1)
    paths = [(p.split("://", 1)[1] if "://" in p else p if p.startswith("/") else f"{folder}/{p}", text)
             for p, text in entries]
    return [Item(f"{scheme}://{item.path}", item.key, item.text) for item in _keyed(paths)]


def _keyed(entries: list[tuple[str, str | None]]) -> list[Item]:
    """Items keyed by their path relative to the entries' common folder."""
    if not entries:
        return []
    absolute = [os.path.abspath(p) for p, _ in entries]
    root = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
    if root in absolute:  # one file, or a file that is also a folder's name
        root = os.path.dirname(root)
    return [Item(p, Path(os.path.relpath(a, root)).as_posix(), text) for (p, text), a in zip(entries, absolute)]
