"""Exactly what the operator may do: the chart's ClusterRole (or Role per watched namespace) is made from this list,
and the cluster tests run the operator with nothing more."""

from __future__ import annotations

from typing import Any

RULES: list[dict[str, Any]] = [
    # the jobs themselves: watch, record status, delete finished ones after ttlSecondsAfterFinished
    {"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["patch"]},
    # the children: an Indexed Job, a headless Service and a ConfigMap per FineTuneJob
    # (watched: a sync reads its Jobs, as its pods, from the watch's cache, never with a get)
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    # (watched, filtered by the API server to the job-name label: a sync reads them from the watch's cache)
    {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": ["get", "list", "watch", "create", "patch"]},
    # a NetworkPolicy per job: only the job's own pods reach its rendezvous and collective ports
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch", "create", "patch"]},
    # worker pods: their state, why they wait, and rank 0's progress lines (never secrets: pods read those themselves)
    # and the newest checkpoint's time on the running ones (the annotation schedulers read), nothing else
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # the GPU product label of the nodes the workers run on: GPU-hours are billed at the type they ran on
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    # Kubernetes Events on every transition
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # Kopf: resource discovery, and peering between an active and a standby replica
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["list", "watch", "patch"]},
]
# resources that live outside namespaces: a ClusterRole even when the chart grants the rest per namespace
CLUSTER_SCOPED = frozenset({"customresourcedefinitions", "namespaces", "nodes", "clusterkopfpeerings"})


def scoped(cluster: bool) -> list[dict[str, Any]]:
    """The rules on cluster-scoped resources (cluster=True) or on namespaced ones; each rule is one or the other."""
    return [rule for rule in RULES if all(r.split("/")[0] in CLUSTER_SCOPED for r in rule["resources"]) == cluster]
