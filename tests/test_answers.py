"""How tasks are answered and scored (kubetune_trainer.recipe.answers, tasks/items.py), on a tiny model in this
process: batched left-padded generation against one prompt at a time, the choice grader's log-likelihoods against
the model's own, the items a sample gives, the standard error, the ranks' shares."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kubetune_api.evaluation import GenerationSpec, GraderSpec, TaskSpec
from kubetune_trainer.recipe import answers
from kubetune_trainer.tasks.items import IGNORE, Item, from_samples, last_scored_run
from kubetune_trainer.tiny import byte_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def model() -> tuple[Any, Any]:
    tokenizer = byte_tokenizer()
    return tokenizer, tiny_llama(tokenizer, hidden=32, layers=2, heads=2, seed=3).eval()


def test_batched_left_padded_answers_are_the_one_at_a_time_answers(model: tuple[Any, Any]) -> None:
    tokenizer, lm = model
    prompts = [tokenizer(p)["input_ids"] for p in ("add: 1 + 2\n", "reverse: a much longer prompt here\n", "x")]
    gen = GenerationSpec(maxNewTokens=8)
    with answers.generating(lm):
        batched, produced = answers.generate(lm, tokenizer, prompts, gen, "cpu", synced=False)
        alone = [answers.generate(lm, tokenizer, [p], gen, "cpu", synced=False)[0][0] for p in prompts]
    assert batched == alone and len(produced) == 3 and all(0 <= n <= 8 for n in produced)


def test_an_answer_is_cut_at_its_first_stop_string() -> None:
    assert answers.cut("42\nmore\n", ["\n"]) == "42" and answers.cut("a. b", [".", " "]) == "a" and answers.cut("ab", []) == "ab"


def test_the_choice_graders_log_likelihoods_are_the_models(model: tuple[Any, Any]) -> None:
    import torch

    tokenizer, lm = model
    prompt = tokenizer("sentiment: great\n")["input_ids"]
    options = [" positive", " negative", " x"]
    with answers.generating(lm):
        got = answers.option_logps(lm, tokenizer, prompt, options, "cpu")
        for option, logp in zip(options, got, strict=True):
            tail = tokenizer(option, add_special_tokens=False)["input_ids"]
            logits = lm(input_ids=torch.tensor([prompt + tail])).logits[0].float()
            steps = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            assert logp == pytest.approx(float(steps[torch.arange(len(tail)), torch.tensor(tail)].sum()), abs=1e-4)


def test_an_item_is_the_prompt_before_the_last_scored_run_and_that_run_decoded() -> None:
    tokenizer = byte_tokenizer()

    class Sample:
        def __init__(self, ids: list[int], labels: list[int]) -> None:
            self.input_ids, self.labels = ids, labels

    prompt, reply = tokenizer("Q: 2+2?")["input_ids"], tokenizer(" 4", add_special_tokens=False)["input_ids"]
    two_turns = Sample(prompt + reply + prompt + reply, [IGNORE] * len(prompt) + reply + [IGNORE] * len(prompt) + reply)
    unscored = Sample(prompt, [IGNORE] * len(prompt))
    no_prompt = Sample(reply, list(reply))
    items, skipped = from_samples([two_turns, unscored, no_prompt], tokenizer, None)
    assert skipped == 2 and items == [Item(0, prompt + reply + prompt, "4")]  # the last turn is the reference
    assert last_scored_run([IGNORE, 5, 6, IGNORE, 7, IGNORE]) == (4, 5) and last_scored_run([IGNORE]) is None
    assert len(from_samples([two_turns] * 5, tokenizer, 2)[0]) == 2  # limit


def test_a_score_has_the_binomial_standard_error_for_right_or_wrong_grades() -> None:
    s = answers.score(total=3.0, squares=3.0, n=10.0)  # 3 of 10 right
    assert s.score == 0.3 and s.stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 9), abs=1e-6)
    assert answers.score(0.0, 0.0, 0.0).score is None and answers.score(1.0, 1.0, 1.0).stderr is None


def test_each_rank_answers_its_share_and_in_step_the_shares_are_topped_up() -> None:
    items = [Item(i, [1, 2], str(i)) for i in range(5)]
    mine, real = answers.shares(items, rank=1, world=2, synced=False)
    assert [i.index for i in mine] == [1, 3] and real == 2
    mine, real = answers.shares(items, rank=1, world=2, synced=True)
    assert [i.index for i in mine] == [1, 3, 0] and real == 2  # three like rank 0's, the last not counted
    assert answers.shares([], rank=0, world=2, synced=True) == ([], 0)


def test_a_choice_tasks_items_outside_its_options_are_skipped() -> None:
    task = TaskSpec(name="label", graders=[GraderSpec(type="choice", options=["Yes", "no"])])
    kept, skipped = answers.usable(task, [Item(0, [1], "yes"), Item(1, [1], "maybe")])
    assert [i.index for i in kept] == [0] and skipped == 1


def test_task_scores_reach_mlflow_as_metrics_named_by_task_and_grader() -> None:
    from kubetune_api.metrics import GraderResult, Score, TaskResult
    from kubetune_trainer.recipe.tracking import task_metrics

    def graded(kind: str, base: float, adapter: float) -> GraderResult:
        return GraderResult(grader=kind, base=Score(score=base, stderr=0.1), adapter=Score(score=adapter, stderr=0.1))

    from types import SimpleNamespace

    qa = TaskResult(items=10, graders=[graded("regex", 0.1, 0.5), graded("regex", 0.2, 0.6), graded("chrf", 0.3, 0.7)])
    run = SimpleNamespace(tasks={"qa": qa})

    assert task_metrics(run) == {  # type: ignore[arg-type]
        "task.qa.regex0.base": 0.1,
        "task.qa.regex0.adapter": 0.5,
        "task.qa.regex1.base": 0.2,
        "task.qa.regex1.adapter": 0.6,
        "task.qa.chrf.base": 0.3,
        "task.qa.chrf.adapter": 0.7,
    }


def test_kubetune_eval_needs_tasks_to_evaluate() -> None:
    import subprocess
    import sys

    from .conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "eval", str(ROOT / "examples" / "minimal.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "has no evaluation.tasks: nothing to evaluate" in result.stderr


@pytest.fixture()
def group(tmp_path: Any) -> Any:
    """A one-process gloo group: a task's sums (and whether it failed) go across ranks."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_task_that_fails_is_recorded_and_the_run_goes_on(model: tuple[Any, Any], group: None) -> None:
    """Out of memory while generating, say: the task gets its error and no scores, the next task still runs, and
    nothing is raised (the adapter is still written; a gate on the task then holds it back)."""
    from kubetune_api.job import FineTuneJobSpec
    from kubetune_trainer.tasks.table import lines

    tokenizer, lm = model

    class Failing:
        def __getattr__(self, name: str) -> Any:
            return getattr(lm, name)

        def __call__(self, **inputs: Any) -> Any:
            return lm(**inputs)

        def generate(self, **_: Any) -> Any:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "./m/"},
            "dataset": {"train": "./t.jsonl"},
            "output": {"uri": "./o/"},
            "evaluation": {
                "tasks": [
                    {"name": "gen", "graders": [{"type": "exactMatch"}]},
                    {"name": "pick", "graders": [{"type": "choice", "options": ["yes", "no"]}]},
                ]
            },
        }
    )

    class Sample:
        def __init__(self, prompt: str, reply: str) -> None:
            p, r = tokenizer(prompt)["input_ids"], tokenizer(reply, add_special_tokens=False)["input_ids"]
            self.input_ids, self.labels = p + r, [IGNORE] * len(p) + r

    heldout = [Sample("ok? ", "yes"), Sample("bad? ", "no")]
    results, _ = answers.run(spec, Failing(), tokenizer, heldout, "cpu", sides=("base",))
    assert results["gen"].error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" and not results["gen"].graders
    assert results["pick"].error is None and results["pick"].items == 2  # the choice task never generates: it ran
    assert "gen: no scores, the task failed: RuntimeError" in "\n".join(lines(results))
