"""`kubetune serve MANIFEST [--vllm]`: the KServe LLMInferenceService that serves the job's adapter over its base
model (kubectl apply -f -), or the `vllm serve` command line; the job's LoRA settings checked against that server
first, in the words `kubetune validate` uses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune_api.manifests import dump
from kubetune_api.policy import PolicyError, load_policy
from kubetune_api.validate import validate_bytes, validate_object

from . import manifest_input


def run(args: argparse.Namespace) -> int:
    data = manifest_input.read("serve", args.manifest)
    if data is None:
        return 2
    results = validate_bytes(data, args.manifest, cluster=True)
    bad = [f"{r.source}: {p}" for r in results for p in r.problems]
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 1
    target = "vllm" if args.vllm else "kserve"
    jobs = []
    for result in results:
        assert result.job is not None
        body = result.job.model_dump(mode="json", exclude_none=True)
        serving = body["spec"]["output"].setdefault("serving", {})
        if target not in serving:  # the job did not name this server: checked as if it had, with its defaults
            serving[target] = {}
        checked = validate_object(body, result.source, cluster=True)
        if checked.problems:
            print("\n".join(f"{result.source}: {p} (served by {target})" for p in checked.problems), file=sys.stderr)
            return 1
        jobs.append(result.job)
    from kubetune_api import serve

    try:
        if args.vllm:
            sys.stdout.write("\n".join(serve.vllm_command(job) for job in jobs))
        else:
            account = args.service_account
            if not account and args.policy:
                try:
                    account = load_policy(Path(args.policy)).servingServiceAccount or None
                except PolicyError as exc:
                    print(f"kubetune serve: {exc}", file=sys.stderr)
                    return 2
            sys.stdout.write("---\n".join(dump(serve.llm_inference_service(job, args.namespace, account)) for job in jobs))
    except serve.NotServable as exc:
        print(f"kubetune serve: {args.manifest}: {exc}", file=sys.stderr)
        return 1
    return 0
