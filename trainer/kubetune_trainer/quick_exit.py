"""Run a process's main function and end the process without the interpreter's teardown of torch, DeepSpeed and
transformers: on this 2-core machine that teardown took about 4 s of every rank's end (two ranks side by side),
after the rank's work was written and nothing left to do. Every exit handler registered after this one still runs
(torch's, DeepSpeed's, tqdm's: those registered once main started importing them), then logging's, then the
process ends with main's code."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def run(main: Callable[[], int]) -> NoReturn:
    code = [1]  # main raised past its own handlers (it should not): a failure

    def leave() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code[0])

    atexit.register(leave)  # registered before anything main imports: runs after their handlers
    try:
        code[0] = main()
    except SystemExit as exc:  # argparse's usage error (2), sys.exit in main: its code, as Python would exit with
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code[0] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.exit(code[0])
