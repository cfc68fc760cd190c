"""The trainer's log lines and metrics.json: one model each, written and read through it."""

from __future__ import annotations

import io
import json
import math
import re
import typing

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from kubetune_api import events
from kubetune_api.metrics import Counts, Evaluation, Metrics

from .conftest import ROOT

EVENT = TypeAdapter(typing.Annotated[events.Event, Field(discriminator="event")])
MODELS = typing.get_args(events.Event)


def test_every_event_has_its_own_name() -> None:
    names = [model.model_fields["event"].annotation for model in MODELS]
    assert len({typing.get_args(name)[0] for name in names}) == len(MODELS)


@pytest.mark.parametrize(
    "event",
    [
        events.Notice(message="lora.rank 8 -> 4"),
        events.Eval(step=0, model="base", evalLoss=2.5, perplexity=12.18, tokenAccuracy=0.4, evalTokens=99),
        events.Eval(step=3, model="adapter", evalLoss=math.nan, evalTokens=0),  # nothing held out: null, never NaN
        events.Checkpoint(step=4, uri="s3://b/o/checkpoints/step-000004", stallSeconds=0.1, completeAfterSeconds=0.5),
        events.Timing(phase="distributed init", seconds=1.25),
        events.Prepared(source="here", why="no storage", records=3, tokens=30, rows={"train": 2, "validation": 1}, seconds=0.1),
        events.FetchLine(uri="s3://m/", fromCache=1, fromStorage=2, verifySeconds=0.1, fetchSeconds=0.2),
    ],
)
def test_a_line_is_its_model_and_reads_back_as_it(event: events.Event) -> None:
    stream = io.StringIO()
    events.emit(event, stream)
    text = stream.getvalue()
    assert text.endswith("\n") and "NaN" not in text
    assert EVENT.validate_json(text) == event.model_validate(json.loads(text))
    assert text.startswith(f'{{"event": "{event.event}"')  # the kind first, for people and greps


def test_a_line_outside_its_model_is_refused() -> None:
    with pytest.raises(ValidationError):
        EVENT.validate_python({"event": "checkpoint", "step": 1})  # no uri, no timings
    with pytest.raises(ValidationError):
        EVENT.validate_python({"event": "notice", "message": "x", "extra": 1})


def test_every_structured_line_goes_through_the_emitter() -> None:
    """No module builds an event line by hand: `{"event": ...}` dicts beside the models drift from them."""
    by_hand = re.compile(r"""\{\s*["']event["']\s*:""")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("api", "cli", "operator", "trainer")
        for path in (ROOT / package).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert not found, found


def metrics_json(**changes: object) -> dict[str, object]:
    evaluation = {"evalLoss": 2.0, "perplexity": 7.39, "tokenAccuracy": 0.5, "evalTokens": 10}
    counts = Counts(records=4, samples=4, tokens=40, loss_tokens=20).as_dict()
    body: dict[str, object] = {
        "base": evaluation,
        "final": {**evaluation, "evalLoss": 1.5},
        "adapter": {"choice": "last", "step": 2},
        "last": {**evaluation, "evalLoss": 1.5},
        "history": [{"step": 2, **evaluation, "evalLoss": 1.5}],
        "curves": {"train": [{"step": 1, "loss": 2.1, "learningRate": 1e-4}], "eval": [{"step": 2, "evalLoss": 1.5}]},
        "train": {"steps": 2, "epochs": 1.0, "loss": 1.9, "worldSize": 2},
        "data": {"train": counts, "validation": counts, "trainSequences": 4, "packing": True, "modelType": "llama"},
    }
    return {**body, **changes}


def test_metrics_json_round_trips_and_unmeasured_is_null() -> None:
    metrics = Metrics.model_validate(metrics_json(last={"evalLoss": math.nan, "evalTokens": 0}))
    text = metrics.to_json()
    assert "NaN" not in text and json.loads(text)["last"] == {"evalTokens": 0}
    assert Metrics.model_validate_json(text) == metrics
    assert Metrics.model_validate_json(text).last == Evaluation(evalTokens=0)


def test_metrics_json_names_an_unknown_or_missing_part() -> None:
    with pytest.raises(ValidationError, match="adapter"):
        Metrics.model_validate({k: v for k, v in metrics_json().items() if k != "adapter"})
    with pytest.raises(ValidationError, match="surprise"):
        Metrics.model_validate(metrics_json(surprise=1))


def test_counts_are_plain_attributes_read_back_validated() -> None:
    """Counts is a pydantic dataclass: the tokenizer's counters are plain attributes, read back validated."""
    counts = Counts()
    counts.samples += 1
    assert counts.as_dict()["samples"] == 1 and Counts.of(counts.values()) == counts
