"""Heartbeats of the servers that share a registry: who serves what, how busy, and what failed.

Every server writes one small JSON file, ``<registry>/.fleet/<replica>.json``, each time it polls
the registry (replaced whole: written beside it and renamed over it), so the registry folder that
replicas already share (NFS, a Kubernetes ReadWriteMany volume) is the whole control plane: no
server to run. A replica that stops writing is reported as lost once its last report is older than
``stale_after_s``; its file stays, so the status says when it was last seen.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

__all__ = ["FLEET_DIR", "fleet_status", "replica_file", "write_heartbeat"]

FLEET_DIR = ".fleet"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def replica_file(root: Path, replica: str) -> Path:
    """Where ``replica``'s heartbeat lives (its id made safe as a file name)."""
    return Path(root) / FLEET_DIR / f"{_SAFE.sub('_', replica)}.json"


def write_heartbeat(root: Path, beat: dict) -> None:
    """Replaces ``beat["replica"]``'s heartbeat with ``beat`` plus ``reported_at`` (Unix seconds)."""
    path = replica_file(root, beat["replica"])
    path.parent.mkdir(exist_ok=True)  # never the registry itself: a server must not recreate a removed registry
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    part.write_text(json.dumps({**beat, "reported_at": time.time()}, indent=1), encoding="utf-8")
    os.replace(part, path)


def fleet_status(root: Path, stale_after_s: float, now: float | None = None) -> list[dict]:
    """Every replica that ever reported, by id: its last heartbeat plus ``age_s`` and ``alive``.

    A heartbeat that cannot be read (being replaced on a filesystem without atomic rename, or
    damaged) is listed with an ``error`` rather than dropped.
    """
    folder = Path(root) / FLEET_DIR
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    replicas = []
    for path in sorted(folder.glob("*.json")):
        try:
            beat = json.loads(path.read_text(encoding="utf-8"))
            age_s = max(0.0, now - float(beat["reported_at"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            replicas.append({"replica": path.stem, "alive": False, "error": f"unreadable heartbeat ({e})"})
            continue
        replicas.append({**beat, "age_s": round(age_s, 1), "alive": age_s <= stale_after_s})
    return replicas
