#!/usr/bin/env bash
# Container entrypoint: seed the registry, then run the command (default: asr serve).
#
# The image ships the starter models in /app/starter/registry and a seeded /data/registry; a
# fresh named volume gets a copy of the latter. A volume made by an older image, a bind mount
# or a Kubernetes volume does not, so copy every shipped version the registry lacks, the way
# scripts/setup.sh's step_seed_registry does: to a temporary name, then rename, so a server
# reading the same volume never sees half a version. Existing versions are never touched.
# Pods of one Deployment start together on one shared volume: each copies to a name of its own
# and renames with `mv -T`, which fails, rather than nesting, when another pod's copy won.
set -euo pipefail

STARTER="${ASR_STARTER_REGISTRY:-/app/starter/registry}"
TARGET="${ASR_REGISTRY:-/data/registry}"

seed() {
  [[ -d "$STARTER" ]] || return 0
  mkdir -p "$TARGET/.tmp" 2>/dev/null || { echo "[entrypoint] $TARGET is not writable; not seeding" >&2; return 0; }
  local src name version tmp
  for src in "$STARTER"/*/*/; do
    [[ -f "$src/metadata.json" ]] || continue
    version="$(basename "$src")"
    name="$(basename "$(dirname "$src")")"
    [[ -e "$TARGET/$name/$version" ]] && continue
    mkdir -p "$TARGET/$name"
    tmp="$TARGET/.tmp/seed-$name-$version-${HOSTNAME:-host}-$$"
    rm -rf "$tmp"
    cp -r "$src" "$tmp"
    if mv -T "$tmp" "$TARGET/$name/$version" 2>/dev/null; then
      echo "[entrypoint] seeded $name@$version into $TARGET"
    else
      rm -rf "$tmp"  # another replica seeded it first
    fi
  done
}

if [[ "${ASR_SEED_REGISTRY:-1}" == "1" ]]; then
  seed
fi
exec "$@"
