"""Fetching a `.nemo` from where NVIDIA publishes them: the Hugging Face Hub, NGC, or a plain URL.

A fetch ends in one of two ways: a complete local file whose size, and sha256 where the host
states one, were checked, or a ``PullError`` that says in one line what went wrong and whose
``kind`` tells a transport how to answer. Nothing partial is ever handed on.

- ``hf:ORG/REPO[@REVISION][:FILE.nemo]`` goes through ``huggingface_hub`` itself, so ``HF_ENDPOINT``
  (mirrors), ``HF_TOKEN``, ``HF_HUB_OFFLINE``, its cache, its resumed downloads and its progress
  bars behave as they do for every other Hub user. The Hub names a large file's blob by its
  sha256; the bytes are checked against that name.
- ``ngc:ORG/[TEAM/]MODEL:VERSION[:FILE.nemo]`` downloads anonymously from NGC's model API
  (``$ASR_NGC_API_URL``, default NGC's own), the way NeMo's ``from_pretrained`` does for public
  models. NGC states no checksum in the download; the size is checked.
- ``https://HOST/PATH.nemo[#sha256=HEX]`` (``http://`` for a private mirror) is fetched as is; the
  fragment, when given, is checked.

NGC and URL downloads are kept in ``$ASR_CACHE_DIR`` (default ``~/.cache/quartznet-asr``): a
download that breaks resumes from its ``.part`` file, and a file already complete is used
without the network, as the Hub's cache is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.errors import ASRError, Kind

NGC_API_URL_ENV = "ASR_NGC_API_URL"
NGC_API_URL = "https://api.ngc.nvidia.com"
CACHE_DIR_ENV = "ASR_CACHE_DIR"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 30.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Path segments that are names, never "." or ".." (NGC and URL downloads are cached under their names).
_SEGMENT = r"(?!\.\.?(?:/|:|@|$))[\w.-]+"
_HF_REPO = re.compile(rf"^{_SEGMENT}/{_SEGMENT}$")
_NGC_REPO = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{1,2}}$")
_VERSION = re.compile(rf"^{_SEGMENT}$")

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None) as a download goes on."""


class PullError(ASRError):
    """A pull that cannot go on; its ``kind`` (model.errors) says whose fault, for the transport's status.

    BAD_REQUEST: the source or the file is wrong (not a .nemo, an architecture the importer does not
    read); NOT_FOUND: the host has no such model, revision or file; UPSTREAM: the host refused (it
    wants credentials), failed, or sent a truncated or corrupt download; UNAVAILABLE: no answer, or
    offline with nothing cached; STORAGE: the cache or the registry cannot be written.
    """

    def __init__(self, message: str, kind: Kind):
        super().__init__(message, kind=kind, code=f"pull_{kind.value}")


@dataclass(frozen=True)
class Source:
    """A parsed pull source; ``str()`` gives it back in its canonical spelling."""

    scheme: str
    """"hf", "ngc" or "url"."""
    repo: str
    """hf: ORG/REPO; ngc: ORG/[TEAM/]MODEL; url: the URL without its fragment."""
    revision: str | None = None
    """hf: a branch, tag or commit (default: the default branch); ngc: the version (required)."""
    filename: str | None = None
    """The .nemo inside the repository or version (default: the only one there)."""
    sha256: str | None = None
    """url only: the checksum the #sha256= fragment stated."""

    def __str__(self) -> str:
        if self.scheme == "url":
            return self.repo + (f"#sha256={self.sha256}" if self.sha256 else "")
        revision = {"hf": "@", "ngc": ":"}[self.scheme] + self.revision if self.revision else ""
        return f"{self.scheme}:{self.repo}{revision}" + (f":{self.filename}" if self.filename else "")

    @property
    def default_name(self) -> str:
        """The registry name a pull publishes under unless told otherwise: the model's own name.

        That is the repository's on the Hub, the file's for a URL, and for NGC the model's, or the
        file's when one is named (NeMo's first English models share one NGC model, one file each).
        """
        if self.scheme == "url":
            stem = Path(urllib.parse.urlparse(self.repo).path).name
        elif self.scheme == "ngc" and self.filename:
            stem = Path(self.filename).name
        else:
            stem = self.repo.rsplit("/", 1)[1]
        stem = stem[:-len(".nemo")] if stem.endswith(".nemo") else stem
        return re.sub(r"[^\w.-]", "-", stem).strip(".-") or "pulled-model"


@dataclass(frozen=True)
class Fetched:
    """A complete, checked download and where it came from."""

    path: Path
    source: Source
    size_bytes: int
    sha256: str
    resolved: str
    """What exactly was fetched: the Hub's commit, NGC's version, or the URL."""
    license: str | None = None
    checked: tuple[str, ...] = ()
    """Which checks the host made possible: "size", "sha256"."""


