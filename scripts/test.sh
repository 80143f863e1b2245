#!/usr/bin/env bash
# Run the test suite: prepares the checkout with scripts/setup.sh, then pytest from the repo root.
# Arguments go to pytest unchanged, e.g. scripts/test.sh tests/lm -k beam
# With CI=true, tests marked `slow` are skipped unless ASR_RUN_SLOW=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh

args=()
if [[ "${CI:-}" == "true" && "${ASR_RUN_SLOW:-}" != "1" ]]; then
  args+=(-m "not slow")
fi
exec .venv/bin/python -m pytest -q "${args[@]}" "$@"
