"""The last word of workers taken off their nodes. An evicted or preempted worker's pod goes away soon after it ends
(its Job no longer counts it, and drops its finalizer), often before the next sync lists it: the pod watch keeps
its final state here for the sync that follows, which counts it into the status (its preemption, its seconds,
the checkpoint it wrote) once and for good.

Any pod with the job-name label reaches the watch, and anyone who can create a Job can make such pods: only pods of
a Job this operator made (its uid, registered by the syncs) are kept, as a few bounded fields, for a few minutes,
and at most LIMIT of them. An operator restarted in between misses a pod that went away meanwhile (storage still
has its checkpoint); what the status already counted stays counted."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from kubetune_api.contract import TERMINATION_LIMIT

from .observation import COMPLETION_INDEX, was_preempted

LIMIT = 1024  # pods kept, oldest dropped first
KEEP_SECONDS = 900.0  # a sync of its job comes long before (the watch's event triggers one within seconds)
JOBS = 4096  # the worker Jobs this operator made that it still recognises, newest kept
TEXT = 512  # characters of a condition's message kept

_kept: OrderedDict[str, tuple[str, float, dict[str, Any]]] = OrderedDict()
_ours: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()


def ours(job_uid: str) -> None:
    """A worker Job this operator made (a sync read or created it): its pods' ends are kept."""
    if not job_uid:
        return
    with _lock:
        _ours[job_uid] = None
        _ours.move_to_end(job_uid)
        while len(_ours) > JOBS:
            _ours.popitem(last=False)


def controller_uid(pod: dict[str, Any]) -> str:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller") and r.get("kind") == "Job"), "")


def _text(value: Any, limit: int = TEXT) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _slim(pod: dict[str, Any], job_uid: str) -> dict[str, Any]:
    """What the status needs of it, bounded: identity, owner, completion index, phase, conditions, the trainer's end."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    index = (meta.get("annotations") or {}).get(COMPLETION_INDEX)
    conditions = [
        {k: _text(c.get(k)) for k in ("type", "status", "reason", "message", "lastTransitionTime") if c.get(k) is not None}
        for c in (status.get("conditions") or [])[:8]
        if isinstance(c, dict)
    ]
    containers = []
    for container in (status.get("containerStatuses") or [])[:4]:
        ended = ((container or {}).get("state") or {}).get("terminated") or {}
        code = ended.get("exitCode")
        end: dict[str, Any] = {
            k: _text(ended.get(k), 64) for k in ("reason", "startedAt", "finishedAt") if ended.get(k) is not None
        }
        if isinstance(code, int) and not isinstance(code, bool):
            end["exitCode"] = code
        if ended.get("message") is not None:
            end["message"] = _text(ended.get("message"), TERMINATION_LIMIT)
        containers.append({"name": _text(container.get("name"), 64), "state": {"terminated": end}})
    return {
        "metadata": {
            "name": _text(meta.get("name"), 253),
            "uid": _text(meta.get("uid"), 64),
            "creationTimestamp": _text(meta.get("creationTimestamp"), 64),
            "annotations": {COMPLETION_INDEX: _text(index, 16)} if index is not None else {},
            "ownerReferences": [{"kind": "Job", "controller": True, "uid": job_uid}],
        },
        "status": {"phase": _text(status.get("phase"), 16), "conditions": conditions, "containerStatuses": containers},
    }


def seen(pod: dict[str, Any]) -> None:
    """A worker pod's watch event: kept if it ended preempted and its Job is one this operator made."""
    if not was_preempted(pod):
        return
    uid, job = str((pod.get("metadata") or {}).get("uid") or ""), controller_uid(pod)
    with _lock:
        if not uid or job not in _ours:
            return
        _kept[uid] = (job, time.monotonic(), _slim(pod, job))
        _kept.move_to_end(uid)
        while len(_kept) > LIMIT:
            _kept.popitem(last=False)


def with_ended(job_uid: str, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Job's listed pods and its preempted ones that went away since (kept at most KEEP_SECONDS)."""
    there = {(p.get("metadata") or {}).get("uid") for p in listed}
    now = time.monotonic()
    with _lock:
        for uid in [u for u, (_, at, _pod) in _kept.items() if now - at > KEEP_SECONDS]:
            del _kept[uid]
        gone = [pod for uid, (job, _, pod) in _kept.items() if job == job_uid and uid not in there]
    return [*listed, *gone]


def clear() -> None:
    """Forget everything (an operator that starts again)."""
    with _lock:
        _kept.clear()
        _ours.clear()
