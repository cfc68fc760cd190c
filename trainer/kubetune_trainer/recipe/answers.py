"""spec.evaluation.tasks after training: each rank answers its share of a task's items with the base model (the
adapter disabled) and with the adapter, batched with a KV cache and left padding (greedy unless a temperature is
set), grades the answers (tasks/graders.py; the choice grader by each option's log-likelihood instead), and the
sums of grades go across ranks in one all-reduce per task and model. Rank 0 keeps its first items, both answers and
every grade, for samples.jsonl. Under ZeRO-3 every rank runs the same number of batches (generation synced)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubetune_api.evaluation import GenerationSpec, GraderSpec, TaskSpec
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.metrics import GraderResult, Score, TaskResult
from kubetune_trainer import attention
from kubetune_trainer.recipe.rank import all_sum
from kubetune_trainer.tasks import graders
from kubetune_trainer.tasks.items import Item, from_samples, own_samples

BATCH = 16  # answers generated at once per rank


def score(total: float, squares: float, n: float) -> Score:
    """The mean grade and its standard error over n items (for 0/1 grades, the binomial one: sqrt(p(1-p)/(n-1)))."""
    if n <= 0:
        return Score()
    mean = total / n
    if n < 2:
        return Score(score=round(mean, 6))
    variance = max(squares - n * mean * mean, 0.0) / (n - 1)
    return Score(score=round(mean, 6), stderr=round(math.sqrt(variance / n), 6))


def shares(items: Sequence[Item], rank: int, world: int, synced: bool) -> tuple[list[Item], int]:
    """This rank's items (every world-th) and how many of them count. In step (ZeRO-3: every forward gathers
    parameters from every rank) each rank's share is topped up to the largest with copies of the first item, which
    are answered and not counted."""
    mine = list(items[rank::world])
    real = len(mine)
    most = math.ceil(len(items) / world) if items else 0
    if synced and items:
        mine += [items[0]] * (most - real)
    return mine, real


@contextlib.contextmanager
def generating(module: Any) -> Iterator[None]:
    """The model set up to generate: eval mode, no gradients, and the dense attention path where training used the
    packed-rows kernel (it takes no KV cache); all put back after."""
    import torch

    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    was = getattr(base.config, "_attn_implementation", None)
    switch = was == attention.VARLEN
    if switch:
        base.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            yield
    finally:
        if switch:
            base.set_attn_implementation(was)


def cut(text: str, stops: Sequence[str]) -> str:
    """An answer cut before the first stop string."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def generate(
    module: Any, tokenizer: Any, prompts: list[list[int]], gen: GenerationSpec, device: Any, synced: bool
) -> tuple[list[str], list[int]]:
    """Answers to the prompts (left-padded into one batch) and the new tokens of each."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    eos = module.generation_config.eos_token_id if getattr(module, "generation_config", None) else None
    eos_ids = sorted(
        {
            *([eos] if isinstance(eos, int) else eos or []),
            *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []),
        }
    )
    options: dict[str, Any] = {"max_new_tokens": gen.maxNewTokens, "pad_token_id": pad, "eos_token_id": eos_ids or None}
    if gen.temperature > 0:
        options.update(do_sample=True, temperature=gen.temperature, top_p=1.0, top_k=0)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if synced:
        options["synced_gpus"] = True
    out = module.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options)
    answers, produced = [], []
    for row in out[:, width:].tolist():
        kept = []
        for token in row:
            if token in eos_ids or token == pad:
                break
            kept.append(token)
        produced.append(len(kept))
        answers.append(cut(tokenizer.decode(kept, skip_special_tokens=True), gen.stop))
    return answers, produced


def option_logps(module: Any, tokenizer: Any, prompt: list[int], options: Sequence[str], device: Any) -> list[float]:
    """Each option's summed log-probability after the prompt (one forward over the options as a batch)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tails = [tokenizer(o, add_special_tokens=False)["input_ids"] or [pad] for o in options]
    width = len(prompt) + max(len(t) for t in tails)
    ids = torch.full((len(tails), width), pad, dtype=torch.long)
    mask = torch.zeros((len(tails), width), dtype=torch.long)
    for i, tail in enumerate(tails):
        row = prompt + tail
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    logits = module(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    logps = torch.log_softmax(logits[:, :-1, :], dim=-1)
    out = []
    for i, tail in enumerate(tails):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tail), device=logps.device)
        targets = torch.tensor(tail, dtype=torch.long, device=logps.device)
        out.append(float(logps[i, positions, targets].sum()))
    return out


