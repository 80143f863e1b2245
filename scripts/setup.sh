#!/usr/bin/env bash
# Prepare a checkout for development, tests and serving. Safe to re-run: every step checks
# what is already there and returns in well under a second when nothing changed.
#
#   1. Debian packages (compilers, cmake, boost, compression libs, libsndfile) via apt-get.
#   2. .venv holding exactly requirements.lock (pip --require-hashes --no-deps; a changed lock
#      rebuilds .venv from scratch), then the project itself in editable mode, resolving nothing.
#   2b. .venv-client/floors and .venv-client/newest: the client's own dependencies only, at both ends of
#      client/pyproject.toml (client/locks/), for tests/client/test_floors.py (not with ASR_SKIP_TEST_TOOLS=1).
#   3. KenLM's `lmplz` and `build_binary`, compiled from the kenlm source distribution that the
#      lock pins (fetched by `pip download`, sha256 checked), installed into .venv/bin.
#   4. gRPC stubs via scripts/gen_protos.sh, when the proto and that script exist.
#   5. The starter models seeded into the registry.
#   6. A check that the install works: every runtime module imports and the starter model
#      transcribes a bundled clip (scripts/check_install.py).
#
# Every download goes through pip or apt-get by package name, so pip's own settings apply:
# PIP_INDEX_URL for a mirror, HTTPS_PROXY for a proxy, PIP_FIND_LINKS + PIP_NO_INDEX=1 for an
# offline wheelhouse. It never starts a server. Typical use: scripts/setup.sh && .venv/bin/asr serve
#
# Environment:
#   PYTHON       interpreter used to create .venv (default: python3; must be 3.11)
#   KENLM_JOBS   parallel compile jobs for KenLM (default: 2)
#   ASR_SKIP_APT=1    skip the apt step (non-Debian hosts with the packages installed another way)
#   ASR_SKIP_CHECK=1  skip the final check (the Docker image's dependency layer, which has no code yet)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"
BUILD_LOCK="$ROOT/build-requirements.lock"
LOCK_STAMP="$VENV/.setup-lock.sha256"
PROJECT_STAMP="$VENV/.setup-project.sha256"

APT_PACKAGES=(
  build-essential cmake
  libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
  zlib1g-dev libbz2-dev liblzma-dev libsndfile1
)

# KenLM source: the sdist of the `kenlm` project on PyPI carries the complete C++ tree
# (top-level CMakeLists.txt, lm/builder/lmplz_main.cc, lm/build_binary_main.cc, util/).
# Debian 12 has no kenlm package. The lock pins its version and sha256, the same sdist pip
# builds the `kenlm` Python module from, so the binaries and the module reading their output
# come from one source.
KENLM_MAX_ORDER=6
KENLM_JOBS="${KENLM_JOBS:-2}"
KENLM_CACHE="$ROOT/.cache/kenlm"
KENLM_BUILD="$KENLM_CACHE/build"
KENLM_STAMP="$KENLM_BUILD/.setup-kenlm.stamp"

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

now() { echo "${EPOCHREALTIME}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

TIMINGS=()
run_step() {  # run_step <label> <function>
  local label="$1" fn="$2" start
  start="$(now)"
  log "== ${label}"
  "$fn"
  local took
  took="$(elapsed "$start")"
  TIMINGS+=("${label}: ${took}")
  log "== ${label} done in ${took}"
}

sha256_of() { sha256sum "$1" | awk '{print $1}'; }

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root for '$*' (not root and sudo is not installed)"
  fi
}