def is_source(spec: str) -> bool:
    """Whether ``spec`` names a hub (``hf:``, ``ngc:``, a URL) rather than a registry NAME[@VERSION]."""
    return spec.startswith(("hf:", "ngc:", "https://", "http://"))


def parse_source(spec: str) -> Source:
    """Parses ``hf:ORG/REPO[@REV][:FILE]``, ``ngc:ORG/[TEAM/]MODEL:VERSION[:FILE]`` or a URL."""
    spec = spec.strip()
    if spec.startswith(("https://", "http://")):
        url, _, fragment = spec.partition("#")
        sha256 = None
        if fragment:
            key, _, value = fragment.partition("=")
            if key != "sha256" or not _SHA256.match(value.lower()):
                raise PullError(f"invalid source {spec!r}: the only fragment understood is #sha256=<64 hex digits>",
                                Kind.BAD_REQUEST)
            sha256 = value.lower()
        if not urllib.parse.urlparse(url).netloc:
            raise PullError(f"invalid source {spec!r}: no host in the URL", Kind.BAD_REQUEST)
        return Source("url", url, sha256=sha256)
    scheme, _, rest = spec.partition(":")
    if scheme == "hf":
        rest, _, filename = rest.partition(":")
        repo, _, revision = rest.partition("@")
        if not _HF_REPO.match(repo):
            raise PullError(f"invalid source {spec!r}: expected hf:ORG/REPO[@REVISION][:FILE.nemo]", Kind.BAD_REQUEST)
        return Source("hf", repo, revision or None, _checked_filename(spec, filename))
    if scheme == "ngc":
        repo, _, rest = rest.partition(":")
        version, _, filename = rest.partition(":")
        if not _NGC_REPO.match(repo) or not _VERSION.match(version):
            raise PullError(f"invalid source {spec!r}: expected ngc:ORG/[TEAM/]MODEL:VERSION[:FILE.nemo]", Kind.BAD_REQUEST)
        return Source("ngc", repo, version, _checked_filename(spec, filename))
    raise PullError(f"invalid source {spec!r}: expected hf:ORG/REPO, ngc:ORG/[TEAM/]MODEL:VERSION or an https:// URL",
                    Kind.BAD_REQUEST)


def _checked_filename(spec: str, filename: str) -> str | None:
    if not filename:
        return None
    if not filename.endswith(".nemo") or ".." in filename.split("/") or filename.startswith("/"):
        raise PullError(f"invalid source {spec!r}: the file must be a .nemo inside the repository", Kind.BAD_REQUEST)
    return filename


def fetch(source: Source, *, progress: Progress | None = None, cache_dir: Path | None = None) -> Fetched:
    """Downloads (or finds in the cache) the source's .nemo and checks it; see the module docstring."""
    if source.scheme == "hf":
        return _fetch_hf(source, progress)
    cache = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "quartznet-asr")
    if source.scheme == "ngc":
        filename = source.filename or f"{source.repo.rsplit('/', 1)[1]}.nemo"
        base = os.environ.get(NGC_API_URL_ENV, NGC_API_URL).rstrip("/")
        url = f"{base}/v2/models/{source.repo}/versions/{source.revision}/files/{filename}"
        target = cache / "ngc" / source.repo / source.revision / filename
        return _fetch_url(source, url, target, None, f"{source.repo}:{source.revision}", progress)
    key = hashlib.sha256(source.repo.encode()).hexdigest()[:16]
    name = Path(urllib.parse.urlparse(source.repo).path).name
    name = name if name not in ("", ".", "..") else "model.nemo"
    return _fetch_url(source, source.repo, cache / "url" / key / name, source.sha256, source.repo, progress)


# --- the Hugging Face Hub -------------------------------------------------------------------


