"""The committed service/asr_pb/ and client/asr_pb/ are exactly what scripts/gen_protos.sh makes from the proto."""

import re
import subprocess
import sys

from tests.service.test_grpc_support import REPO_ROOT

# (what gen_protos.sh writes into OUT_DIR/<side>, the committed folder); the client's asr_pb2.py and
# asr_pb2_grpc.py are written by hand around the generated descriptor.
GENERATED = [("server", REPO_ROOT / "service" / "asr_pb"), ("client", REPO_ROOT / "client" / "asr_pb")]
# Lines that name the grpcio-tools / protobuf version that generated the file, not its content.
_VERSION_LINE = re.compile(r"GRPC_GENERATED_VERSION = |Protobuf Python Version: |^\s+\d+,\s*$|^\s+'',\s*$")


def _normalised(text: str) -> list[str]:
    return [line for line in text.splitlines() if not _VERSION_LINE.search(line)]


def test_generated_code_matches_proto(tmp_path):
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    for side, generated in GENERATED:
        names = sorted(p.name for p in (tmp_path / side).iterdir())
        assert names, side
        for name in names:
            assert _normalised((tmp_path / side / name).read_text()) == _normalised((generated / name).read_text()), (
                f"{generated.relative_to(REPO_ROOT)}/{name} is stale: run scripts/gen_protos.sh")
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == sorted(
        p.name for p in (REPO_ROOT / "service" / "asr_pb").iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
