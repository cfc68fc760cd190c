"""The tasks' scores as a person reads them (`kubetune run`, `kubetune eval`): each grader, base model and adapter,
each score with its standard error."""

from __future__ import annotations

from kubetune_api.metrics import TaskResult


def lines(results: dict[str, TaskResult]) -> list[str]:
    out = ["task (grader)                    base      adapter   items"]
    for name, result in results.items():
        if result.error:
            out.append(f"{name}: no scores, the task failed: {result.error}")
        for graded in result.graders:
            shown = [f"{x.score:.3f} ±{x.stderr or 0:.3f}" if x.score is not None else "-" for x in (graded.base, graded.adapter)]
            out.append(f"{name + ' (' + graded.grader + ')':<28}{shown[0]:>14}{shown[1]:>14}{result.items:>7}")
    return out
