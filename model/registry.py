"""Versioned on-disk registry of acoustic models and KenLM language models with atomic publish."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from model.errors import ASRError, Kind

METADATA_FILE = "metadata.json"
# Per name, beside its version folders: which version serves, and how it came to (Registry.serving_state).
STATE_FILE = "serving.json"
STATE_LOCK_FILE = ".serving.lock"
# Changes of the active version kept in a name's history, newest last.
MAX_STATE_HISTORY = 100
KINDS = ("model", "lm")
SOURCES = ("trained", "imported", "ensemble")
MAX_NAME_CHARS = 64
# Staging lives inside the root so the claiming rename never crosses a filesystem boundary.
TMP_DIR = ".tmp"
# A publish copying a multi-GB file can run for minutes; an hour of silence means it died.
STALE_TMP_S = 3600.0
_CHUNK_BYTES = 1 << 20
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION_RE = re.compile(r"[1-9][0-9]*")


class RegistryError(ASRError):
    """Base of every registry failure; the message is one line naming the problem."""

    code = "registry_error"


class InvalidNameError(RegistryError):
    """A model name, file name or version spec that the registry refuses."""

    code = "invalid_name"


class NotFoundError(RegistryError):
    """A name or version that does not exist in the registry."""

    kind, code = Kind.NOT_FOUND, "model_not_found"


class IntegrityError(RegistryError):
    """A published version whose files or metadata no longer match what was published."""

    kind, code = Kind.UNAVAILABLE, "integrity_error"


def user_registry_root() -> Path:
    """The per-user registry, ``$XDG_DATA_HOME/quartznet-asr/registry`` (``~/.local/share/...``): scripts/setup.sh
    links it to the checkout's registry, so ``asr`` finds the models from any directory."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "quartznet-asr" / "registry"


def default_registry_root() -> Path:
    """``$ASR_REGISTRY`` if set; else ``./registry`` where the working directory has one (a checkout); else the
    per-user registry where it exists; else ``./registry`` (a missing registry's errors name both places)."""
    if os.environ.get("ASR_REGISTRY"):
        return Path(os.environ["ASR_REGISTRY"])
    local = Path("registry")
    if not local.is_dir() and user_registry_root().is_dir():
        return user_registry_root()
    return local


