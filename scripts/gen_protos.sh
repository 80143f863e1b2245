#!/usr/bin/env bash
# Regenerate the gRPC Python code in service/asr_pb/, and the client's descriptor in client/asr_pb/, from
# protos/asr/v1/asr.proto.
#
#   scripts/gen_protos.sh            # writes service/asr_pb/ and client/asr_pb/
#   scripts/gen_protos.sh OUT_DIR    # writes OUT_DIR/server/ and OUT_DIR/client/ (tests/service/test_grpc_codegen.py)
#
# The server gets protoc's generated modules. The client gets only the proto's serialized descriptor
# (_descriptor.py) and the type hints (asr_pb2.pyi): its asr_pb2.py and asr_pb2_grpc.py are written by
# hand and build the classes from the descriptor at import. Generated modules check that the protobuf
# runtime is at least the protoc that wrote them (7.x here), which would shut the client out of every
# application pinned to protobuf 4-6, Riva's client among them; the descriptor API works alike on all.
#
# protoc names the message module after the proto path (asr/v1/asr_pb2.py) and the stub module
# imports it as `from asr.v1 import asr_pb2`, which only works with protos/'s layout on sys.path.
# We flatten both modules into one package and make that import relative, so
# `from service.asr_pb import asr_pb2, asr_pb2_grpc` works from any working directory and the
# descriptor keeps its file name "asr/v1/asr.proto" (what reflection reports).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -eq 0 ]]; then
  SERVER_OUT="$ROOT/service/asr_pb" CLIENT_OUT="$ROOT/client/asr_pb"
else
  SERVER_OUT="$1/server" CLIENT_OUT="$1/client"
fi
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
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp"  \
  asr/v1/asr.proto

mkdir -p "$SERVER_OUT" "$CLIENT_OUT"
cp "$tmp/asr/v1/asr_pb2.py" "$tmp/asr/v1/asr_pb2.pyi" "$SERVER_OUT/"
sed -e 's/^from asr\.v1 import asr_pb2 as /from . import asr_pb2 as /' \
  "$tmp/asr/v1/asr_pb2_grpc.py" > "$SERVER_OUT/asr_pb2_grpc.py"
grep -q '^from \. import asr_pb2 as ' "$SERVER_OUT/asr_pb2_grpc.py" \
  || { echo "gen_protos: could not rewrite the asr_pb2 import in asr_pb2_grpc.py" >&2; exit 1; }
cat > "$SERVER_OUT/__init__.py" <<'PY'
"""Generated from protos/asr/v1/asr.proto by scripts/gen_protos.sh; do not edit."""
PY
echo "gen_protos: wrote $SERVER_OUT"

cp "$tmp/asr/v1/asr_pb2.pyi" "$CLIENT_OUT/"
"$PYTHON" - "$tmp/asr/v1/asr_pb2.py" "$CLIENT_OUT/_descriptor.py" <<'PY'
import importlib.util
import sys

# The very bytes the server's generated module registers, so that both can load in one process (a
# descriptor pool takes the same file twice only when it is byte for byte the same).
spec = importlib.util.spec_from_file_location("generated_asr_pb2", sys.argv[1])
generated = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generated)
serialized = generated.DESCRIPTOR.serialized_pb
lines = [repr(serialized[i:i + 64]) for i in range(0, len(serialized), 64)]
with open(sys.argv[2], "w") as out:
    out.write('"""Generated from protos/asr/v1/asr.proto by scripts/gen_protos.sh; do not edit.\n\n'
              "asr/v1/asr.proto as a serialized FileDescriptorProto, from which asr_pb2 builds the message classes.\n"
              '"""\n\nSERIALIZED = (\n' + "".join(f"    {line}\n" for line in lines) + ")\n")
PY
echo "gen_protos: wrote $CLIENT_OUT/_descriptor.py and asr_pb2.pyi"
