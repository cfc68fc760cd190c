"""A process run through quick_exit ends with main's code as Python would (a return, sys.exit, argparse's usage
error, an uncaught exception), after every exit handler registered later has run, and with its output flushed."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import atexit, sys
from kubetune_trainer import quick_exit

def main():
    atexit.register(lambda: print("handler ran", flush=True))  # registered after quick_exit's: it runs
    print("buffered", end="")  # not flushed by main: quick_exit flushes it
    {body}

quick_exit.run(main)
"""


@pytest.mark.parametrize(
    ("body", "code", "err"),
    [
        ("return 0", 0, ""),
        ("return 75", 75, ""),
        ("sys.exit(2)", 2, ""),
        ("sys.exit('usage: wrong')", 1, "usage: wrong"),
        ("sys.exit()", 0, ""),
        ("raise RuntimeError('boom')", 1, "RuntimeError: boom"),
    ],
)
def test_the_exit_code_is_mains_and_the_handlers_and_output_are_not_lost(body: str, code: int, err: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(body=body)], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stdout == "bufferedhandler ran\n"
    assert err in done.stderr
