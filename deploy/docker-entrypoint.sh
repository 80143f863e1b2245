#!/usr/bin/env bash
# Container entrypoint: seed the registry, then run the command (default: asr serve).
#
# The image ships the starter models in /app/starter/registry and a seeded /data/registry; a
# fresh named volume gets a copy of the latter. A volume made by an older image, a bind mount
# or a Kubernetes volume does not, so copy every shipped version the registry lacks, the way
# scripts/setup.sh's step_seed_registry does: to a temporary name, then rename, so a server
# reading the same volume never sees half a version. Existing versions are never touched.
set -euo pipefail

STARTER="${ASR_STARTER_REGISTRY:-/app/starter/registry}"
TARGET="${ASR_REGISTRY:-/data/registry}"

seed() {
  [[ -d "$STARTER" ]] || return 0
  mkdir -p "$TARGET/.tmp" 2>/dev/null || { echo "[entrypoint] $TARGET is not writable; not seeding" >&2; return 0; }
  local src name version
  for src in "$STARTER"/*/*/; do
    [[ -f "$src/metadata.json" ]] || continue
    version="$(basename "$src")"
    name="$(basename "$(dirname "$src")")"
    [[ -e "$TARGET/$name/$version" ]] && continue
    mkdir -p "$TARGET/$name"
    rm -rf "$TARGET/.tmp/seed-$name-$version"
    cp -r "$src" "$TARGET/.tmp/seed-$name-$version"
    mv "$TARGET/.tmp/seed-$name-$version" "$TARGET/$name/$version"
    echo "[entrypoint] seeded $name@$version into $TARGET"
  done
}

if [[ "${ASR_SEED_REGISTRY:-1}" == "1" ]]; then
  seed
fi
exec "$@"