def _fetch_hf(source: Source, progress: Progress | None) -> Fetched:
    import huggingface_hub as hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    endpoint, cache_dir = _hf_settings()
    info = None
    try:
        info = hub.HfApi(endpoint=endpoint).model_info(source.repo, revision=source.revision, files_metadata=True)
    except (OfflineModeIsEnabled, *_connection_errors()):
        pass  # offline: the cache answers below, or says it cannot
    except Exception as exc:  # noqa: BLE001 - the Hub's errors, said in one line
        raise _hf_error(source, exc) from None
    try:
        if info is not None:
            nemo_files = [s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".nemo")]
            filename = _pick_file(source, nemo_files)
            sibling = next(s for s in info.siblings if s.rfilename == filename)
            # By the revision asked for, not the commit, so that the cache records the branch or tag and an
            # offline pull of the same source finds it; the commit is checked to be the one described.
            path = Path(hub.hf_hub_download(source.repo, filename, revision=source.revision, endpoint=endpoint,
                                            cache_dir=cache_dir, tqdm_class=_reporting_tqdm(progress)))
            if path.parent.parent.name == "snapshots" and info.sha and path.parent.name != info.sha:
                raise PullError(f"{source}: the repository changed during the pull (commit {info.sha[:12]} became "
                                f"{path.parent.name[:12]}); run the pull again", Kind.UPSTREAM)
            expected_size = sibling.lfs.size if sibling.lfs else sibling.size
            stated_sha256 = sibling.lfs.sha256 if sibling.lfs else None
            resolved = info.sha
            card = info.card_data
            license_ = (card.get("license") if card else None) or _license_tag(info.tags)
        else:
            path, filename = _hf_cached(source, hub, cache_dir)
            expected_size, stated_sha256, license_ = None, None, None
            resolved = path.parent.name if path.parent.parent.name == "snapshots" else source.revision
    except PullError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _hf_error(source, exc) from None
    # The Hub states a large file's sha256 (its LFS pointer) and the cache names the blob by it; offline, the
    # name is all there is. Either way the content must match.
    blob = Path(os.path.realpath(path))
    expected_sha256 = stated_sha256 or (blob.name if _SHA256.match(blob.name) else None)
    try:
        fetched = _checked(path, source, expected_size, expected_sha256, resolved, license_)
    except PullError:
        blob.unlink(missing_ok=True)  # so that the next pull downloads it again instead of failing the same way
        raise
    return fetched


def _hf_settings() -> tuple[str | None, str | None]:
    """HF_ENDPOINT and the Hub cache as the environment says now (huggingface_hub reads them once, at import)."""
    home = os.environ.get("HF_HOME")
    cache = os.environ.get("HF_HUB_CACHE") or (str(Path(home) / "hub") if home else None)
    return os.environ.get("HF_ENDPOINT") or None, cache


def _hf_cached(source: Source, hub, cache_dir: str | None) -> tuple[Path, str]:
    """The source's .nemo from the Hub's cache alone (offline, or the Hub unreachable)."""
    try:
        if source.filename:
            return Path(hub.hf_hub_download(source.repo, source.filename, revision=source.revision,
                                            cache_dir=cache_dir, local_files_only=True)), source.filename
        folder = Path(hub.snapshot_download(source.repo, revision=source.revision, allow_patterns=["*.nemo"],
                                            cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: the network was needed
        raise PullError(f"cannot reach the Hugging Face Hub for {source} and it is not in the local cache "
                        "(HF_HUB_OFFLINE, HF_ENDPOINT)", Kind.UNAVAILABLE) from None
    filename = _pick_file(source, sorted(str(p.relative_to(folder)) for p in folder.rglob("*.nemo")))
    return folder / filename, filename


def _pick_file(source: Source, nemo_files: list[str]) -> str:
    if source.filename:
        if source.filename not in nemo_files:
            raise PullError(f"{source}: the repository has no {source.filename}"
                            + (f" (it has {', '.join(nemo_files)})" if nemo_files else ""), Kind.NOT_FOUND)
        return source.filename
    if len(nemo_files) != 1:
        raise PullError(f"{source}: " + (f"{len(nemo_files)} .nemo files ({', '.join(nemo_files)}); name one as "
                                         f"{source}:FILE.nemo" if nemo_files else "no .nemo file in the repository"),
                        Kind.BAD_REQUEST if nemo_files else Kind.NOT_FOUND)
    return nemo_files[0]


def _license_tag(tags: list[str] | None) -> str | None:
    return next((t.split(":", 1)[1] for t in tags or [] if t.startswith("license:")), None)


def _hf_error(source: Source, exc: Exception) -> PullError:
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, GatedRepoError):
        return PullError(f"{source}: the repository is gated: accept its terms on the Hub and set HF_TOKEN", Kind.UPSTREAM)
    if isinstance(exc, RepositoryNotFoundError):
        return PullError(f"{source}: no such model repository on the Hub (or it is private: set HF_TOKEN)",
                         Kind.NOT_FOUND)
    if isinstance(exc, RevisionNotFoundError):
        return PullError(f"{source}: no revision {source.revision!r} in the repository", Kind.NOT_FOUND)
    if isinstance(exc, LocalEntryNotFoundError) or isinstance(exc, _connection_errors()):
        return PullError(f"cannot reach the Hugging Face Hub for {source}: {_one_line(exc)}", Kind.UNAVAILABLE)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return PullError(f"{source}: the Hub refused the download (HTTP {status}; set HF_TOKEN)", Kind.UPSTREAM)
    if isinstance(exc, HfHubHTTPError) and status == 404:
        return PullError(f"{source}: not found on the Hub", Kind.NOT_FOUND)
    if isinstance(exc, HfHubHTTPError):
        return PullError(f"{source}: the Hub answered HTTP {status}", Kind.UPSTREAM)
    if type(exc).__name__ in ("RemoteProtocolError", "ReadTimeout", "ReadError"):  # httpx2's, after its retries
        return PullError(f"{source}: the download broke off ({_one_line(exc)}); run the pull again", Kind.UPSTREAM)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
        return PullError(f"cannot write the Hugging Face cache for {source}: {exc.strerror}", Kind.STORAGE)
    if "consistency check failed" in str(exc).lower():  # huggingface_hub's own size check after a download
        return PullError(f"{source}: the download was incomplete (the Hub's stated size was not received)",
                         Kind.UPSTREAM)
    return PullError(f"{source}: {_one_line(exc)}", Kind.UPSTREAM)


def _reporting_tqdm(progress: Progress | None):
    """A tqdm class for huggingface_hub that also reports to ``progress`` (None: the Hub's usual bar)."""
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # the service has no terminal; the job's progress is read over HTTP
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            super().update(n)
            progress(int(self.n), int(self.total) if self.total else None)

    return Reporting


# --- NGC and plain URLs ---------------------------------------------------------------------


def _fetch_url(source: Source, url: str, target: Path, expected_sha256: str | None, resolved: str,
               progress: Progress | None) -> Fetched:
    """Downloads ``url`` to ``target`` (resuming ``target.part``) unless ``target`` is already complete."""
    meta_path = target.with_name(target.name + ".json")
    if target.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return _checked(target, source, meta["size_bytes"], expected_sha256 or meta["sha256"], resolved, None)
    part = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        expected_size = _download(url, part, progress, str(source))
    except OSError as exc:
        raise PullError(f"cannot write the download cache: {exc.strerror or exc}", Kind.STORAGE) from None
    fetched = _checked(part, source, expected_size, expected_sha256, resolved, None)
    os.replace(part, target)
    meta_path.write_text(json.dumps({"url": url, "size_bytes": fetched.size_bytes, "sha256": fetched.sha256}))
    return Fetched(target, source, fetched.size_bytes, fetched.sha256, resolved, None, fetched.checked)


def _download(url: str, part: Path, progress: Progress | None, what: str) -> int | None:
    """Appends the rest of ``url`` to ``part`` (a Range request when some is there); returns the full size."""
    import httpx

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=_TIMEOUT_S) as response:
            if response.status_code == 416 and have:  # the part is already whole (or longer than the file)
                part.unlink()
                return _download(url, part, progress, what)
            _raise_for_status(response, what)
            resumed = response.status_code == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            bar = _bar(total, have, what) if progress is None else None
            with open(part, "ab" if resumed else "wb") as out:
                for chunk in response.iter_bytes():  # as it arrives, so that a broken transfer keeps its part
                    out.write(chunk)
                    have += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    else:
                        progress(have, total)
                out.flush()
                os.fsync(out.fileno())
            if bar is not None:
                bar.close()
            return total
    except httpx.HTTPError as exc:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            raise PullError(f"cannot reach the host for {what}: {_one_line(exc)}", Kind.UNAVAILABLE) from None
        raise PullError(f"{what}: the download broke off ({_one_line(exc)}); run the pull again to resume it",
                        Kind.UPSTREAM) from None


