"""The FineTuneJob resource: its spec (the sections together, with rules that span them) and the object."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ._base import Rule, Section, section_default
from .dataset import DEFAULT_VALIDATION_SPLIT, DatasetSpec
from .deepspeed import DeepSpeedSpec
from .evaluation import EvaluationSpec
from .lora import LoraSpec
from .method import PREFERENCE_FORMATS, SFT_FORMATS, MethodSpec, row_limit
from .model import ModelSpec
from .names import API_VERSION, KIND
from .output import OutputSpec
from .run_policy import RunPolicySpec
from .serving import RANKS_TEXT, VLLM_LORA_RANKS, VLLM_MODULES, module_problem
from .status import FineTuneJobStatus
from .storage import StorageSpec
from .training import TrainingSpec
from .workers import WorkersSpec

_PROCS_CEL = (
    "(has(self.workers.processesPerWorker) ? self.workers.processesPerWorker : "
    "(self.workers.gpusPerWorker > 0 ? self.workers.gpusPerWorker : 1))"
)


_SERVED_CEL = "has(self.output.serving) && (has(self.output.serving.vllm) || has(self.output.serving.kserve))"


def _served(spec: FineTuneJobSpec) -> bool:
    return spec.output.serving is not None and bool(spec.output.serving.targets())


def _under(spec: FineTuneJobSpec, target: str) -> bool:
    served = getattr(spec.output.serving, target, None) if spec.output.serving is not None else None
    return served is None or spec.lora.r <= served.maxLoraRank


def _rank_rule(target: str) -> Rule:
    return Rule(
        field="lora.r",
        message=f"lora.r must be at most output.serving.{target}.maxLoraRank (the server's --max-lora-rank)",
        cel=f"!has(self.output.serving) || !has(self.output.serving.{target}) || "
        f"self.lora.r <= self.output.serving.{target}.maxLoraRank",
        check=lambda s: _under(s, target),
    )


def _batch_ok(spec: FineTuneJobSpec) -> bool:
    t = spec.training
    return t.globalBatchSize is None or t.globalBatchSize == spec.global_batch_size


# The sections the pods read (the ConfigMap, the pod template): fixed once the workers may exist. runPolicy is the
# operator's alone (suspend, deadlines, ttl, the preflight switch) and stays mutable.
FROZEN_SECTIONS = ("model", "method", "dataset", "lora", "training", "deepspeed", "workers", "storage", "output", "evaluation")
# Fields added since digests were first recorded, dropped from a dump while empty (method: while it is the default)
ADDED_FIELDS = {
    "output": ("serving", "tracking", "minPreferenceAccuracy", "minTaskScore"),
    "model": ("adapter",),
    "training": ("chunkedLoss",),
}


def sections_dump(spec: FineTuneJobSpec, sections: tuple[str, ...], exclude_none: bool = True) -> dict[str, Any]:
    """The named sections as JSON values, method and evaluation left out while they are the defaults (sft, no
    tasks): a job made before either existed keeps its digests."""
    dump = {name: getattr(spec, name).model_dump(mode="json", exclude_none=exclude_none) for name in sections}
    if "method" in dump and spec.method == MethodSpec():
        del dump["method"]
    if "evaluation" in dump and spec.evaluation == EvaluationSpec():
        del dump["evaluation"]
    return dump


def _digest(frozen: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(frozen, sort_keys=True).encode()).hexdigest()[:32]


def pods_digest(spec: FineTuneJobSpec) -> str:
    """A digest of what the pods read (FROZEN_SECTIONS): recorded on the Job, compared at every reconcile. Empty
    fields are left out, so a field a later version adds (empty unless set) leaves every existing job's digest as
    it was: an operator upgrade never takes running workers for a changed spec."""
    return _digest(sections_dump(spec, FROZEN_SECTIONS))


def as_dumped_before(sections: dict[str, Any]) -> dict[str, Any]:
    """Sections dumped with every field, as versions before ADDED_FIELDS dumped them (those were added since and are
    dropped when empty): what the pods' digest and the checkpoints' identity were made of before they left empty
    fields out."""
    for section, added in ADDED_FIELDS.items():
        for name in added:
            if section in sections and sections[section].get(name) is None:
                sections[section].pop(name, None)
    return sections


# Defaults that changed, as (section, field): (today's default, the earlier one). A spec that leaves the field out
# read the earlier default then (the cluster stored it; a local spec file did not): the same job to its digests.
CHANGED_DEFAULTS = {("model", "attnImplementation"): ("auto", "sdpa"), ("dataset", "packing"): (None, True)}


def with_earlier_defaults(sections: dict[str, Any], changed: dict[tuple[str, str], tuple[Any, Any]]) -> dict[str, Any]:
    """The sections with each of these changed defaults as the earlier versions wrote it (a copy)."""
    out: dict[str, Any] = json.loads(json.dumps(sections))
    for (section, name), (now, before) in changed.items():
        if section in out and out[section].get(name) == now:
            out[section][name] = before
    return out


def digest_forms(spec: FineTuneJobSpec, sections: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every form an earlier version dumped these sections in: today's; with every field, empty ones too (before
    empty fields were left out); and each of those with any of the defaults CHANGED_DEFAULTS names as they were
    (each version changed some: every combination)."""
    forms = [sections_dump(spec, sections), as_dumped_before(sections_dump(spec, sections, exclude_none=False))]
    changed = list(CHANGED_DEFAULTS.items())
    combos = [dict(c) for n in range(1, len(changed) + 1) for c in itertools.combinations(changed, n)]
    return forms + [with_earlier_defaults(form, combo) for combo in combos for form in forms]


