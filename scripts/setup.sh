#!/usr/bin/env bash
# Prepare a checkout for development, tests and serving. Safe to re-run: every step checks
# what is already there and returns in well under a second when nothing changed.
#
#   1. Debian packages (compilers, cmake, boost, compression libs, libsndfile) via apt-get.
#   2. .venv with `pip install -e '.[train,serve,dev]'`, redone only when pyproject.toml changed.
#   3. KenLM's `lmplz` and `build_binary`, compiled from the kenlm source distribution on PyPI
#      (pinned version + sha256), installed into .venv/bin.
#   4. gRPC stubs via scripts/gen_protos.sh, when the proto and that script exist.
#
# It never starts a server. Typical use: scripts/setup.sh && .venv/bin/asr serve
#
# Environment:
#   PYTHON       interpreter used to create .venv (default: python3; must be 3.11)
#   KENLM_JOBS   parallel compile jobs for KenLM (default: 2)
#   ASR_SKIP_APT=1  skip the apt step (non-Debian hosts with the packages installed another way)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
PYPROJECT_STAMP="$VENV/.setup-pyproject.sha256"

APT_PACKAGES=(
  build-essential cmake
  libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
  zlib1g-dev libbz2-dev liblzma-dev libsndfile1
)

# KenLM source: the sdist of the `kenlm` project on PyPI carries the complete C++ tree
# (top-level CMakeLists.txt, lm/builder/lmplz_main.cc, lm/build_binary_main.cc, util/).
# Debian 12 has no kenlm package, and GitHub is not reachable from our build machines.
# It is also the version of the `kenlm` Python module pip installs, so the binaries and the
# module reading their output come from the same source.
KENLM_VERSION="0.3.0"
KENLM_SHA256="c4628bb9fb63c8a6f9240035b8b037385cfc404cb72e933cf48878291edac1e8"
KENLM_URL="https://files.pythonhosted.org/packages/02/6e/f4e159cef39ea4ef2244b4aa32857d447d60a5d0ee269e1b1f8d3723c03e/kenlm-${KENLM_VERSION}.tar.gz"
KENLM_MAX_ORDER=6
KENLM_JOBS="${KENLM_JOBS:-2}"
KENLM_CACHE="$ROOT/.cache/kenlm"
KENLM_TARBALL="$KENLM_CACHE/kenlm-${KENLM_VERSION}.tar.gz"
KENLM_SRC="$KENLM_CACHE/kenlm-${KENLM_VERSION}"
KENLM_BUILD="$KENLM_CACHE/build"
KENLM_STAMP="$KENLM_BUILD/.setup-kenlm.stamp"
KENLM_STAMP_VALUE="${KENLM_VERSION} ${KENLM_SHA256} max_order=${KENLM_MAX_ORDER}"

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
# the web page, Prometheus + promtool, and docker-compose to validate docker-compose.yml (no
# Docker daemon needed). ASR_SKIP_TEST_TOOLS=1 skips them (the Docker image build sets it).
# On a host that runs systemd the prometheus package also enables a prometheus.service on :9090;
# the tests start their own on a free port and do not need it.
TEST_APT_PACKAGES=(chromium prometheus docker-compose)

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

  if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    log ".venv is broken (its interpreter does not start); recreating it"
    "$PYTHON" -m venv --clear "$VENV"
  elif [[ ! -x "$VENV/bin/python" ]]; then
    log "creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
  fi

  local want have=""
  want="$(sha256_of pyproject.toml)"
  [[ -f "$PYPROJECT_STAMP" ]] && have="$(cat "$PYPROJECT_STAMP")"
  if [[ "$want" == "$have" ]]; then
    log "pyproject.toml unchanged since last install; skipping pip"
    return
  fi
  log "pip install -e '.[train,serve,dev]' (pyproject.toml changed or first install)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[train,serve,dev]'
  echo "$want" >"$PYPROJECT_STAMP"
}

