"""One rule the CRD cannot express, since it spans objects: two FineTuneJobs of a namespace must not write to
overlapping output prefixes (the later one would overwrite the other's checkpoints and adapter). `kubetune validate`
applies it across the manifests it is given and the admission webhook across the jobs in the cluster, in the same
words. Across namespaces the platform policy's writePrefixes keep tenants apart, without telling one tenant what
another runs."""

from __future__ import annotations

from collections.abc import Iterable

from .validate import Problem

FIELD = "spec.output.uri"


def prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def overlaps(a: str, b: str) -> bool:
    """True when one output prefix contains the other (s3://b/x/ and s3://b/x/y/, or the same prefix)."""
    pa, pb = prefix(a), prefix(b)
    return pa.startswith(pb) or pb.startswith(pa)


def conflict(uri: str, others: Iterable[tuple[str, str]]) -> Problem | None:
    """A problem for the first (job, uri) among others whose output overlaps uri; others are ("namespace/name", uri)."""
    for who, other in others:
        if overlaps(uri, other):
            return Problem(
                FIELD,
                f"overlaps the output of FineTuneJob {who} ({other}); each job needs an output prefix of its own",
                uri,
            )
    return None
