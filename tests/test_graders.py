"""Every grader of spec.evaluation.tasks against scores worked out by hand, malformed answers included."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubetune_api.evaluation import GraderSpec
from kubetune_trainer.tasks import graders


def g(kind: str, **options: Any) -> GraderSpec:
    return GraderSpec.model_validate({"type": kind, **options})


@pytest.mark.parametrize(
    ("grader", "answer", "reference", "score"),
    [
        (g("exactMatch"), "  Paris \n", "paris", 1.0),  # case and whitespace runs do not count by default
        (g("exactMatch", caseSensitive=True), "Paris", "paris", 0.0),
        (g("exactMatch"), "Paris.", "paris", 0.0),
        (g("exactMatch", ignorePunctuation=True), "Paris.", "paris", 1.0),
        (g("exactMatch"), "", "paris", 0.0),
        (g("contains"), "The capital is PARIS, of course", "paris", 1.0),
        (g("contains"), "Lyon", "paris", 0.0),
        (g("regex", pattern=r"answer:\s*(\d+)"), "work... answer: 42 done", "42", 1.0),
        (g("regex", pattern=r"answer:\s*(\d+)"), "answer: 41", "42", 0.0),
        (g("regex", pattern=r"\d+"), "it is 42", "42", 1.0),  # no group: the whole match
        (g("regex", pattern=r"answer:\s*(\d+)"), "no answer here", "42", 0.0),
        (g("regex", pattern=r"(unclosed"), "(unclosed", "(unclosed", 0.0),  # a pattern that does not compile grades 0
        (g("numeric"), "so x = 0.5", "1/2", 1.0),
        (g("numeric"), "The answer is 42.", "42", 1.0),
        (g("numeric"), "The answer is 43.", "42", 0.0),
        (g("numeric"), "no number", "42", 0.0),
        (g("bleu"), "the cat sat on the mat", "the cat sat on the mat", 1.0),
        (g("bleu"), "dogs bark", "the cat sat on the mat", 0.0),
        (g("chrf"), "the cat sat on the mat", "the cat sat on the mat", 1.0),
        (g("chrf"), "", "the cat sat on the mat", 0.0),
        # ROUGE-L: LCS "the cat on the mat" = 5 tokens; precision 5/5, recall 5/6, F = 2PR/(P+R) = 10/11
        (g("rougeL"), "the cat on the mat", "the cat sat on the mat", 10 / 11),
        (g("rougeL"), "", "the cat sat on the mat", 0.0),
    ],
)
def test_a_grader_scores_as_worked_out_by_hand(grader: GraderSpec, answer: str, reference: str, score: float) -> None:
    assert graders.grade(grader, answer, reference) == pytest.approx(score, abs=1e-6)


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ('{"name": "Ada", "age": 36}', 1.0),
        ('```json\n{"name": "Ada", "age": 36}\n```', 1.0),  # a Markdown fence around it is taken off
        ('{"name": "Ada", "age": -1}', 0.0),  # parses, does not validate
        ('{"name": "Ada"}', 0.0),
        ('{"name": "Ada", "age": 36, "x": 1}', 0.0),
        ('{"name": "Ada", "age": 36', 0.0),  # not JSON
        ("", 0.0),
        ("null", 0.0),
    ],
)
def test_json_schema_grades_parsing_and_validation(answer: str, score: float) -> None:
    assert graders.grade(g("jsonSchema", jsonSchema=SCHEMA), answer, "") == score


def test_a_broken_schema_is_named_before_any_item() -> None:
    assert graders.schema_problem(SCHEMA) is None
    assert graders.schema_problem({"type": 5}) is not None


def test_choice_compares_the_likeliest_option_normalised() -> None:
    grader = g("choice", options=["positive", "negative"])
    assert graders.chose(grader, "Positive", "positive") == 1.0 and graders.chose(grader, "negative", "positive") == 0.0
    with pytest.raises(ValueError):
        graders.grade(grader, "positive", "positive")  # graded by log-likelihood, never by an answer


def test_a_catastrophic_pattern_is_bounded_in_time_and_grades_zero() -> None:
    started = time.monotonic()
    assert graders.grade(g("regex", pattern=r"(a+)+$"), "a" * 40 + "!", "a") == 0.0
    assert time.monotonic() - started < 30  # a bound that turns a hang into a failure, not a speed check


def test_a_long_answer_is_cut_before_grading() -> None:
    assert graders.grade(g("contains"), "x" * (graders.ANSWER_LIMIT + 10) + "needle", "needle") == 0.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "regex"}, "pattern"),
        ({"type": "exactMatch", "pattern": "x"}, "pattern"),
        ({"type": "jsonSchema"}, "jsonSchema"),
        ({"type": "choice"}, "options"),
        ({"type": "choice", "options": ["only"]}, "options"),
        ({"type": "judge"}, "type"),
    ],
)
def test_a_grader_without_what_it_needs_is_refused(body: dict[str, Any], field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        GraderSpec.model_validate(body)
    assert field in str(raised.value)