def pods_digests(spec: FineTuneJobSpec) -> set[str]:
    """The digests a Job made by this version or an earlier one carries for this spec (digest_forms)."""
    return {_digest(form) for form in digest_forms(spec, FROZEN_SECTIONS)}


CHUNKED_LOSS_VOCAB = 32_768  # training.chunkedLoss unset: on from this vocabulary size
LOSS_CHUNK_BYTES = 2**30  # the float32 logits of one chunk


def chunked_loss(spec: FineTuneJobSpec, vocab: int) -> bool:
    """Whether the training loss is computed a chunk at a time (training.chunkedLoss, its default resolved)."""
    applies = spec.method.type == "sft" and spec.deepspeed.zeroStage < 3
    asked = spec.training.chunkedLoss
    return applies and (asked if asked is not None else vocab >= CHUNKED_LOSS_VOCAB)


def loss_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the chunked loss: about LOSS_CHUNK_BYTES of float32 logits."""
    return max(128, LOSS_CHUNK_BYTES // (4 * vocab))


class FineTuneJobSpec(Section):
    """What to fine-tune, on what data, how, on which workers, and where the adapter goes."""

    model: ModelSpec = Field(description=ModelSpec.__doc__)
    method: MethodSpec = Field(
        default_factory=MethodSpec, description=MethodSpec.__doc__, json_schema_extra=section_default(MethodSpec)
    )
    dataset: DatasetSpec = Field(description=DatasetSpec.__doc__)
    lora: LoraSpec = Field(default_factory=LoraSpec, description=LoraSpec.__doc__, json_schema_extra=section_default(LoraSpec))
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description=TrainingSpec.__doc__, json_schema_extra=section_default(TrainingSpec)
    )
    deepspeed: DeepSpeedSpec = Field(
        default_factory=DeepSpeedSpec, description=DeepSpeedSpec.__doc__, json_schema_extra=section_default(DeepSpeedSpec)
    )
    workers: WorkersSpec = Field(
        default_factory=WorkersSpec, description=WorkersSpec.__doc__, json_schema_extra=section_default(WorkersSpec)
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description=StorageSpec.__doc__, json_schema_extra=section_default(StorageSpec)
    )
    output: OutputSpec = Field(description=OutputSpec.__doc__)
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description=EvaluationSpec.__doc__, json_schema_extra=section_default(EvaluationSpec)
    )
    runPolicy: RunPolicySpec = Field(
        default_factory=RunPolicySpec, description=RunPolicySpec.__doc__, json_schema_extra=section_default(RunPolicySpec)
    )

    rules = (
        Rule(
            field="dataset.format",
            message=f"with method.type dpo, dataset.format must be one of {', '.join(PREFERENCE_FORMATS)} (preference "
            f"pairs); with sft, one of {', '.join(SFT_FORMATS)}",
            cel="(self.method.type == 'dpo') == (self.dataset.format in ["
            + ", ".join(f"'{f}'" for f in PREFERENCE_FORMATS)
            + "])",
            check=lambda s: (s.method.type == "dpo") == (s.dataset.format in PREFERENCE_FORMATS),
        ),
        Rule(
            field="training.chunkedLoss",
            message="training.chunkedLoss applies to sft under deepspeed.zeroStage 0, 1 or 2 (DPO scores whole "
            "sequences; ZeRO-3 gathers the output layer once per forward)",
            cel="!has(self.training.chunkedLoss) || !self.training.chunkedLoss || "
            "(self.method.type == 'sft' && self.deepspeed.zeroStage < 3)",
            check=lambda s: not s.training.chunkedLoss or (s.method.type == "sft" and s.deepspeed.zeroStage < 3),
        ),
        Rule(
            field="output.minPreferenceAccuracy",
            message="output.minPreferenceAccuracy gates DPO jobs only (method.type: dpo)",
            cel="!has(self.output.minPreferenceAccuracy) || self.method.type == 'dpo'",
            check=lambda s: s.output.minPreferenceAccuracy is None or s.method.type == "dpo",
        ),
        Rule(
            field="output.minTaskScore",
            message="output.minTaskScore names tasks of evaluation.tasks only",
            cel="!has(self.output.minTaskScore) || self.output.minTaskScore.all(k, has(self.evaluation.tasks) && "
            "self.evaluation.tasks.exists(t, t.name == k))",
            check=lambda s: not s.output.minTaskScore or set(s.output.minTaskScore) <= {t.name for t in s.evaluation.tasks},
        ),
        Rule(
            field="evaluation.tasks",
            message="evaluation.tasks run on SFT jobs (method.type: sft): a DPO job's held-out split holds pairs",
            cel="!has(self.evaluation.tasks) || size(self.evaluation.tasks) == 0 || self.method.type == 'sft'",
            check=lambda s: not s.evaluation.tasks or s.method.type == "sft",
        ),
        Rule(
            field="training.globalBatchSize",
            message="training.globalBatchSize must equal microBatchSize x gradientAccumulationSteps x "
            "workers.replicas x processes per worker",
            cel="!has(self.training.globalBatchSize) || self.training.globalBatchSize == "
            f"self.training.microBatchSize * self.training.gradientAccumulationSteps * self.workers.replicas * {_PROCS_CEL}",
            check=_batch_ok,
        ),
        Rule(
            field="lora.r",
            message=f"lora.r must be one of {RANKS_TEXT} for the adapter to be served by vLLM (output.serving)",
            cel=f"!({_SERVED_CEL}) || self.lora.r in [{RANKS_TEXT}]",
            check=lambda s: not _served(s) or s.lora.r in VLLM_LORA_RANKS,
        ),
        _rank_rule("vllm"),
        _rank_rule("kserve"),
        Rule(
            field="lora.bias",
            message="lora.bias must be none when output.serving is set: vLLM loads LoRA weights only, not trained biases",
            cel=f"!({_SERVED_CEL}) || self.lora.bias == 'none'",
            check=lambda s: not _served(s) or s.lora.bias == "none",
        ),
        Rule(
            field="lora.targetModules",
            message=f"with output.serving, lora.targetModules must be all-linear or modules vLLM adapts: {', '.join(VLLM_MODULES)}",
            cel=f"!({_SERVED_CEL}) || self.lora.targetModules.all(m, m in ['all-linear', "
            + ", ".join(f"'{m}'" for m in VLLM_MODULES)
            + "])",
            check=lambda s: not _served(s) or module_problem(s.lora.targetModules) is None,
        ),
    )

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step across every process."""
        t = self.training
        return t.microBatchSize * t.gradientAccumulationSteps * self.workers.world_size

    @property
    def row_tokens(self) -> int:
        """The longest row a step trains on (method.row_limit): what the memory estimate sizes and the prepared
        dataset's rows are checked against."""
        return row_limit(self.dataset.maxSeqLength, self.method.type == "dpo")

    @property
    def packs(self) -> bool:
        """dataset.packing in force: as set, else on for SFT and off for DPO (docs/preference.md has the figures)."""
        if self.dataset.packing is not None:
            return self.dataset.packing
        return self.method.type != "dpo"

    @property
    def validation_split(self) -> float:
        """The held-out fraction in force: 0 with a validation file, else the split or its default."""
        if self.dataset.validation is not None:
            return 0.0
        return self.dataset.validationSplit if self.dataset.validationSplit is not None else DEFAULT_VALIDATION_SPLIT


class FineTuneJob(BaseModel):
    """A FineTuneJob: LoRA fine-tuning of a base model with DeepSpeed ZeRO on Kubernetes."""

    model_config = ConfigDict(extra="forbid")

    apiVersion: str = Field(API_VERSION, description=f"{API_VERSION}")
    kind: str = Field(KIND, description=KIND)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: FineTuneJobSpec = Field(description=FineTuneJobSpec.__doc__)
    status: FineTuneJobStatus | None = Field(None, description=FineTuneJobStatus.__doc__)
