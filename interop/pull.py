"""`asr models pull`: a published .nemo fetched from its hub, checked, imported and published with a card.

One function, used by the CLI, the admin API and a server whose default model is a hub source.
The registry only ever sees a complete version (``Registry.publish`` stages and renames); every
failure before that leaves it as it was. A second pull of a file already published under the
same name answers with that version instead of publishing a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from interop.catalog import entry_for
from interop.hubs import Fetched, Progress, PullError, fetch, parse_source
from model.errors import Kind
from model.registry import ModelRef, Registry, RegistryError, validate_name


@dataclass(frozen=True)
class Pulled:
    ref: ModelRef
    reused: bool
    """True when the registry already held this file under the name (nothing was published)."""
    fetched: Fetched


def pull_model(registry: Registry, spec: str, *, name: str | None = None, activate: bool = False,
               progress: Progress | None = None, by: str = "asr models pull") -> Pulled:
    """Fetches ``spec`` (see interop.hubs), imports it and publishes it as the next version of ``name``.

    Raises:
        PullError: the one-line reason, with a ``kind`` for the transport's status.
    """
    source = parse_source(spec)
    try:
        name = validate_name(name or source.default_name)
    except RegistryError as exc:
        raise PullError(str(exc), Kind.BAD_REQUEST) from None
    fetched = fetch(source, progress=progress)
    ref = published_copy(registry, name, fetched.sha256)
    reused = ref is not None
    if ref is None:
        ref = _import_and_publish(registry, name, fetched)
    if activate:
        try:
            registry.record_active(name, ref.version, action="activate", by=by, reason=f"pulled from {source}")
        except (OSError, RegistryError) as exc:
            raise PullError(f"cannot record {ref} as active: {exc}", Kind.STORAGE) from None
    return Pulled(ref, reused, fetched)


def published_copy(registry: Registry, name: str, sha256: str) -> ModelRef | None:
    """The newest version of ``name`` that was pulled from a file with this sha256, if any."""
    for version in sorted(registry.versions(name), reverse=True):
        ref = registry.resolve(f"{name}@{version}")
        if ((registry.metadata(ref).get("extra") or {}).get("pulled") or {}).get("sha256") == sha256:
            return ref
    return None


def pulled_from(registry: Registry, name: str, spec: str) -> ModelRef | None:
    """The newest version of ``name`` pulled from the source ``spec`` (as spelled canonically), if any."""
    wanted = str(parse_source(spec))
    for version in sorted(registry.versions(name), reverse=True):
        ref = registry.resolve(f"{name}@{version}")
        if ((registry.metadata(ref).get("extra") or {}).get("pulled") or {}).get("source") == wanted:
            return ref
    return None


def _import_and_publish(registry: Registry, name: str, fetched: Fetched) -> ModelRef:
    from interop.nemo import NemoImportError, import_nemo
    from model.checkpoint import publish_model

    source = fetched.source
    try:
        model, info = import_nemo(fetched.path)
    except NemoImportError as exc:
        # The cached file's path means nothing to the user (nor should a server tell it): name the source.
        raise PullError(str(exc).replace(f"{fetched.path}: ", "").replace(str(fetched.path), str(source))
                        + f" ({source})", Kind.BAD_REQUEST) from None
    entry = entry_for(source)
    pulled = {"source": str(source), "resolved": fetched.resolved, "sha256": fetched.sha256,
              "size_bytes": fetched.size_bytes, "checked": list(fetched.checked),
              "license": fetched.license or (entry.license if entry else None)}
    card = {"summary": f"{entry.title if entry else name}, pulled from {source}",
            "trained_on": list(entry.trained_on) if entry else [],
            "license": pulled["license"],
            "source": str(source)}
    if entry is not None:
        card["published_wer"] = dict(entry.published_wer)
        card["general_english"] = True
    try:
        return publish_model(registry, name, model, source="imported", extra={"nemo": info, "pulled": pulled,
                                                                              "card": card})
    except (OSError, RegistryError) as exc:
        raise PullError(f"cannot publish {name!r} to the registry: {' '.join(str(exc).split())}", Kind.STORAGE) from None
