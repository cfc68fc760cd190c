"""The children as the operator's watches last saw them: Kopf indices over watch streams that the API server filters
by the job-name label (handlers.py registers them), so a sync reads its Job, its pods and its ConfigMap, Service and
NetworkPolicy from memory instead of a request each. A job that waits and does not change costs no API request.

What is kept: objects without their managedFields, a pod without its spec (but its node), and only pods that a Job
controls. Reads are as fresh as the watch (a moment behind a GET): the decisions already allow a read that is
a moment old (a Job just created and not yet seen is created again and the API server answers 409; a Job being
deleted is seen with its deletionTimestamp, as a GET would show it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune_api.names import JOB_NAME_LABEL

from . import ended

# (group, version, plural): what is watched and indexed, each stream filtered by the API server to this label
KINDS = (
    ("batch", "v1", "jobs"),
    ("", "v1", "pods"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("networking.k8s.io", "v1", "networkpolicies"),
)
SELECTOR = JOB_NAME_LABEL  # exists: the API server sends only objects that carry it


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object as a GET returns it, less its managedFields (the largest part of most objects, never read)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def pod(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A pod some Job controls, as a GET returns it less its managedFields and its spec but the node it runs on (what
    the status reads: metadata, status, spec.nodeName); None for any other pod (never one of ours)."""
    if not ended.controller_uid(dict(body)):
        return None
    out = plain(body)
    node = (body.get("spec") or {}).get("nodeName")
    out["spec"] = {"nodeName": node} if isinstance(node, str) else {}
    return out


class Cache:
    """The indices Kopf keeps, reached from any sync (they are given to handlers; startup hands them over)."""

    def __init__(self) -> None:
        self.indices: Mapping[str, Any] | None = None

    def objects(self, plural: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """What the index of `plural` holds under (namespace, name): for pods the job's name, else the object's."""
        if self.indices is None:
            raise RuntimeError("the watch caches are read before the operator started")
        index = self.indices[index_name(plural)]
        store = index.get((namespace, name))
        return [dict(v) for v in store] if store is not None else []

    def one(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects(plural, namespace, name)
        return found[0] if found else None


def index_name(plural: str) -> str:
    return f"watched_{plural}"


CACHE = Cache()
