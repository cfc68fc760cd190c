"""Phases, condition types and their reasons: the words the status uses."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """The one-word summary shown by `kubectl get ftj`."""

    PREFLIGHT = "Preflight"  # the CPU-only checks run; no GPU is requested until they pass
    PENDING = "Pending"  # accepted, children being created or pods not yet running
    QUEUED = "Queued"  # waiting for a queue (Kueue) to admit the workers
    RUNNING = "Running"  # every worker pod is running
    SUCCEEDED = "Succeeded"  # the adapter and _SUCCESS are in output.uri
    FAILED = "Failed"  # finished without an adapter; the Failed condition says why
    SUSPENDED = "Suspended"  # runPolicy.suspend is true; pods stopped, checkpoints kept


class ConditionType(StrEnum):
    """Condition types; `kubectl wait --for=condition=Succeeded` waits on these."""

    VALIDATED = "Validated"
    PREFLIGHT = "Preflight"  # True once the CPU-only checks passed; False with the reason they failed
    QUEUED = "Queued"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    QUALITY_GATE = "QualityGate"  # False with BelowThreshold when the adapter missed output.minImprovement


class Reason(StrEnum):
    """Condition reasons. Trainer failure reasons double as the trainer's termination codes."""

    SPEC_VALID = "SpecValid"  # Validated=True: the spec passed the same checks as `kubetune validate`
    INVALID_SPEC = "InvalidSpec"  # Validated=False, Failed=True: the spec failed validation; message lists field paths
    WAITING_FOR_QUEUE = "WaitingForQueue"  # Queued=True: the Job is suspended until Kueue admits it
    ADMITTED = "Admitted"  # Queued=False: the queue admitted the workers
    PODS_PENDING = "PodsPending"  # Running=False: worker pods created but not all running yet
    UNSCHEDULABLE = "Unschedulable"  # Running=False: a worker pod cannot be scheduled; message has the scheduler's words
    IMAGE_PULL_FAILED = "ImagePullFailed"  # Running=False: a worker's image cannot be pulled
    SECRET_MISSING = "SecretMissing"  # Running=False: storage.credentialsSecret does not exist in the namespace
    TRAINING = "Training"  # Running=True: every worker is running; progress is being reported
    GANG_RESTARTING = "GangRestarting"  # Running=False: a worker failed; all workers restart from the newest checkpoint
    USER_SUSPENDED = "SuspendedByUser"  # Suspended=True: runPolicy.suspend is true
    RESUMED = "Resumed"  # Suspended=False: runPolicy.suspend went back to false
    COMPLETED = "Completed"  # Succeeded=True: the adapter, metrics and _SUCCESS were written
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # Failed=True: workers failed more than runPolicy.backoffLimit times
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # Failed=True: ran longer than runPolicy.activeDeadlineSeconds
    SPEC_CHANGED = "SpecChanged"  # Failed=True: what the pods read changed after their Job was made; nothing reran
    NAME_CONFLICT = "NameConflict"  # Failed=True: an object the job needs exists and is not this job's; left untouched
    POLICY_DENIED = "PolicyDenied"  # Failed=True: the platform policy does not allow what the spec asks for
    # Reported by the trainer in its termination message, then used as the Failed reason:
    MODEL_MISSING = "ModelMissing"  # the base model is not at model.uri
    DATASET_MISSING = "DatasetMissing"  # a dataset object or file does not exist
    ACCESS_DENIED = "AccessDenied"  # object storage refused the credentials
    EMPTY_DATASET = "EmptyDataset"  # the training or held-out set has no usable samples
    BAD_RECORD = "BadRecord"  # a record is malformed or lacks the field the format needs
    TARGET_MODULES_NOT_FOUND = "TargetModulesNotFound"  # lora.targetModules matches no module of the model
    OUTPUT_EXISTS = "OutputExists"  # output.uri already holds a finished adapter and output.overwrite is false
    OUT_OF_MEMORY = "OutOfMemory"  # a process ran out of GPU or host memory
    NAN_LOSS = "NaNLoss"  # the training loss became NaN or infinite
    UNSAFE_OBJECT_KEY = "UnsafeObjectKey"  # an object key would land outside its directory (.., empty or absolute parts)
    MODEL_TOO_LARGE = "ModelTooLarge"  # the base model is larger than the worker's cache (workers.cacheSize)
    DATASET_TOO_LARGE = "DatasetTooLarge"  # the datasets are larger than what is left of the worker's cache
    CHECKPOINT_MISMATCH = "CheckpointMismatch"  # output.uri holds checkpoints another job or spec wrote
    BELOW_THRESHOLD = "BelowThreshold"  # QualityGate=False: the adapter missed output.minImprovement; no _SUCCESS
    NOT_SERVABLE = "NotServable"  # the written adapter is one output.serving's servers cannot load; no _SUCCESS
    ATTENTION_UNSUPPORTED = "AttentionUnsupported"  # no attention kernel (model.attnImplementation, sdpa, eager) loads the model
    ADAPTER_MISMATCH = "AdapterMismatch"  # model.adapter was trained with other LoRA settings, or is not a usable adapter
    CANNOT_MERGE = "CannotMerge"  # output.merged cannot fold this adapter into these base weights (checked before training)
    WONT_FIT = "WontFit"  # the preflight's memory estimate exceeds the GPU's; the message names a change that fits
    PREFLIGHT_RUNNING = "PreflightRunning"  # Preflight=False while the CPU-only checks run, before any GPU is requested
    PREFLIGHT_PASSED = "PreflightPassed"  # Preflight=True: every check passed; the training Job was released
    PREFLIGHT_ERROR = "PreflightError"  # Failed=True: the preflight pod ended without a report (its log says why)
    PREEMPTED = "Preempted"  # SIGTERM (preempted, evicted, suspended): the ranks checkpointed the step they reached
    TRAINER_ERROR = "TrainerError"  # any other trainer failure; the message has the last error line


TRAINER_FAILURE_REASONS = frozenset(
    {
        Reason.MODEL_MISSING,
        Reason.DATASET_MISSING,
        Reason.ACCESS_DENIED,
        Reason.EMPTY_DATASET,
        Reason.BAD_RECORD,
        Reason.TARGET_MODULES_NOT_FOUND,
        Reason.OUTPUT_EXISTS,
        Reason.OUT_OF_MEMORY,
        Reason.NAN_LOSS,
        Reason.UNSAFE_OBJECT_KEY,
        Reason.MODEL_TOO_LARGE,
        Reason.DATASET_TOO_LARGE,
        Reason.CHECKPOINT_MISMATCH,
        Reason.BELOW_THRESHOLD,
        Reason.NOT_SERVABLE,
        Reason.CANNOT_MERGE,
        Reason.ADAPTER_MISMATCH,
        Reason.ATTENTION_UNSUPPORTED,
        Reason.WONT_FIT,
        Reason.PREEMPTED,
        Reason.TRAINER_ERROR,
    }
)
