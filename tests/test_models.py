"""The API models: defaults, bounds and cross-field rules (fast tier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_api import FineTuneJob, validate_object
from kubetune_api.conditions import TRAINER_FAILURE_REASONS, Reason
from kubetune_api.contract import ContractError, WorkerEnv

from .cases import INVALID_CASES
from .conftest import job


def paths(body: dict[str, Any]) -> list[str]:
    return [p.path for p in validate_object(body).problems]


def test_minimal_fills_every_default() -> None:
    spec = FineTuneJob.model_validate(job()).spec
    assert spec.lora.r == 16 and spec.lora.targetModules == ["all-linear"]
    assert spec.deepspeed.zeroStage == 2 and spec.deepspeed.offload == "none"
    assert spec.workers.replicas == 1 and spec.workers.processes == 1
    assert spec.training.epochs == 1 and spec.runPolicy.backoffLimit == 3
    assert spec.validation_split == 0.05
    assert spec.global_batch_size == 4


@pytest.mark.parametrize(("changes", "expected"), INVALID_CASES)
def test_invalid_field_is_named(changes: dict[str, Any], expected: str) -> None:
    assert paths(job(**changes)) == [expected]


def test_missing_required_sections_are_each_named() -> None:
    body = job()
    body["spec"] = {}
    assert sorted(paths(body)) == ["spec.dataset", "spec.model", "spec.output"]


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.training.globalBatchSize": 64, "spec.training.gradientAccumulationSteps": 8, "spec.workers.replicas": 2},
        {"spec.workers.gpusPerWorker": 0, "spec.workers.processesPerWorker": 4},
        {"spec.deepspeed.zeroStage": 3, "spec.deepspeed.offload": "all"},
        {"spec.training.learningRate": 1},  # an integer where a number is allowed
        {"spec.model.uri": "meta-llama/Llama-3.2-1B"},
        {"spec.model.uri": "./models/tiny/"},
        {"spec.workers.resources": {"requests": {"cpu": "500m", "memory": "16Gi"}, "limits": {"cpu": 8}}},
        {"metadata.name": "a" * 52},
    ],
)
def test_valid_variations(changes: dict[str, Any]) -> None:
    assert paths(job(**changes)) == []


def test_world_size_and_batch_arithmetic() -> None:
    spec = FineTuneJob.model_validate(
        job(
            **{
                "spec.workers": {"replicas": 4, "gpusPerWorker": 8},
                "spec.training": {"microBatchSize": 2, "gradientAccumulationSteps": 4},
            }
        )
    ).spec
    assert spec.workers.world_size == 32
    assert spec.global_batch_size == 256


def test_models_are_frozen() -> None:
    spec = FineTuneJob.model_validate(job()).spec
    with pytest.raises(ValueError):
        spec.lora.r = 4  # type: ignore[misc]


def test_every_reason_is_documented_and_trainer_reasons_are_reasons() -> None:
    from kubetune_api import conditions

    text = Path(conditions.__file__).read_text()
    for reason in Reason:
        line = next(line for line in text.splitlines() if f'"{reason.value}"' in line)
        assert "#" in line, f"{reason} has no comment saying when it is used"
    assert set(Reason) >= TRAINER_FAILURE_REASONS


def test_worker_env_reads_the_contract() -> None:
    env = WorkerEnv.from_environ(
        {
            "KUBETUNE_CONFIG": "/etc/kubetune/trainer.yaml",
            "KUBETUNE_NUM_WORKERS": "2",
            "JOB_COMPLETION_INDEX": "1",
            "KUBETUNE_PROCS_PER_WORKER": "8",
            "KUBETUNE_MASTER_ADDR": "job-0.job",
        }
    )
    assert (env.worker_rank, env.num_workers, env.procs_per_worker, env.master_port) == (1, 2, 8, 29500)
    with pytest.raises(ContractError, match="JOB_COMPLETION_INDEX=2 must be below KUBETUNE_NUM_WORKERS=2"):
        WorkerEnv.from_environ({"KUBETUNE_NUM_WORKERS": "2", "JOB_COMPLETION_INDEX": "2"})
    with pytest.raises(ContractError, match="KUBETUNE_NUM_WORKERS must be an integer"):
        WorkerEnv.from_environ({"KUBETUNE_NUM_WORKERS": "two"})


def test_worker_env_writes_what_it_reads() -> None:
    """The launcher hands its WorkerEnv to the ranks as variables (to_environ), never by changing its own
    environment; from_environ reads exactly that back. The gang restart count is read too (manifest.json)."""
    env = WorkerEnv.from_environ(
        {
            "KUBETUNE_CONFIG": "/etc/kubetune/trainer.yaml",
            "KUBETUNE_JOB_NAME": "a",
            "KUBETUNE_JOB_UID": "u-1",
            "KUBETUNE_NUM_WORKERS": "3",
            "JOB_COMPLETION_INDEX": "2",
            "KUBETUNE_PROCS_PER_WORKER": "4",
            "KUBETUNE_MASTER_ADDR": "a-0.a",
            "KUBETUNE_MASTER_PORT": "29600",
            "KUBETUNE_TERMINATION_LOG": "/dev/termination-log",
            "KUBETUNE_RESTART_COUNT": "2",
        }
    )
    assert env.restarts == 2
    assert WorkerEnv.from_environ(env.to_environ()) == env
    local = WorkerEnv.from_environ({})
    assert WorkerEnv.from_environ(local.to_environ()) == local and "KUBETUNE_TERMINATION_LOG" not in local.to_environ()


def test_every_variable_the_operator_sets_is_named_in_the_contract() -> None:
    """The pod's environment is spelled once (contract.ENV_*): the operator writes those names and nothing else of
    kubetune's own."""
    from kubetune_api import contract
    from kubetune_operator import builders

    from .operator_helpers import plan_for

    named = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    plan = plan_for(**{"spec.workers": {"replicas": 2, "gpusPerWorker": 0}})
    for made in (builders.build_job(plan), builders.build_preflight_job(plan)):
        env = made["spec"]["template"]["spec"]["containers"][0]["env"]
        ours = {e["name"] for e in env if e["name"].startswith("KUBETUNE_")}
        assert ours and ours <= named, ours - named


