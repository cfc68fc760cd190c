"""`kubetune eval MANIFEST [--adapter URI] [--base-only] [--out FILE]`: a job's evaluation.tasks on their own."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubetune_api.validate import validate_bytes

from . import manifest_input


def run(args: argparse.Namespace) -> int:
    data = manifest_input.read("eval", args.manifest)
    if data is None:
        return 2
    results = validate_bytes(data, args.manifest)
    for result in results:
        for problem in result.problems:
            print(f"{result.source}: {problem}", file=sys.stderr)
    jobs = [r.job for r in results if r.job is not None]
    if len(jobs) != len(results) or not jobs:
        return 1
    if len(jobs) > 1:
        print(f"kubetune eval: {args.manifest} holds {len(jobs)} FineTuneJobs; evaluate one at a time", file=sys.stderr)
        return 2
    spec = jobs[0].spec
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