class Answers:
    """One model's answers and grades on this rank's items (and the sums that go across ranks)."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.answers: list[str] = []
        self.grades: list[list[float]] = []  # per item, one per grader
        self.tokens = 0

    def sums(self) -> list[float]:
        out: list[float] = []
        for g in range(len(self.task.graders)):
            column = [row[g] for row in self.grades]
            out += [sum(column), sum(x * x for x in column), float(len(column))]
        return [*out, float(self.tokens)]


def answer(module: Any, tokenizer: Any, task: TaskSpec, mine: list[Item], real: int, device: Any, synced: bool) -> Answers:
    """This rank's answers and grades for the task with the model as it is now (the caller disables the adapter); the
    first `real` items count (the rest keep the ranks in step)."""
    got = Answers(task)
    generative = any(g.type != "choice" for g in task.graders)
    for start in range(0, len(mine), BATCH):
        batch = mine[start : start + BATCH]
        texts, produced = [""] * len(batch), [0] * len(batch)
        if generative:
            texts, produced = generate(module, tokenizer, [i.prompt for i in batch], task.generation, device, synced)
        for k, (item, text) in enumerate(zip(batch, texts, strict=True)):
            grades = [_grade(module, tokenizer, g, item, text, device) for g in task.graders]
            if start + k < real:
                got.answers.append(text)
                got.grades.append(grades)
                got.tokens += produced[k]
    return got


def _grade(module: Any, tokenizer: Any, grader: GraderSpec, item: Item, text: str, device: Any) -> float:
    if grader.type != "choice":
        return graders.grade(grader, text, item.reference)
    options = list(grader.options or [])
    logps = option_logps(module, tokenizer, item.prompt, options, device)
    return graders.chose(grader, options[max(range(len(options)), key=logps.__getitem__)], item.reference)


def usable(task: TaskSpec, items: list[Item]) -> tuple[list[Item], int]:
    """A choice task's items whose reference is one of its options (the others cannot be graded: skipped)."""
    chooser = next((g for g in task.graders if g.type == "choice"), None)
    if chooser is None:
        return items, 0
    options = {graders.normalise(o, chooser) for o in chooser.options or []}
    kept = [i for i in items if graders.normalise(i.reference, chooser) in options]
    return kept, len(items) - len(kept)


SIDES = ("base", "adapter")


def run(
    spec: FineTuneJobSpec,
    module: Any,
    tokenizer: Any,
    heldout: Sequence[Any],
    device: Any,
    rank: int = 0,
    world: int = 1,
    synced: bool = False,
    sides: Sequence[str] = SIDES,
    own: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[dict[str, TaskResult], list[dict[str, Any]]]:
    """Every task of spec.evaluation.tasks with the base model (the adapter disabled) and the adapter, this rank
    answering its share; the scores over every rank, and rank 0's samples. `sides`: base only, for a base model
    on its own (`kubetune eval --base-only`: the adapter side is then not scored). A task with items of its own takes
    them from `own` (read before training: own_items), the others the held-out samples. A task that fails on any rank
    (out of memory while generating, say) is recorded with its error and the rest go on: the adapter is still
    written (a task the gate names then has no score, and the gate holds the adapter back)."""
    import torch

    results: dict[str, TaskResult] = {}
    samples: list[dict[str, Any]] = []
    for task in spec.evaluation.tasks:
        started = time.monotonic()
        source = (own or {}).get(task.name, heldout) if task.items is not None else heldout
        items, skipped = from_samples(source, tokenizer, task.limit)
        items, unusable = usable(task, items)
        mine, real = shares(items, rank, world, synced)
        got: dict[str, Answers] = {}
        error = ""
        try:
            with generating(module):
                for name in sides:
                    if task.generation.temperature > 0:
                        torch.manual_seed(task.generation.seed + rank)
                    plain = name == "base" and hasattr(module, "disable_adapter")  # (a bare base model: nothing to disable)
                    with module.disable_adapter() if plain else contextlib.nullcontext():
                        got[name] = answer(module, tokenizer, task, mine, real, device, synced)
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
        if all_sum(device, [1.0 if error else 0.0])[0]:  # every rank agrees the task failed, whichever rank it was
            results[task.name] = TaskResult(
                items=len(items), skipped=skipped + unusable, graders=[], error=error or "failed on another rank"
            )
            continue
        none = [0.0] * (3 * len(task.graders) + 1)
        totals = {name: all_sum(device, got[name].sums()) if name in got else none for name in SIDES}
        results[task.name] = TaskResult(
            items=len(items),
            skipped=skipped + unusable,
            graders=[
                GraderResult(
                    grader=g.type,
                    base=score(*totals["base"][3 * k : 3 * k + 3]),
                    adapter=score(*totals["adapter"][3 * k : 3 * k + 3]),
                )
                for k, g in enumerate(task.graders)
            ],
            answerTokens=int(totals["adapter"][-1]),
            seconds=round(time.monotonic() - started, 3),
        )
        if rank == 0:
            samples += _samples(task, mine, got, tokenizer)
    return results, samples


def _samples(task: TaskSpec, mine: list[Item], got: dict[str, Answers], tokenizer: Any) -> list[dict[str, Any]]:
    out = []
    shown = min(task.samples, *(len(a.answers) for a in got.values()))
    for k, item in enumerate(mine[:shown]):
        out.append(
            {
                "task": task.name,
                "item": item.index,
                "prompt": tokenizer.decode(item.prompt, skip_special_tokens=False),
                "reference": item.reference,
                **{
                    name: {
                        "answer": answers.answers[k],
                        "grades": [{"grader": g.type, "grade": answers.grades[k][j]} for j, g in enumerate(task.graders)],
                    }
                    for name, answers in got.items()
                },
            }
        )
    return out


def own_items(spec: FineTuneJobSpec, tokenizer: Any, items_dir: Path | None) -> dict[str, Sequence[Any]]:
    """The tasks' own items (fetched by the launcher to `items_dir`/<task name>), read and tokenized before
    training: a bad record fails the job before step 1, not after it."""
    out: dict[str, Sequence[Any]] = {}
    for task in spec.evaluation.tasks:
        if task.items is not None:
            assert items_dir is not None, "the launcher fetches a task's own items"
            out[task.name] = own_samples(items_dir / task.name, spec, tokenizer, task.name, task.limit)
    return out
