"""Graders: an answer against its reference, 0 to 1 (spec.evaluation.tasks[].graders). Each is the reference library's
where there is one (sacrebleu's BLEU and chrF, rouge-score's ROUGE-L, math-verify's equivalence, jsonschema), never
user code: a regular expression from the spec runs under a time bound (the `regex` module's timeout), and every answer
is bounded in length before it is graded."""

from __future__ import annotations

import functools
import json
import logging
import string
from typing import Any

from kubetune_api.evaluation import GraderSpec

ANSWER_LIMIT = 16_384  # characters of an answer graded (maxNewTokens bounds it anyway)
REGEX_SECONDS = 0.5  # a pattern that takes longer on one answer grades it 0
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str, grader: GraderSpec) -> str:
    """Whitespace runs made one space and the ends stripped; lowercase unless caseSensitive; punctuation removed
    with ignorePunctuation."""
    if grader.ignorePunctuation:
        text = text.translate(_PUNCTUATION)
    if not grader.caseSensitive:
        text = text.lower()
    return " ".join(text.split())


def grade(grader: GraderSpec, answer: str, reference: str) -> float:
    """One item's grade, 0 to 1 (the choice grader is scored by log-likelihood instead: recipe/tasks.py)."""
    answer = answer[:ANSWER_LIMIT]
    kind = grader.type
    if kind == "exactMatch":
        return float(normalise(answer, grader) == normalise(reference, grader))
    if kind == "contains":
        return float(normalise(reference, grader) in normalise(answer, grader))
    if kind == "regex":
        found = _search(grader.pattern or "", answer)
        return float(found is not None and normalise(found, grader) == normalise(reference, grader))
    if kind == "jsonSchema":
        return float(_valid_json(grader.jsonSchema or {}, answer))
    if kind == "numeric":
        return float(_equivalent(reference, answer))
    if kind == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(answer, [reference]).score / 100)
    if kind == "chrf":
        import sacrebleu

        return float(sacrebleu.sentence_chrf(answer, [reference]).score / 100)
    if kind == "rougeL":
        return float(_rouge().score(reference, answer)["rougeL"].fmeasure)
    raise ValueError(f"grader {kind} grades by log-likelihood, not by an answer")


def chose(grader: GraderSpec, option: str, reference: str) -> float:
    """The choice grader: the option the model found likeliest against the reference, compared normalised."""
    return float(normalise(option, grader) == normalise(reference, grader))


def _search(pattern: str, answer: str) -> str | None:
    """The pattern's first group in the answer (its whole match when it has no group); None when it does not match,
    does not compile, or takes longer than REGEX_SECONDS."""
    import regex

    try:
        match = regex.search(pattern, answer, timeout=REGEX_SECONDS)
    except (regex.error, TimeoutError):
        return None
    if match is None:
        return None
    found = match.group(1) if match.re.groups else match.group(0)
    return found if isinstance(found, str) else None  # a group that took no part in the match: None


def strip_fence(answer: str) -> str:
    """An answer's JSON without a Markdown code fence around it (```json ... ```), as chat models often write it."""
    text = answer.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _valid_json(schema: dict[str, Any], answer: str) -> bool:
    import jsonschema

    try:
        value = json.loads(strip_fence(answer))
    except ValueError:
        return False
    try:
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError as exc:  # checked when the task starts (schema_problem): never reached
        raise ValueError(f"jsonSchema is not a valid JSON Schema: {exc.message}") from exc
    return True


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why a jsonSchema grader's schema is not a valid JSON Schema (draft 2020-12), or None."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


def _equivalent(reference: str, answer: str) -> bool:
    """math-verify's equivalence of the final answers (its own time bound, a signal, is off: the rank's main thread
    is the trainer's, and the answer's tail is short)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(reference[-1000:], parsing_timeout=None)
    got = parse(answer[-1000:], parsing_timeout=None)
    return bool(gold and got and verify(gold, got, timeout_seconds=None))


@functools.cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
