"""`kubetune eval MANIFEST [--adapter URI] [--base-only] [--out FILE]`: a job's evaluation.tasks on their own."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import manifest_input


def run(args: argparse.Namespace) -> int:
    job = manifest_input.one_job("eval", args.manifest, "evaluate")
    if isinstance(job, int):
        return job
    spec = job.spec
    if not spec.evaluation.tasks:
        print(f"kubetune eval: {args.manifest} has no evaluation.tasks: nothing to evaluate", file=sys.stderr)
        return 2
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and spec.workers.gpusPerWorker == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from kubetune_trainer import evaluation
    from kubetune_trainer.errors import TrainerFailure

    try:
        return evaluation.main(spec, args.adapter, args.base_only, Path(args.out) if args.out else None)
    except TrainerFailure as failure:
        print(f"kubetune eval: {failure.reason.value}: {failure.message}", file=sys.stderr)
        return 1
