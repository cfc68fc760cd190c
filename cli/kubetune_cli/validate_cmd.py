"""`kubetune validate FILE...|-`: every problem on its own line with its field path; exit 0 valid, 1 invalid, 2 usage or I/O."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubetune_api.manifests import MAX_BYTES
from kubetune_api.outputs import conflict
from kubetune_api.policy import Policy, PolicyError, check, load_policy
from kubetune_api.validate import Result, validate_bytes

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _expand(names: list[str]) -> tuple[list[str], list[str]]:
    """Files to read (directories give their manifests, sorted), and I/O errors."""
    files, errors = [], []
    for name in names:
        path = Path(name)
        if name == "-" or path.is_file():
            files.append(name)
        elif path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not found:
                errors.append(f"{name}: no .yaml, .yml or .json files in this directory")
            files += found
        elif path.exists():
            errors.append(f"{name}: not a regular file")
        else:
            errors.append(f"{name}: no such file")
    return files, errors


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read(MAX_BYTES + 1)
    with open(name, "rb") as handle:
        return handle.read(MAX_BYTES + 1)


def _text(result: Result) -> list[str]:
    where = f"{result.source}:{result.line}" if result.line else result.source
    if result.name:
        where += f" ({result.name})"
    if result.valid:
        return [f"{where}: valid"]
    return [f"{where}: {problem}" for problem in result.problems]


def _check_outputs(results: list[Result]) -> None:
    """Manifests validated together (a GitOps folder) must not share an output prefix: a later one that overlaps
    an earlier one gets the problem, in the admission webhook's words."""
    seen: list[tuple[str, str]] = []
    for result in results:
        if result.job is None:
            continue
        meta = result.job.metadata  # plain metadata, as given
        uri = result.job.spec.output.uri
        namespace = f"{meta.get('namespace') or 'default'}/"
        problem = conflict(uri, [(who, other) for who, other in seen if who.startswith(namespace)])  # as at admission
        if problem is not None:
            result.problems.append(problem)
        seen.append((f"{namespace}{meta.get('name')}", uri))


def _check_policy(results: list[Result], policy: Policy, namespace: str | None) -> None:
    """The platform policy, for the namespace each job goes to (--namespace, else its own, else default)."""
    for result in results:
        if result.job is not None:
            where = namespace or result.job.metadata.get("namespace") or "default"
            result.problems += check(result.job.spec, str(where), policy, result.job.metadata.get("labels"))


def run(args: argparse.Namespace) -> int:
    policy = None
    if args.policy:
        try:
            policy = load_policy(Path(args.policy))
        except PolicyError as exc:
            print(f"kubetune validate: policy {exc}", file=sys.stderr)
            return 2
    files, io_errors = _expand(args.files)
    results: list[Result] = []
    for name in files:
        try:
            data = _read(name)
        except OSError as exc:
            io_errors.append(f"{name}: {exc.strerror or exc}")
            continue
        results += validate_bytes(data, "<stdin>" if name == "-" else name, cluster=not args.local)
    _check_outputs(results)
    if policy is not None:
        _check_policy(results, policy, args.namespace)
    invalid = sum(1 for r in results if not r.valid)
    if args.output == "json":
        report = {"valid": not invalid and not io_errors, "results": [r.to_dict() for r in results], "ioErrors": io_errors}
        print(json.dumps(report, indent=2))
    else:
        for result in results:
            for line in _text(result):
                print(line)
        for error in io_errors:
            print(f"kubetune validate: {error}", file=sys.stderr)
        print(f"{len(results)} document(s), {invalid} invalid", file=sys.stderr)
    if io_errors:
        return 2
    return 1 if invalid else 0