@pytest.mark.parametrize(
    ("method", "packing", "packs"),
    [("sft", None, True), ("dpo", None, False), ("sft", False, False), ("dpo", True, True)],
)
def test_packing_defaults_to_on_for_sft_and_off_for_dpo(method: str, packing: bool | None, packs: bool) -> None:
    """docs/preference.md: packed preference pairs make fewer, larger steps and end at a higher held-out loss for the
    same epochs and time (make bench-dpo --sides kubetune,packed); a job that sets packing gets what it set."""
    dataset: dict[str, Any] = {"train": "s3://data/train.jsonl"}
    if method == "dpo":
        dataset["format"] = "preference"
    if packing is not None:
        dataset["packing"] = packing
    changes: dict[str, Any] = {"spec.dataset": dataset}
    if method == "dpo":
        changes["spec.method"] = {"type": "dpo"}
    result = validate_object(job(**changes))
    assert result.job is not None, result.problems
    assert result.job.spec.packs is packs


def test_a_checkpoint_an_earlier_version_wrote_for_a_spec_that_left_packing_out_is_still_its_own() -> None:
    """The default changed (None, was true): the digest forms cover every combination of changed defaults, so a
    checkpoint or a Job an earlier version made for the same spec file is still recognised."""
    import hashlib
    import json

    from kubetune_api.job import digest_forms

    result = validate_object(job())
    assert result.job is not None
    spec = result.job.spec
    forms = digest_forms(spec, ("dataset", "model"))
    before = json.loads(json.dumps(forms[0]))
    before["dataset"]["packing"] = True  # what the previous version dumped: the default written out
    assert "packing" not in forms[0]["dataset"] and before in forms
    digests = {hashlib.sha256(json.dumps(f, sort_keys=True).encode()).hexdigest() for f in forms}
    assert hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest() in digests
