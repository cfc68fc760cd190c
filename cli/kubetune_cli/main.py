"""`kubetune`: validate manifests, print the CRD and the API reference (and, as they land, run, operator, render)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import run_cmd, validate_cmd


def _crd(_: argparse.Namespace) -> int:
    from kubetune_api.crd import render

    sys.stdout.write(render())
    return 0


def _reference(_: argparse.Namespace) -> int:
    from kubetune_api.reference import render

    sys.stdout.write(render())
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubetune", description="Declarative LoRA fine-tuning on Kubernetes.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check FineTuneJob manifests offline (exit 0 valid, 1 invalid, 2 usage/I-O)")
    validate.add_argument("files", nargs="+", metavar="FILE", help="manifest files or directories; - reads standard input")
    validate.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format (default: text)")
    validate.set_defaults(func=validate_cmd.run)

    crd = commands.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    crd.set_defaults(func=_crd)

    run = commands.add_parser(
        "run", help="train a FineTuneJob on this machine, no cluster (local processes stand in for workers)"
    )
    run.add_argument("manifest", metavar="MANIFEST", help="a FineTuneJob manifest; - reads standard input")
    run.add_argument("-n", "--processes", type=int, default=0, help="local training processes (default: the spec's world size)")
    run.add_argument(
        "--progress", choices=["auto", "bar", "json"], default="auto", help="a progress bar, or JSON lines as pods print"
    )
    run.add_argument("--work-dir", help="scratch and staging directory (default: .kubetune/NAME)")
    run.set_defaults(func=run_cmd.run)

    reference = commands.add_parser("reference", help="print the API reference in Markdown (docs/api.md)")
    reference.set_defaults(func=_reference)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
