"""The last word of workers taken off their nodes. An evicted or preempted worker's pod goes away soon after it ends
(its Job no longer counts it, and drops its finalizer), often before the next sync lists it: the pod watch keeps
its final state here, bounded, for the sync that follows (preemptions are counted and the checkpoint it wrote is
seen). Kept in memory: an operator restarted in between misses that count, never a checkpoint (storage has it)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .observation import was_preempted

LIMIT = 4096  # pods kept, oldest dropped first

_kept: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
_lock = threading.Lock()


def _job_uid(pod: dict[str, Any]) -> str:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller") and r.get("kind") == "Job"), "")


def _slim(pod: dict[str, Any]) -> dict[str, Any]:
    """What the status needs of it: identity, owner, the completion index, phase, conditions, container states."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    keep = ("name", "uid", "creationTimestamp", "annotations", "ownerReferences")
    return {
        "metadata": {k: meta[k] for k in keep if k in meta},
        "status": {k: status[k] for k in ("phase", "conditions", "containerStatuses") if k in status},
    }


def seen(pod: dict[str, Any]) -> None:
    """A worker pod's watch event: kept if it ended preempted (its last state, so its termination message)."""
    if not was_preempted(pod):
        return
    uid, job = str((pod.get("metadata") or {}).get("uid") or ""), _job_uid(pod)
    if not uid or not job:
        return
    with _lock:
        _kept[uid] = (job, _slim(pod))
        _kept.move_to_end(uid)
        while len(_kept) > LIMIT:
            _kept.popitem(last=False)


def with_ended(job_uid: str, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Job's listed pods and its preempted ones that went away since."""
    there = {(p.get("metadata") or {}).get("uid") for p in listed}
    with _lock:
        gone = [pod for uid, (job, pod) in _kept.items() if job == job_uid and uid not in there]
    return [*listed, *gone]
