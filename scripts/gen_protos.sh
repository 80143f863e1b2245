#!/usr/bin/env bash
# Regenerate the gRPC Python code in service/asr_pb/ and client/asr_pb/ from protos/asr/v1/asr.proto.
# The client keeps its own copy so that it installs and runs without the server's packages.
#
#   scripts/gen_protos.sh            # writes service/asr_pb/ and client/asr_pb/
#   scripts/gen_protos.sh OUT_DIR    # writes OUT_DIR/ only (tests/service/test_grpc_codegen.py compares)
#
# protoc names the message module after the proto path (asr/v1/asr_pb2.py) and the stub module
# imports it as `from asr.v1 import asr_pb2`, which only works with protos/'s layout on sys.path.
# We flatten both modules into one package and make that import relative, so
# `from service.asr_pb import asr_pb2, asr_pb2_grpc` works from any working directory and the
# descriptor keeps its file name "asr/v1/asr.proto" (what reflection reports).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTS=("${1:-$ROOT/service/asr_pb}")
[[ $# -eq 0 ]] && OUTS+=("$ROOT/client/asr_pb")
if [[ -n "${PYTHON:-}" ]]; then
  :
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PYTHON="$ROOT/.venv/bin/python"
else
  PYTHON=python3
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m grpc_tools.protoc -I "$ROOT/protos" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  asr/v1/asr.proto

for OUT in "${OUTS[@]}"; do
  mkdir -p "$OUT"
  cp "$tmp/asr/v1/asr_pb2.py" "$tmp/asr/v1/asr_pb2.pyi" "$OUT/"
  sed -e 's/^from asr\.v1 import asr_pb2 as /from . import asr_pb2 as /' \
    "$tmp/asr/v1/asr_pb2_grpc.py" > "$OUT/asr_pb2_grpc.py"
  grep -q '^from \. import asr_pb2 as ' "$OUT/asr_pb2_grpc.py" \
    || { echo "gen_protos: could not rewrite the asr_pb2 import in asr_pb2_grpc.py" >&2; exit 1; }
  cat > "$OUT/__init__.py" <<'PY'
"""Generated from protos/asr/v1/asr.proto by scripts/gen_protos.sh; do not edit."""
PY
  echo "gen_protos: wrote $OUT"
done
