"""Reading the MANIFEST argument the commands share (- reads standard input)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def read(command: str, manifest: str) -> bytes | None:
    """The manifest's bytes; None once the reason it could not be read is printed (the command exits 2)."""
    try:
        return sys.stdin.buffer.read() if manifest == "-" else Path(manifest).read_bytes()
    except OSError as exc:
        print(f"kubetune {command}: {manifest}: {exc.strerror or exc}", file=sys.stderr)
        return None


def one_job(command: str, manifest: str, verb: str) -> Any | int:
    """The manifest's one FineTuneJob, validated for this machine; else the exit code once the problems are printed
    (1 invalid, 2 unreadable or more than one job)."""
    from kubetune_api.validate import validate_bytes

    data = read(command, manifest)
    if data is None:
        return 2
    results = validate_bytes(data, manifest)
    for result in results:
        for problem in result.problems:
            print(f"{result.source}: {problem}", file=sys.stderr)
    jobs = [r.job for r in results if r.job is not None]
    if len(jobs) != len(results) or not jobs:
        return 1
    if len(jobs) > 1:
        print(f"kubetune {command}: {manifest} holds {len(jobs)} FineTuneJobs; {verb} one at a time", file=sys.stderr)
        return 2
    return jobs[0]