# ---------------------------------------------------------------------------------------------
# The starter model and its LM ship in starter/registry; the service and CLI read the registry
# at $ASR_REGISTRY (default ./registry), so copy in any shipped version it does not have yet.
# Each version is copied to a temporary name and renamed, so readers never see half a version.
step_seed_registry() {
  local target="${ASR_REGISTRY:-$ROOT/registry}" src name version
  [[ -d "$ROOT/starter/registry" ]] || { log "no starter/registry; nothing to seed"; return 0; }
  mkdir -p "$target/.tmp"
  for src in "$ROOT"/starter/registry/*/*/; do
    [[ -f "$src/metadata.json" ]] || continue
    version="$(basename "$src")"
    name="$(basename "$(dirname "$src")")"
    if [[ -e "$target/$name/$version" ]]; then
      continue
    fi
    mkdir -p "$target/$name"
    cp -r "$src" "$target/.tmp/seed-$name-$version"
    mv "$target/.tmp/seed-$name-$version" "$target/$name/$version"
    log "seeded $name@$version into $target"
  done
  # `asr` from any directory: the per-user registry (model/registry.py user_registry_root) is this checkout's,
  # unless one is there already (another checkout's, or the user's own); a link left dangling is replaced.
  local user_dir="${XDG_DATA_HOME:-$HOME/.local/share}/quartznet-asr"
  if [[ ! -e "$user_dir/registry" ]] && mkdir -p "$user_dir" 2>/dev/null; then
    ln -sfn "$(cd "$target" && pwd)" "$user_dir/registry" && log "linked $user_dir/registry -> $target"
  fi
}

step_apt() {
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11 (Debian 12: apt-get install python3)"
  local packages=("${APT_PACKAGES[@]}")
  # Debian splits ensurepip out of python3; `python3 -m venv` needs it to create .venv.
  if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    local ver
    ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    packages+=("python${ver}-venv")
  fi

  if [[ "${ASR_SKIP_APT:-}" == "1" ]]; then
    log "ASR_SKIP_APT=1: not checking system packages"
    return
  fi
  apt_install_missing "apt packages" "${packages[@]}"
}

# apt_install_missing <what> <package>...: installs those not yet installed, quietly, showing
# the tail of apt's log if it fails.
apt_install_missing() {
  local what="$1" missing=() pkg
  shift
  for pkg in "$@"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "all $# $what present"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "missing $what (${missing[*]}) and no apt-get; install them by hand"
  log "installing $what: ${missing[*]}"
  local apt_log
  apt_log="$(mktemp)"
  if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; \
       } >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    die "apt-get failed for $what (full log: $apt_log)"
  fi
  rm -f "$apt_log"
}

# ---------------------------------------------------------------------------------------------
# Tools only the deployment tests (tests/deploy) use, from Debian too: a headless browser for
# the web page, Prometheus + promtool, docker-compose to validate docker-compose.yml (no
# Docker daemon needed), and nginx, the load balancer the fleet test puts in front of three
# replicas. ASR_SKIP_TEST_TOOLS=1 skips them (the Docker image build sets it). On a host that
# runs systemd the prometheus and nginx packages also enable their services (:9090, :80); the
# tests start their own on free ports and do not need them.
TEST_APT_PACKAGES=(chromium prometheus docker-compose nginx)

step_test_tools() {
  if [[ "${ASR_SKIP_TEST_TOOLS:-}" == "1" || "${ASR_SKIP_APT:-}" == "1" ]]; then
    log "ASR_SKIP_TEST_TOOLS/ASR_SKIP_APT set: not checking the test tools"
    return
  fi
  apt_install_missing "test tool packages" "${TEST_APT_PACKAGES[@]}"
}

# ---------------------------------------------------------------------------------------------
step_venv() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is Python $("$PYTHON" -V 2>&1); this project needs 3.11 (set PYTHON=...)"
  [[ -f "$LOCK" && -f "$BUILD_LOCK" ]] || die "requirements.lock or build-requirements.lock is missing; run scripts/lock.sh"
  local digest
  digest="$("$PYTHON" scripts/lock_digest.py)"
  grep -qxF "# pyproject-sha256: $digest" "$LOCK" && grep -qxF "# pyproject-sha256: $digest" "$BUILD_LOCK" \
    || die "pyproject.toml changed since requirements.lock was made; run scripts/lock.sh to refresh the lock"

  local lock_sum have=""
  lock_sum="$(cat "$LOCK" "$BUILD_LOCK" | sha256sum | awk '{print $1}')"
  [[ -f "$LOCK_STAMP" ]] && have="$(cat "$LOCK_STAMP")"
  if [[ -x "$VENV/bin/python" && "$lock_sum" == "$have" ]] && "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    log "requirements.lock already installed"
  else
    # A fresh .venv whenever the lock changed: upgrading in place would keep packages the lock dropped.
    log "creating .venv with $("$PYTHON" -V 2>&1) and installing requirements.lock"
    "$PYTHON" -m venv --clear "$VENV"
    local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --require-hashes --no-deps)
    "${pip[@]}" -r "$BUILD_LOCK"
    # kenlm is a source distribution: build it with the locked setuptools rather than fetching
    # unpinned build tools into an isolated environment.
    "${pip[@]}" --no-build-isolation -r "$LOCK"
    echo "$lock_sum" >"$LOCK_STAMP"
    rm -f "$PROJECT_STAMP"
  fi

  local want
  want="$(sha256_of pyproject.toml)"
  have=""
  [[ -f "$PROJECT_STAMP" ]] && have="$(cat "$PROJECT_STAMP")"
  if [[ "$want" != "$have" ]]; then
    log "installing the project itself (editable, no dependency resolution)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps --no-build-isolation -e .
    "$VENV/bin/python" -m pip check >/dev/null \
      || { "$VENV/bin/python" -m pip check >&2; die "the installed packages do not fit together (pip check above); run scripts/lock.sh"; }
    echo "$want" >"$PROJECT_STAMP"
  fi
}

