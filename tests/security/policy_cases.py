"""The platform policies and the attacks every policy layer is tested with."""

from __future__ import annotations

from kubetune_api.policy import Policy

from ..conftest import ROOT

PLATFORM = ROOT / "examples" / "platform" / "values.yaml"
STRICT = Policy(
    images=["registry.corp/kubetune/"],
    serviceAccounts=["trainer-irsa"],
    credentialSecrets=["s3-credentials"],
    priorityClasses=["batch-low"],
    nodeSelectorKeys=["nvidia.com/gpu.product"],
    tolerationKeys=["nvidia.com/gpu"],
    readPrefixes=["s3://models/", "s3://datasets/{namespace}/"],
    writePrefixes=["s3://adapters/{namespace}/"],
    maxGpusPerJob=16,
)


ALLOWED = {
    "spec.model.uri": "s3://models/base/",
    "spec.dataset.train": "s3://datasets/team-a/train.jsonl",
    "spec.output.uri": "s3://adapters/team-a/run-1/",
}


# (what a tenant tries, the field refused, words of the message)
ATTACKS = [
    ({"spec.workers.image": "evil.io/miner:latest"}, "spec.workers.image", "allowed image prefixes: registry.corp/kubetune/"),
    ({"spec.storage.serviceAccountName": "cluster-admin-sa"}, "spec.storage.serviceAccountName", "allowed: trainer-irsa"),
    ({"spec.storage.credentialsSecret": "platform-root-keys"}, "spec.storage.credentialsSecret", "allowed: s3-credentials"),
    ({"spec.workers.priorityClassName": "system-node-critical"}, "spec.workers.priorityClassName", "allowed: batch-low"),
    ({"spec.workers.nodeSelector": {"kubernetes.io/hostname": "n1"}}, "spec.workers.nodeSelector", "allowed keys"),
    ({"spec.workers.tolerations": [{"operator": "Exists"}]}, "spec.workers.tolerations", "every toleration names a key"),
    (
        {"spec.workers.tolerations": [{"key": "node-role/control-plane", "operator": "Exists"}]},
        "spec.workers.tolerations",
        "allowed keys",
    ),
    ({"spec.workers.gpuResourceName": "example.com/cheap-gpu"}, "spec.workers.gpuResourceName", "allowed: nvidia.com/gpu"),
    ({"spec.model.trustRemoteCode": True}, "spec.model.trustRemoteCode", "does not allow running a model's own code"),
    ({"spec.workers": {"replicas": 4, "gpusPerWorker": 8}}, "spec.workers", 'per job: 16 (got "32 GPUs")'),
    ({"spec.model.uri": "s3://other-tenant/models/"}, "spec.model.uri", "read only under: s3://models/, s3://datasets/team-a/"),
    ({"spec.dataset.train": "s3://datasets/team-b/secret.jsonl"}, "spec.dataset.train", "read only under"),
    ({"spec.dataset.validation": "s3://datasets/team-b/held.jsonl"}, "spec.dataset.validation", "read only under"),
    ({"spec.model.adapter": "s3://adapters/team-b/run/adapter/"}, "spec.model.adapter", "read only under: s3://models/"),
    ({"spec.output.uri": "s3://adapters/team-b/run/"}, "spec.output.uri", "write only under: s3://adapters/team-a/"),
]
