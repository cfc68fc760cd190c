"""The resource's names: group, version, kind, plural, short name, labels."""

from __future__ import annotations

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune", "all")
CRD_NAME = f"{PLURAL}.{GROUP}"

# metadata.name is used verbatim for the Job, the headless Service (a DNS label) and, with an index, the pod
# hostnames; the ConfigMap adds "-config". 52 leaves room for every suffix within the 63-character DNS label.
MAX_NAME_LENGTH = 52

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_NAME_LABEL = f"{GROUP}/job-name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
