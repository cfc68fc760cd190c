"""The watch caches a sync reads its children from (kubetune_operator.watched): what is kept of each object."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_operator import rbac, watched


def pod(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "w-0", "uid": "p1", "managedFields": [{"manager": "kubelet"}] * 50, **meta},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "trainer", "env": [{"name": "X", "value": "y" * 1000}]}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {"startedAt": "t"}}}]},
    }


def test_a_pod_is_kept_without_its_spec_and_managed_fields_and_only_when_a_job_controls_it() -> None:
    owned = pod(ownerReferences=[{"kind": "Job", "controller": True, "uid": "j1"}])
    kept = watched.pod(owned)
    assert kept is not None
    assert "managedFields" not in kept["metadata"] and kept["spec"] == {"nodeName": "gpu-1"}
    assert kept["status"] == owned["status"] and kept["metadata"]["ownerReferences"] == owned["metadata"]["ownerReferences"]
    assert watched.pod(pod()) is None  # a bare pod carrying the label is never a worker: not kept
    assert watched.pod(pod(ownerReferences=[{"kind": "ReplicaSet", "controller": True, "uid": "r"}])) is None


def test_an_object_is_kept_as_a_get_returns_it_less_its_managed_fields() -> None:
    body = {"metadata": {"name": "a", "managedFields": [{}], "labels": {"x": "y"}}, "spec": {"s": 1}}
    assert watched.plain(body) == {"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"s": 1}}
    assert body["metadata"]["managedFields"] == [{}]  # the watch's body is not changed


def test_a_sync_reads_what_the_index_holds_under_its_key() -> None:
    cache = watched.Cache()
    with pytest.raises(RuntimeError):
        cache.one("jobs", "ns", "a")  # before the operator started: a bug, never an empty read
    cache.indices = {watched.index_name(plural): {} for _, _, plural in watched.KINDS}
    cache.indices["watched_jobs"][("ns", "a")] = [{"metadata": {"name": "a"}}]  # type: ignore[index]
    assert cache.one("jobs", "ns", "a") == {"metadata": {"name": "a"}} and cache.one("jobs", "ns", "b") is None
    assert cache.objects("pods", "ns", "a") == []


def test_every_watched_kind_may_be_listed_and_watched_and_jobs_are_never_read_one_by_one() -> None:
    verbs = {(g, r): set(rule["verbs"]) for rule in rbac.RULES for g in rule["apiGroups"] for r in rule["resources"]}
    for group, _, plural in watched.KINDS:
        assert {"list", "watch"} <= verbs[(group, plural)], plural
    assert "get" not in verbs[("batch", "jobs")] and "get" not in verbs[("", "pods")]


def test_a_watch_body_from_before_the_operators_own_status_write_is_read_again() -> None:
    """The watch is a moment behind the status the operator just wrote: a sync on such a body would count again
    what that write counted (a preempted pod's seconds), so the job is read from the API server instead."""
    from kubetune_operator import effects

    key = "team-a/job"
    effects.forget(key)
    assert effects.seen_own_write(key, {"status": {}})  # nothing written yet: the watch's body will do
    effects._written[key] = {"phase": "Queued", "usage": {"preemptedPods": ["p1"]}}
    assert not effects.seen_own_write(key, {"status": {"phase": "Running"}})  # before the write
    assert effects.seen_own_write(key, {"status": {"phase": "Queued", "usage": {"preemptedPods": ["p1"]}}})
    effects.forget(key)
    assert effects.seen_own_write(key, {"status": {"phase": "Running"}})
