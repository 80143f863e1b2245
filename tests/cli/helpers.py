"""Running the `asr` command in tests: in-process through cli.main.main (fast) or as the real console script."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[2]
# Starting the console script costs ~3 s (torch import), so most tests call main() in-process
# and a few run the real script to check what a user's terminal sees.
CONSOLE_TIMEOUT_S = 600  # generous: shared CI machines can starve a niced test run for minutes

@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def assert_one_line_error(self, *fragments: str) -> str:
        """Exit code 2, exactly one stderr line (naming every fragment), no traceback; returns the line."""
        lines = self.stderr.strip().splitlines()
        assert "Traceback" not in self.stderr, self.stderr
        assert self.returncode == 2, (self.returncode, self.stderr)
        assert len(lines) == 1, self.stderr
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        return lines[0]


def asr_in_process(*args: str) -> CliResult:
    """Runs ``asr ARGS`` through cli.main.main; an exception escaping main fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def asr_console(*args: str, cwd: Path | None = None) -> CliResult:
    """Runs the installed ``asr`` console script (falling back to ``python -m cli.main``)."""
    script = Path(sys.executable).parent / "asr"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    env = {k: v for k, v in os.environ.items() if k not in ("ASR_DEBUG", "ASR_DEFAULT_MODEL", "ASR_REGISTRY")}
    # Test this checkout even when the editable install's package map is older than it.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=CONSOLE_TIMEOUT_S)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
