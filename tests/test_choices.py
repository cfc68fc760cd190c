"""The run's decisions as tables (kubetune_trainer.recipe.choices, outputs.quality_gate): early stopping, the
adapter written, the checkpoints dropped, the quality gate and its message; the whole runs in test_outcomes.py show
them carried out."""

from __future__ import annotations

import pytest

from kubetune_api.metrics import Evaluation
from kubetune_api.training import EarlyStopping
from kubetune_trainer.recipe import choices
from kubetune_trainer.recipe.outputs import gate_message, quality_gate

from .conftest import job


def watched(losses: list[float], min_delta: float = 0.0) -> tuple[choices.Watch, list[bool]]:
    watch = choices.Watch()
    best = [watch.see(10 * (i + 1), loss, min_delta) for i, loss in enumerate(losses)]
    return watch, best


@pytest.mark.parametrize(
    ("losses", "min_delta", "patience", "stops", "best_step"),
    [
        ([3.0, 2.0, 1.0], 0.0, 2, False, 30),  # still improving
        ([3.0, 3.0, 3.0], 0.0, 2, True, 10),  # flat: two evaluations without improvement
        ([3.0, 2.995, 2.99], 0.01, 2, True, 30),  # improving, but by less than minDelta: stale, yet the best moves
        ([3.0, 3.5, 2.0, 2.5], 0.0, 2, False, 30),  # an improvement resets the count
        ([3.0, 3.5, 2.0, 2.5, 2.6], 0.0, 2, True, 30),
        ([3.0, 3.0, 3.0], 0.0, None, False, 10),  # no earlyStopping: never
    ],
)
def test_early_stopping_counts_evaluations_without_enough_improvement(
    losses: list[float], min_delta: float, patience: int | None, stops: bool, best_step: int
) -> None:
    watch, _ = watched(losses, min_delta)
    stopping = EarlyStopping(patience=patience, minDelta=min_delta) if patience else None
    stopped = choices.early_stop(watch, stopping, 10 * len(losses))
    assert (stopped is not None) is stops and watch.best_step == best_step
    if stopped is not None:
        assert stopped.stoppedAtStep == 10 * len(losses)
        assert f"did not improve by more than {min_delta} for {patience} evaluations" in stopped.reason
        assert f"(best {watch.best_loss:.4f} at step {best_step})" in stopped.reason


def test_the_best_is_the_lowest_loss_and_a_tie_keeps_the_earlier() -> None:
    watch, best = watched([3.0, 2.0, 2.0, 2.5])
    assert best == [True, True, False, False] and (watch.best_step, watch.best_loss) == (20, 2.0)


@pytest.mark.parametrize(
    ("wanted", "best_step", "last_step", "kept", "choice"),
    [
        ("last", 20, 40, True, "last"),
        ("best", 20, 40, True, "best"),
        ("best", 40, 40, True, "last"),  # the best is the last: written as the last, no copy
        ("best", 20, 40, False, "last (the best adapter was evaluated before a restart and not kept)"),
    ],
)
def test_the_adapter_written(wanted: str, best_step: int, last_step: int, kept: bool, choice: str) -> None:
    watch = choices.Watch(best_step=best_step, best_loss=1.0)
    assert choices.adapter_choice(wanted, watch, last_step, kept) == choice


@pytest.mark.parametrize(
    ("complete", "every", "keep", "dropped"),
    [
        ([], ["step-000010"], 2, []),  # nothing complete yet: an incomplete one may be being written
        (["step-000010", "step-000020", "step-000030"], [], 2, ["step-000010"]),
        (["step-000010"], ["step-000010", "step-000005", "step-000020"], 2, ["step-000005"]),  # 20: still being written
        (["step-000010", "step-000020"], ["best", "step-000010", "step-000020"], 1, ["step-000010"]),  # best/ is not a step
        (["step-000010", "step-000020"], [], 0, []),  # no limit
    ],
)
def test_the_checkpoints_dropped(complete: list[str], every: list[str], keep: int, dropped: list[str]) -> None:
    assert choices.doomed(complete, every + complete, keep) == dropped


@pytest.mark.parametrize(
    ("output", "base", "final", "passed", "said"),
    [
        ({}, Evaluation(evalLoss=2.0), Evaluation(evalLoss=1.0), None, ""),
        ({"minImprovement": 0.4}, Evaluation(evalLoss=2.0), Evaluation(evalLoss=1.0), True, ""),
        (
            {"minImprovement": 0.6},
            Evaluation(evalLoss=2.0),
            Evaluation(evalLoss=1.0),
            False,
            "the adapter's held-out loss 1.0000 is 50.0% below the base model's 2.0000; output.minImprovement asks for 60.0%",
        ),
        (
            {"minImprovement": 0.1},
            Evaluation(evalLoss=2.0),
            Evaluation(evalLoss=None),
            False,
            "output.minImprovement asks for 10.0%",
        ),  # nothing held out to score: not passed
        (
            {"minPreferenceAccuracy": 0.9},
            Evaluation(evalLoss=0.69, preferenceAccuracy=0.5),
            Evaluation(evalLoss=0.3, preferenceAccuracy=0.8),
            False,
            "preference accuracy is 0.800 (before training 0.500); output.minPreferenceAccuracy asks for 0.9",
        ),
    ],
)
def test_the_quality_gate_and_its_message(
    output: dict[str, float], base: Evaluation, final: Evaluation, passed: bool | None, said: str
) -> None:
    from kubetune_api import validate_object

    changes = {"spec.output": {"uri": "s3://adapters/gate/", **output}}
    if "minPreferenceAccuracy" in output:  # a DPO job's gate
        changes |= {"spec.method": {"type": "dpo"}, "spec.dataset": {"train": "s3://data/p.jsonl", "format": "preference"}}
    spec = job(**changes)

    result = validate_object(spec)
    assert result.job is not None, result.problems
    gate = quality_gate(result.job.spec, base, final)
    assert (gate.passed if gate is not None else None) is passed
    if gate is not None:
        assert said in gate_message(gate, base, final)
