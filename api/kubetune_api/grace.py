"""Whether a just-in-time checkpoint fits in the grace period a preempted worker gets: the preflight's estimate of the
checkpoint's size and of the time to write and upload it, against terminationGracePeriodSeconds. A LoRA checkpoint
holds the adapter's weights and its optimizer state, never the base model's weights (exclude_frozen_parameters)."""

from __future__ import annotations

import math

STATE_BYTES = 12  # per trainable parameter: the fp32 master copy and Adam's two moments
WRITE_BYTES_PER_SECOND = 500 * 2**20  # to the node's disk
UPLOAD_BYTES_PER_SECOND = 50 * 2**20  # from one pod to object storage: a conservative single stream
SHARE = 0.5  # warn when saving and uploading would take more than this share of the grace period


def checkpoint_bytes(trainable: int, compute_bytes: int) -> int:
    """All workers' parts of one checkpoint: the trainable weights in the compute dtype and their optimizer state."""
    return trainable * (compute_bytes + STATE_BYTES)


def checkpoint_seconds(total: int, workers: int) -> float:
    """Writing and uploading it: each worker writes and uploads its own part, all at once."""
    part = total / max(1, workers)
    return part / WRITE_BYTES_PER_SECOND + part / UPLOAD_BYTES_PER_SECOND


def warning(seconds: float, size: int, grace: int) -> str | None:
    """The preflight's words when the checkpoint may not make it within the grace period, else None."""
    if seconds <= SHARE * grace:
        return None
    need = math.ceil(seconds / SHARE)
    return (
        f"a preempted worker's checkpoint (about {size / 2**20:.0f} MiB) takes about {seconds:.0f} s to write and "
        f"upload, more than half of its {grace} s grace period: set runPolicy.terminationGracePeriodSeconds to at "
        f"least {need}, or a preemption may lose the steps since the previous checkpoint"
    )