# ---------------------------------------------------------------------------------------------
# kenlm_pin <version|sha256>: kenlm's pinned version or its sdist's sha256, read from the lock.
kenlm_pin() {
  awk -v want="$1" '
    /^kenlm==/ { split($1, a, "=="); version = a[2]; inside = 1; next }
    inside && /--hash=sha256:/ { sub(/.*--hash=sha256:/, ""); sub(/[ \\].*/, ""); hash = $0; inside = 0 }
    END { if (version == "" || hash == "") exit 1; print (want == "version" ? version : hash) }
  ' "$LOCK" || die "requirements.lock pins no kenlm sdist; run scripts/lock.sh"
}

fetch_kenlm_sdist() {  # fetch_kenlm_sdist <version> <sha256> <dest>
  local version="$1" sha="$2" dest="$3" tmp got
  if [[ -f "$dest" && "$(sha256_of "$dest")" == "$sha" ]]; then
    return
  fi
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp -d)"
  log "fetching the kenlm ${version} sdist with pip download"
  "$VENV/bin/python" -m pip download --disable-pip-version-check --no-input -q --no-deps \
    --no-binary kenlm --no-build-isolation -d "$tmp" "kenlm==${version}" \
    || { rm -rf "$tmp"; die "pip download kenlm==${version} failed; check pip's index settings (PIP_INDEX_URL)"; }
  got="$(sha256_of "$tmp/kenlm-${version}.tar.gz")"
  if [[ "$got" != "$sha" ]]; then
    rm -rf "$tmp"
    die "kenlm-${version}.tar.gz sha256 mismatch: got $got, the lock says $sha"
  fi
  mv "$tmp/kenlm-${version}.tar.gz" "$dest"
  rm -rf "$tmp"
}

# The client package alone, at its declared floors and at the newest versions (client/locks/), for
# tests/client/test_floors.py: two small venvs beside .venv, without torch or anything of the server's.
step_client_venvs() {
  if [[ "${ASR_SKIP_TEST_TOOLS:-}" == "1" ]]; then
    log "ASR_SKIP_TEST_TOOLS=1: not making the client's test venvs"
    return
  fi
  local end lock venv want have
  for end in floors newest; do
    lock="client/locks/$end.lock" venv="$ROOT/.venv-client/$end"
    [[ -f "$lock" ]] || die "$lock is missing; run scripts/lock.sh"
    grep -qxF "# client-pyproject-sha256: $(sha256_of client/pyproject.toml)" "$lock" \
      || die "client/pyproject.toml changed since $lock was made; run scripts/lock.sh"
    want="$(sha256_of "$lock")" have=""
    [[ -f "$venv/.setup-lock.sha256" ]] && have="$(cat "$venv/.setup-lock.sha256")"
    if [[ -x "$venv/bin/python" && "$want" == "$have" ]]; then
      log "$lock already installed"
      continue
    fi
    log "creating .venv-client/$end from $lock"
    "$PYTHON" -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q --require-hashes --no-deps -r "$lock"
    echo "$want" >"$venv/.setup-lock.sha256"
  done
}

