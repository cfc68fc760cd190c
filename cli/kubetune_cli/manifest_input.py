"""Reading the MANIFEST argument the commands share (- reads standard input)."""

from __future__ import annotations

import sys
from pathlib import Path


def read(command: str, manifest: str) -> bytes | None:
    """The manifest's bytes; None once the reason it could not be read is printed (the command exits 2)."""
    try:
        return sys.stdin.buffer.read() if manifest == "-" else Path(manifest).read_bytes()
    except OSError as exc:
        print(f"kubetune {command}: {manifest}: {exc.strerror or exc}", file=sys.stderr)
        return None