def validate_name(name: str) -> str:
    """Returns ``name`` unchanged if it is a safe single path component.

    Raises:
        InvalidNameError: empty, too long, a path, hidden, or containing ``..`` or odd characters.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("invalid name '': must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidNameError(f"invalid name {name!r}: longer than {MAX_NAME_CHARS} characters")
    # The regex alone already refuses these; the explicit checks give a more useful message.
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InvalidNameError(f"invalid name {name!r}: must be a plain name, not a path or hidden file")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(f"invalid name {name!r}: use only letters, digits, '.', '_' and '-'")
    return name


def parse_spec(spec: str) -> tuple[str, int | None]:
    """Splits ``name``, ``name@latest`` or ``name@3`` into (name, version or None for latest)."""
    name, sep, version = spec.partition("@")
    validate_name(name)
    if not sep or version == "latest":
        return name, None
    if not _VERSION_RE.fullmatch(version):
        raise InvalidNameError(f"invalid spec {spec!r}: version must be 'latest' or a positive integer")
    return name, int(version)


@dataclass(frozen=True)
class ModelRef:
    """One published version; ``path`` is its folder."""

    name: str
    version: int
    path: Path

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes renames and new entries durable; Windows cannot open directories.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive POSIX lock on ``path`` (created if needed) for the block; lockf also works over NFS."""
    with open(path, "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _who() -> str:
    """Who made a change, for the history: the user and host of the writing process."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _write_file(dest: Path, source: bytes | bytearray | memoryview | str | os.PathLike) -> dict:
    """Writes or copies one file, fsyncs it, and returns its {"sha256", "bytes"} record."""
    digest = hashlib.sha256()
    size_bytes = 0
    with open(dest, "xb") as out:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            out.write(data)
            digest.update(data)
            size_bytes = len(data)
        else:
            with open(source, "rb") as src:
                while chunk := src.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size_bytes += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size_bytes}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class Registry:
    """A folder of versioned artifacts laid out as ``<root>/<name>/<version>/``."""

    def __init__(self, root: Path | str | None = None) -> None:
        """Uses ``root`` (default ``default_registry_root()``); the folder is created on first publish."""
        self.root = Path(root) if root is not None else default_registry_root()

    def versions(self, name: str) -> list[int]:
        """Returns the published versions of ``name`` in ascending order ([] if none)."""
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if _VERSION_RE.fullmatch(p.name) and p.is_dir())

    def names(self, kind: str | None = None) -> list[str]:
        """Returns names with at least one version, optionally only those whose latest has ``kind``."""
        if not self.root.is_dir():
            return []
        found = []
        for p in sorted(self.root.iterdir()):
            if not p.is_dir() or not _NAME_RE.fullmatch(p.name) or ".." in p.name:
                continue
            versions = self.versions(p.name)
            if not versions:
                continue
            if kind is not None:
                try:
                    meta = self.metadata(ModelRef(p.name, versions[-1], p / str(versions[-1])))
                except IntegrityError:
                    continue
                if meta.get("kind") != kind:
                    continue
            found.append(p.name)
        return found

    def list(self) -> list[dict]:
        """Returns one summary dict per version; unreadable metadata yields an ``error`` field."""
        entries = []
        for name in self.names():
            for version in self.versions(name):
                ref = ModelRef(name, version, self.root / name / str(version))
                entry: dict = {"name": name, "version": version, "path": str(ref.path)}
                try:
                    meta = self.metadata(ref)
                except IntegrityError as e:
                    entry["error"] = str(e)
                else:
                    for key in ("kind", "created_at", "source", "metrics"):
                        entry[key] = meta.get(key)
                entries.append(entry)
        return entries

    def resolve(self, spec: str) -> ModelRef:
        """Resolves ``name``, ``name@latest`` or ``name@N`` to a published version.

        Raises:
            InvalidNameError: malformed spec.
            NotFoundError: unknown name or version; the message lists what exists.
        """
        name, version = parse_spec(spec)
        available = self.versions(name)
        if not available:
            if not self.root.is_dir():
                raise NotFoundError(f"no model named {name!r}: the registry {self.root} does not exist (set "
                                    f"ASR_REGISTRY or --registry, or run scripts/setup.sh, which links "
                                    f"{user_registry_root()} to the checkout's registry)")
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"no model named {name!r} in registry {self.root} (available: {known})")
        if version is None:
            version = available[-1]
        elif version not in available:
            listed = ", ".join(str(v) for v in available)
            raise NotFoundError(f"'{name}@{version}' not found in registry {self.root} (available versions: {listed})")
        return ModelRef(name, version, self.root / name / str(version))

    def metadata(self, ref: ModelRef) -> dict:
        """Reads a version's metadata.json.

        Raises:
            IntegrityError: missing, unparseable, or describing a different name/version.
        """
        try:
            meta = json.loads((ref.path / METADATA_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IntegrityError(f"'{ref}': {METADATA_FILE} is missing") from None
        except (OSError, ValueError) as e:
            raise IntegrityError(f"'{ref}': {METADATA_FILE} is unreadable ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
            raise IntegrityError(f"'{ref}': {METADATA_FILE} has no 'files' table")
        for filename, record in meta["files"].items():
            # A hand-edited table must not steer verify() or loaders outside the version folder.
            if not _NAME_RE.fullmatch(filename) or ".." in filename or not isinstance(record, dict):
                raise IntegrityError(f"'{ref}': {METADATA_FILE} has a bad entry for file {filename!r}")
        if meta.get("name") != ref.name or meta.get("version") != ref.version:
            found = f"{meta.get('name')}@{meta.get('version')}"
            raise IntegrityError(f"'{ref}': {METADATA_FILE} describes '{found}' (folder was moved or edited)")
        return meta

    def verify(self, ref: ModelRef) -> dict:
        """Recomputes every checksum of a version and returns its metadata.

        Raises:
            IntegrityError: unreadable metadata, a missing, modified or unexpected file.
        """
        meta = self.metadata(ref)
        label = f"{meta.get('kind', 'model')} '{ref}'"
        expected = meta["files"]
        for filename, record in expected.items():
            path = ref.path / filename
            if not path.is_file():
                raise IntegrityError(f"{label}: file {filename} is missing")
            if path.stat().st_size != record.get("bytes") or _sha256_file(path) != record.get("sha256"):
                raise IntegrityError(f"{label}: checksum mismatch for {filename} (file was modified or corrupted)")
        # A stray file could be loaded instead of the published one (e.g. a second *.safetensors).
        unexpected = sorted(p.name for p in ref.path.iterdir() if p.name != METADATA_FILE and p.name not in expected)
        if unexpected:
            raise IntegrityError(f"{label}: unexpected files not in {METADATA_FILE}: {', '.join(unexpected)}")
        return meta

    def open(self, spec: str, *, verify: bool = True) -> tuple[ModelRef, dict]:
        """Resolves ``spec`` and (by default) verifies it; returns the ref and its metadata."""
        ref = self.resolve(spec)
        return ref, (self.verify(ref) if verify else self.metadata(ref))

    def serving_state(self, name: str) -> dict:
        """What the servers of ``name`` should serve: ``{"active", "canary", "history"}``.

        ``active`` is a version or None (nothing recorded: servers take the newest); ``canary`` is None or
        ``{"version", "traffic_percent", "gate", "started_at"}``: a candidate that a share of the requests
        go to while its gate watches it; ``history`` lists every change, oldest first.

        Raises:
            IntegrityError: the state file exists but cannot be read.
        """
        path = self.root / validate_name(name) / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"active": None, "canary": None, "history": []}
        except (OSError, ValueError) as e:
            raise IntegrityError(f"'{name}': {STATE_FILE} is unreadable ({e})") from None
        if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
            raise IntegrityError(f"'{name}': {STATE_FILE} is not a serving state")
        return {"active": state.get("active"), "canary": state.get("canary"), "history": state.get("history", [])}

    def record_active(self, name: str, version: int, *, action: str, by: str | None = None,
                      reason: str | None = None) -> dict:
        """Records ``name@version`` as the version that serves (ending any canary); returns the new state.

        Raises:
            NotFoundError: no such version.
        """
        ref = self.resolve(f"{name}@{version}")
        return self._change_state(ref.name, lambda state: {**state, "active": ref.version, "canary": None},
                                  action=action, version=ref.version, by=by, reason=reason)

    def record_canary(self, name: str, version: int, *, traffic_percent: float, gate: dict, by: str | None = None,
                      reason: str | None = None) -> dict:
        """Starts a canary: ``traffic_percent`` of the requests go to ``name@version`` while ``gate`` watches it.

        Raises:
            NotFoundError: no such version.
        """
        ref = self.resolve(f"{name}@{version}")
        canary = {"version": ref.version, "traffic_percent": float(traffic_percent), "gate": gate,
                  "started_at": time.time()}
        return self._change_state(ref.name, lambda state: {**state, "canary": canary}, action="canary",
                                  version=ref.version, by=by, reason=reason)

    def end_canary(self, name: str, started_at: float, *, promote: bool, by: str | None = None,
                   reason: str | None = None) -> dict | None:
        """Promotes the canary started at ``started_at`` to active, or drops it; None if it already ended.

        Several replicas may judge the same canary at once: only the first writer acts.
        """
        outcome = {}

        def end(state: dict) -> dict | None:
            canary = state.get("canary")
            if not canary or canary.get("started_at") != started_at:
                return None
            outcome["version"] = canary["version"]
            return {**state, "canary": None, "active": canary["version"] if promote else state["active"]}

        return self._change_state(name, end, action="promote" if promote else "canary_rollback",
                                  version=lambda: outcome["version"], by=by, reason=reason)

    def note(self, name: str, version: int, *, action: str, by: str | None = None, reason: str | None = None) -> dict:
        """Adds a history entry that changes nothing (e.g. a canary its offline gate refused)."""
        return self._change_state(name, lambda state: {**state}, action=action, version=version, by=by,
                                  reason=reason)

    def _change_state(self, name: str, change, *, action: str, version, by: str | None,
                      reason: str | None) -> dict | None:
        """Applies ``change(state) -> new state or None`` with a history entry, atomically, under the lock.

        Written as publishing writes (a temporary file, fsync, rename, fsync of the folder) under a
        lock file, so concurrent writers (several replicas, the CLI) never lose an entry and a reader
        sees the old state or the new one, never a torn file.
        """
        folder = self.root / validate_name(name)
        with _locked(folder / STATE_LOCK_FILE):
            state = self.serving_state(name)
            changed = change(state)
            if changed is None:
                return None
            entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "action": action,
                     "version": version() if callable(version) else version, "previous": state["active"],
                     "by": by or _who(), "reason": reason}
            changed["history"] = (state["history"] + [entry])[-MAX_STATE_HISTORY:]
            part = folder / f".{STATE_FILE}.{uuid.uuid4().hex}.part"
            with open(part, "w", encoding="utf-8") as f:
                json.dump(changed, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, folder / STATE_FILE)
            _fsync_dir(folder)
        return changed

    def publish(
        self,
        name: str,
        files: Mapping[str, bytes | str | os.PathLike],
        *,
        kind: str = "model",
        source: str = "trained",
        parent_version: int | None = None,
        metrics: dict | None = None,
        extra: dict | None = None,
    ) -> ModelRef:
        """Publishes ``files`` as the next version of ``name``; safe against crashes and concurrency.

        Everything is staged and fsynced in ``<root>/.tmp/<uuid>/`` and then claimed with one
        directory rename, so readers see either nothing or a complete version.

        Args:
            name: model or LM name (see ``validate_name``).
            files: basename -> bytes to write, or a path to copy.
            kind: "model" or "lm".
            source: "trained" or "imported".
            parent_version: version this one was fine-tuned from, if any.
            metrics: JSON-serialisable evaluation results (e.g. {"wer": 0.12}).
            extra: JSON-serialisable free-form fields, stored under "extra".

        Returns:
            The ref of the new version.
        """
        validate_name(name)
        if kind not in KINDS:
            raise RegistryError(f"invalid kind {kind!r}: expected one of {', '.join(KINDS)}")
        if source not in SOURCES:
            raise RegistryError(f"invalid source {source!r}: expected one of {', '.join(SOURCES)}")
        if not files:
            raise RegistryError(f"nothing to publish for {name!r}: no files given")
        for filename in files:
            if validate_name(filename) == METADATA_FILE:
                raise InvalidNameError(f"invalid file name {filename!r}: reserved for the registry")
        meta: dict = {
            "name": name,
            "version": None,
            "kind": kind,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "source": source,
            "parent_version": parent_version,
            "metrics": metrics or {},
            "files": {},
            "extra": extra or {},
        }
        try:  # fail before copying gigabytes, not after
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise RegistryError(f"metrics/extra for {name!r} are not JSON-serialisable ({e})") from None

        self._clean_stale_tmp()
        staging = self.root / TMP_DIR / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            for filename, content in files.items():
                try:
                    meta["files"][filename] = _write_file(staging / filename, content)
                except OSError as e:
                    where = f" ({e.filename})" if e.filename else ""
                    raise RegistryError(f"cannot publish {name!r}: {filename}: {e.strerror or e}{where}") from e
            ref = self._claim(name, staging, meta)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ref

    def _claim(self, name: str, staging: Path, meta: dict) -> ModelRef:
        """Renames ``staging`` to the next free version folder, retrying when another publisher wins."""
        name_dir = self.root / name
        if not name_dir.is_dir():
            name_dir.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        tried = 0
        while True:
            # Never retry a number already lost, even if the winner's folder is not listed.
            version = max(self.versions(name) + [tried]) + 1
            tried = version
            # Rewritten on every attempt so the claimed folder's metadata always names itself.
            meta["version"] = version
            part = staging / (METADATA_FILE + ".part")
            with open(part, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, staging / METADATA_FILE)
            _fsync_dir(staging)
            target = name_dir / str(version)
            try:
                os.rename(staging, target)
            except OSError as e:
                # Linux says ENOTEMPTY, some filesystems EEXIST: a concurrent publisher took it.
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                raise
            _fsync_dir(name_dir)
            return ModelRef(name, version, target)

    def _clean_stale_tmp(self) -> None:
        """Removes staging folders left by publishes that died more than STALE_TMP_S ago."""
        tmp_root = self.root / TMP_DIR
        if not tmp_root.is_dir():
            return
        cutoff = time.time() - STALE_TMP_S
        for staging in tmp_root.iterdir():
            try:
                # Newest mtime inside, so a slow-but-alive publish is not swept from under itself.
                newest = max([staging.stat().st_mtime] + [p.stat().st_mtime for p in staging.iterdir()])
            except OSError:
                continue  # vanished (claimed or cleaned by someone else) or not a folder
            if newest < cutoff:
                shutil.rmtree(staging, ignore_errors=True)