def _raise_for_status(response, what: str) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    if status == 404:
        raise PullError(f"{what}: not found (HTTP 404)", Kind.NOT_FOUND)
    if status in (401, 403):
        raise PullError(f"{what}: the host refused the download (HTTP {status}); only public models can be pulled "
                        "anonymously", Kind.UPSTREAM)
    raise PullError(f"{what}: the host answered HTTP {status}", Kind.UPSTREAM)


def _bar(total: int | None, initial: int, what: str):
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal only, so that logs and captured output keep one line per message.
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=what, leave=False,
                disable=None)


# --- checks ---------------------------------------------------------------------------------


def _checked(path: Path, source: Source, expected_size: int | None, expected_sha256: str | None, resolved: str,
             license_: str | None) -> Fetched:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        path.unlink(missing_ok=True)
        raise PullError(f"{source}: the download is {size} bytes where {expected_size} were stated (truncated); "
                        "run the pull again", Kind.UPSTREAM)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        path.unlink(missing_ok=True)
        raise PullError(f"{source}: checksum mismatch (sha256 {sha256[:12]}..., expected {expected_sha256[:12]}...); "
                        "the corrupt download was removed", Kind.UPSTREAM)
    checked = tuple(name for name, value in (("size", expected_size), ("sha256", expected_sha256)) if value)
    return Fetched(path, source, size, sha256, resolved, license_, checked)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """No answer from the host, for httpx (ours) and httpx2 (huggingface_hub's fork of it)."""
    import httpx

    errors: list[type[BaseException]] = [httpx.ConnectError, httpx.ConnectTimeout, ConnectionError]
    try:
        import httpx2

        errors += [httpx2.ConnectError, httpx2.ConnectTimeout]
    except ImportError:
        pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