# ---------------------------------------------------------------------------------------------
fetch_kenlm_sdist() {
  if [[ -f "$KENLM_TARBALL" ]] && [[ "$(sha256_of "$KENLM_TARBALL")" == "$KENLM_SHA256" ]]; then
    return
  fi
  mkdir -p "$KENLM_CACHE"
  rm -f "$KENLM_TARBALL"
  log "downloading kenlm ${KENLM_VERSION} sdist from PyPI"
  if ! "$VENV/bin/python" - "$KENLM_URL" "$KENLM_TARBALL.part" <<'PY'
import shutil, sys, urllib.request
url, dest = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url, timeout=120) as resp, open(dest, "wb") as out:
    shutil.copyfileobj(resp, out)
PY
  then
    # Direct download failed (e.g. only a PyPI mirror is reachable): let pip fetch it from
    # whatever index it is configured with. pip prepares the metadata, hence no isolation.
    log "direct download failed; trying pip download"
    local tmp
    tmp="$(mktemp -d)"
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
      --no-binary :all: --no-build-isolation -d "$tmp" "kenlm==${KENLM_VERSION}"
    mv "$tmp/kenlm-${KENLM_VERSION}.tar.gz" "$KENLM_TARBALL.part"
    rm -rf "$tmp"
  fi
  local got
  got="$(sha256_of "$KENLM_TARBALL.part")"
  if [[ "$got" != "$KENLM_SHA256" ]]; then
    rm -f "$KENLM_TARBALL.part"
    die "kenlm-${KENLM_VERSION}.tar.gz sha256 mismatch: got $got, expected $KENLM_SHA256"
  fi
  mv "$KENLM_TARBALL.part" "$KENLM_TARBALL"
}

step_kenlm() {
  local bin
  if [[ ! -f "$KENLM_STAMP" || "$(cat "$KENLM_STAMP")" != "$KENLM_STAMP_VALUE" \
        || ! -x "$KENLM_BUILD/bin/lmplz" || ! -x "$KENLM_BUILD/bin/build_binary" ]]; then
    fetch_kenlm_sdist
    rm -rf "$KENLM_SRC"
    tar -xzf "$KENLM_TARBALL" -C "$KENLM_CACHE"
    [[ -f "$KENLM_SRC/CMakeLists.txt" && -f "$KENLM_SRC/lm/builder/lmplz_main.cc" ]] \
      || die "kenlm ${KENLM_VERSION} sdist lacks the C++ sources (CMakeLists.txt, lm/builder)"
    # A cache configured for another source folder (checkout moved) makes cmake refuse to run.
    if [[ -f "$KENLM_BUILD/CMakeCache.txt" ]] \
        && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$KENLM_SRC" "$KENLM_BUILD/CMakeCache.txt"; then
      rm -rf "$KENLM_BUILD"
    fi
    log "building lmplz and build_binary (kenlm ${KENLM_VERSION}, -j${KENLM_JOBS}); takes a few minutes"
    cmake -S "$KENLM_SRC" -B "$KENLM_BUILD" -DCMAKE_BUILD_TYPE=Release \
      -DKENLM_MAX_ORDER="$KENLM_MAX_ORDER" -DCOMPILE_TESTS=OFF -DENABLE_PYTHON=OFF \
      -Wno-dev >"$KENLM_CACHE/cmake.log" 2>&1 \
      || { tail -n 30 "$KENLM_CACHE/cmake.log" >&2; die "cmake configure failed (log: $KENLM_CACHE/cmake.log)"; }
    make -C "$KENLM_BUILD" -j"$KENLM_JOBS" lmplz build_binary >"$KENLM_CACHE/make.log" 2>&1 \
      || { tail -n 30 "$KENLM_CACHE/make.log" >&2; die "kenlm build failed (log: $KENLM_CACHE/make.log)"; }
    echo "$KENLM_STAMP_VALUE" >"$KENLM_STAMP"
  else
    log "kenlm ${KENLM_VERSION} already built"
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
TOTAL_START="$(now)"
run_step "apt packages" step_apt
run_step "test tools" step_test_tools
run_step "python venv" step_venv
run_step "kenlm binaries" step_kenlm
run_step "grpc stubs" step_protos
run_step "starter models" step_seed_registry
TIMINGS_LINE="$(printf '%s, ' "${TIMINGS[@]}")"
log "timings: ${TIMINGS_LINE%, }"
log "ready in $(elapsed "$TOTAL_START")"
