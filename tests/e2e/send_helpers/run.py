"""Running the tern binary for the send tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ternlib import tern_bin


def tern_send(*args: str, stdin: bytes | None = b"", env: dict | None = None, timeout: float = 60,
              argv0: Path | None = None, sub: str = "send") -> subprocess.CompletedProcess:
    """`tern send ARGS` (or another subcommand / a symlinked argv0); stdout and stderr captured."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [str(argv0)] + list(args) if argv0 else [str(tern_bin()), sub, *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=full_env)


def err(r: subprocess.CompletedProcess) -> str:
    return r.stderr.decode("utf-8", "replace")
