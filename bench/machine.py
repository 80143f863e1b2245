"""The CPU model name recorded with every benchmark result (the same function `asr bench` reports)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli.bench import cpu_model  # noqa: E402,F401 - re-exported for the bench scripts