step_kenlm() {
  local bin version sha tarball src stamp_value
  version="$(kenlm_pin version)"
  sha="$(kenlm_pin sha256)"
  tarball="$KENLM_CACHE/kenlm-${version}.tar.gz"
  src="$KENLM_CACHE/kenlm-${version}"
  stamp_value="${version} ${sha} max_order=${KENLM_MAX_ORDER}"
  if [[ ! -f "$KENLM_STAMP" || "$(cat "$KENLM_STAMP")" != "$stamp_value" \
        || ! -x "$KENLM_BUILD/bin/lmplz" || ! -x "$KENLM_BUILD/bin/build_binary" ]]; then
    fetch_kenlm_sdist "$version" "$sha" "$tarball"
    rm -rf "$src"
    tar -xzf "$tarball" -C "$KENLM_CACHE"
    [[ -f "$src/CMakeLists.txt" && -f "$src/lm/builder/lmplz_main.cc" ]] \
      || die "kenlm ${version} sdist lacks the C++ sources (CMakeLists.txt, lm/builder)"
    # A cache configured for another source folder (checkout moved) makes cmake refuse to run.
    if [[ -f "$KENLM_BUILD/CMakeCache.txt" ]] \
        && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$KENLM_BUILD/CMakeCache.txt"; then
      rm -rf "$KENLM_BUILD"
    fi
    log "building lmplz and build_binary (kenlm ${version}, -j${KENLM_JOBS}); takes a few minutes"
    cmake -S "$src" -B "$KENLM_BUILD" -DCMAKE_BUILD_TYPE=Release \
      -DKENLM_MAX_ORDER="$KENLM_MAX_ORDER" -DCOMPILE_TESTS=OFF -DENABLE_PYTHON=OFF \
      -Wno-dev >"$KENLM_CACHE/cmake.log" 2>&1 \
      || { tail -n 30 "$KENLM_CACHE/cmake.log" >&2; die "cmake configure failed (log: $KENLM_CACHE/cmake.log)"; }
    make -C "$KENLM_BUILD" -j"$KENLM_JOBS" lmplz build_binary >"$KENLM_CACHE/make.log" 2>&1 \
      || { tail -n 30 "$KENLM_CACHE/make.log" >&2; die "kenlm build failed (log: $KENLM_CACHE/make.log)"; }
    echo "$stamp_value" >"$KENLM_STAMP"
  else
    log "kenlm ${version} already built"
  fi
  for bin in lmplz build_binary; do
    if ! cmp -s "$KENLM_BUILD/bin/$bin" "$VENV/bin/$bin"; then
      install -m 0755 "$KENLM_BUILD/bin/$bin" "$VENV/bin/$bin"
      log "installed $bin into .venv/bin"
    fi
  done
}

# ---------------------------------------------------------------------------------------------
step_protos() {
  if [[ ! -f protos/asr/v1/asr.proto ]]; then
    log "protos/asr/v1/asr.proto not found; skipping"
  elif [[ ! -f scripts/gen_protos.sh ]]; then
    log "scripts/gen_protos.sh not found; skipping"
  else
    PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" bash scripts/gen_protos.sh
  fi
}

# ---------------------------------------------------------------------------------------------
# The last step proves the install: imports of every runtime module and one transcription.
step_check() {
  if [[ "${ASR_SKIP_CHECK:-}" == "1" ]]; then
    log "ASR_SKIP_CHECK=1: not checking the install"
    return
  fi
  "$VENV/bin/python" scripts/check_install.py --registry "${ASR_REGISTRY:-$ROOT/registry}" \
    || die "the install check failed (above); setup is not complete"
}

# ---------------------------------------------------------------------------------------------
TOTAL_START="$(now)"
run_step "apt packages" step_apt
run_step "test tools" step_test_tools
run_step "python venv" step_venv
run_step "client venvs" step_client_venvs
run_step "kenlm binaries" step_kenlm
run_step "grpc stubs" step_protos
run_step "starter models" step_seed_registry
run_step "install check" step_check
TIMINGS_LINE="$(printf '%s, ' "${TIMINGS[@]}")"
log "timings: ${TIMINGS_LINE%, }"
log "ready in $(elapsed "$TOTAL_START")"
