"""`kubetune preflight MANIFEST`: the checks the operator's preflight pod makes, run here with this machine's
credentials, and the same report."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from kubetune_api.validate import validate_bytes

PER_TOKENS = 100_000_000  # GPU-hours are shown per this many training tokens when the dataset cannot be read


def run(args: argparse.Namespace) -> int:
    from kubetune_api.catalog import known_config
    from kubetune_api.memory import shape_of
    from kubetune_api.preflight import DEFAULT_GPU, evaluations, format_report, gpu_type_of, gpu_types, hours, training_flops
    from kubetune_trainer.preflight import memory_and_hours
    from kubetune_trainer.preflight import run as preflight
    from kubetune_trainer.storage import Store

    try:
        data = sys.stdin.buffer.read() if args.manifest == "-" else Path(args.manifest).read_bytes()
        table = gpu_types(Path(args.gpu_types).read_text() if args.gpu_types else "")
    except OSError as exc:
        print(f"kubetune preflight: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    status = 0
    for result in validate_bytes(data, args.manifest):
        if result.job is None:
            print("\n".join(f"{result.source}: {p}" for p in result.problems), file=sys.stderr)
            status = 1
            continue
        spec = result.job.spec
        name, gpu = gpu_type_of(spec, table, args.gpu_type or DEFAULT_GPU)
        work = Path(tempfile.mkdtemp(prefix="kubetune-preflight-"))
        report = preflight(spec, Store(spec.storage), work, name, gpu)
        notes = []
        model_read = any(c.name == "model" and c.ok for c in report.checks)
        known = None if model_read else known_config(spec.model.uri)
        if known is not None:  # the model is not readable from here: its published config still gives the memory
            shape = shape_of(known[1])
            report = memory_and_hours(report, spec, shape, None, name, gpu)
            notes.append(f"memory from the published config of {known[0]} ({spec.model.uri} was not read)")
            if gpu is not None and spec.workers.gpusPerWorker:
                tokens = args.tokens or PER_TOKENS
                flops = training_flops(shape, spec, tokens * spec.training.epochs, 0.01 * tokens * evaluations(spec, 0))
                wall, gpu_hours = hours(flops, spec.workers.gpus, gpu)
                per = (
                    f"for {tokens:,} training tokens per epoch"
                    if args.tokens
                    else f"per {PER_TOKENS:,} training tokens per epoch"
                )
                notes.append(f"GPU-hours: about {gpu_hours:,.1f} {per} ({wall:,.2f} h wall-clock on {name}; pass --tokens N)")
        if args.output == "json":
            print(report.model_dump_json(exclude_none=True, indent=2))
        else:
            print(
                f"{result.source}: {spec.model.uri} on {spec.workers.world_size} {'GPUs' if spec.workers.gpusPerWorker else 'CPU processes'}"
            )
            print(format_report(report))
            for note in notes:
                print(f"  note: {note}")
        status = max(status, 0 if report.passed else 1)
    return status
