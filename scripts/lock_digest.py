"""The sha256 of the pyproject.toml tables the lock files are made from (printed, one line).

    python scripts/lock_digest.py                  # the digest scripts/lock.sh writes into the locks
    python scripts/lock_digest.py --build-requires # build-system.requires, one per line

Only what decides the resolution counts (requires-python, dependencies, optional dependencies,
build requirements), so editing the description or pytest settings does not stale the lock.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def resolution_inputs(pyproject: dict) -> dict:
    project = pyproject["project"]
    return {
        "requires-python": project.get("requires-python", ""),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-requires": pyproject.get("build-system", {}).get("requires", []),
    }


def digest(pyproject: dict) -> str:
    canonical = json.dumps(resolution_inputs(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def main(argv: list[str]) -> int:
    pyproject = tomllib.loads(PYPROJECT.read_text())
    if argv == ["--build-requires"]:
        print("\n".join(resolution_inputs(pyproject)["build-requires"]))
    elif not argv:
        print(digest(pyproject))
    else:
        print("usage: lock_digest.py [--build-requires]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
