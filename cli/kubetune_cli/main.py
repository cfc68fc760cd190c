"""`kubetune`: validate manifests, print the CRD and the API reference (and, as they land, run, operator, render)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import eval_cmd, manifest_input, preflight_cmd, run_cmd, serve_cmd, validate_cmd


def _crd(_: argparse.Namespace) -> int:
    from kubetune_api.crd import render

    sys.stdout.write(render())
    return 0


def _admission_policy(_: argparse.Namespace) -> int:
    from kubetune_api.policy import admission_policy_template

    sys.stdout.write(admission_policy_template())
    return 0


def _reference(_: argparse.Namespace) -> int:
    from kubetune_api.reference import render

    sys.stdout.write(render())
    return 0


def _operator(args: argparse.Namespace) -> int:
    from kubetune_operator.main import run

    run(verbose=args.verbose)
    return 0


def _render(args: argparse.Namespace) -> int:
    from kubetune_api.manifests import dump
    from kubetune_api.validate import validate_bytes
    from kubetune_operator.render import render

    data = manifest_input.read("render", args.manifest)
    if data is None:
        return 2
    results = validate_bytes(data, args.manifest, cluster=True)  # the objects a cluster would run
    bad = [f"{r.source}: {p}" for r in results for p in r.problems]
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 1
    objects = [obj for r in results if r.job is not None for obj in render(r.job, args.namespace)]
    sys.stdout.write("---\n".join(dump(obj) for obj in objects))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubetune", description="Declarative LoRA fine-tuning on Kubernetes.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check FineTuneJob manifests offline (exit 0 valid, 1 invalid, 2 usage/I-O)")
    validate.add_argument("files", nargs="+", metavar="FILE", help="manifest files or directories; - reads standard input")
    validate.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format (default: text)")
    validate.add_argument(
        "--policy", metavar="FILE", help="also check the platform policy (a policy file, or the chart's values file)"
    )
    validate.add_argument(
        "-n", "--namespace", help="namespace the jobs go to, for the policy's per-namespace prefixes (default: each job's)"
    )
    validate.add_argument(
        "--local",
        action="store_true",
        help="check as `kubetune run` does: local paths allowed (default: as the cluster admits it, s3:// only)",
    )
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

    evaluate = commands.add_parser(
        "eval",
        help="a job's evaluation.tasks on their own: the base model and an adapter on the same held-out items, no training",
    )
    evaluate.add_argument("manifest", metavar="MANIFEST", help="a FineTuneJob manifest; - reads standard input")
    evaluate.add_argument("--adapter", help="the adapter to judge (default: the job's written one, <output.uri>/adapter/)")
    evaluate.add_argument("--base-only", action="store_true", help="the base model alone (no adapter)")
    evaluate.add_argument("--out", metavar="FILE", help="write the scores and the samples as JSON")
    evaluate.set_defaults(func=eval_cmd.run)

    preflight = commands.add_parser(
        "preflight",
        help="the checks made before GPUs are held: storage reachable, records, tokens and steps, memory per GPU, GPU-hours",
    )
    preflight.add_argument("manifest", metavar="MANIFEST", help="a FineTuneJob manifest; - reads standard input")
    preflight.add_argument(
        "--gpu-type", help="the GPU type to check against (default: the job's nodeSelector, else NVIDIA-H100-80GB-HBM3)"
    )
    preflight.add_argument(
        "--gpu-types", metavar="FILE", help="the platform's GPU table, JSON (default: the one the chart ships)"
    )
    preflight.add_argument("--tokens", type=int, help="training tokens per epoch, when the dataset cannot be read from here")
    preflight.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format (default: text)")
    preflight.set_defaults(func=preflight_cmd.run)

    operator = commands.add_parser("operator", help="run the Kopf operator (settings from KUBETUNE_* environment variables)")
    operator.add_argument("--verbose", action="store_true", help="debug logging")
    operator.set_defaults(func=_operator)

    render = commands.add_parser("render", help="print the child objects the operator would create, with no cluster")
    render.add_argument("manifest", metavar="MANIFEST", help="a FineTuneJob manifest; - reads standard input")
    render.add_argument("-n", "--namespace", help="namespace to render into (default: the manifest's, else default)")
    render.set_defaults(func=_render)

    serve = commands.add_parser(
        "serve",
        help="print the KServe LLMInferenceService that serves a job's adapter (or, with --vllm, the vllm serve command)",
    )
    serve.add_argument("manifest", metavar="MANIFEST", help="a FineTuneJob manifest; - reads standard input")
    serve.add_argument("-n", "--namespace", help="namespace of the LLMInferenceService (default: the manifest's)")
    serve.add_argument("--vllm", action="store_true", help="print the vllm serve command line instead")
    serve.add_argument(
        "--service-account",
        help="the service account the server runs as, one the platform gives serving (read access to adapters); "
        "default: the platform policy's servingServiceAccount with --policy, else the namespace's default",
    )
    serve.add_argument("--policy", metavar="FILE", help="the platform policy (or the chart's values file)")
    serve.set_defaults(func=serve_cmd.run)

    policy = commands.add_parser(
        "admission-policy", help="print the chart's ValidatingAdmissionPolicy template (the platform policy's rules in CEL)"
    )
    policy.set_defaults(func=_admission_policy)

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
