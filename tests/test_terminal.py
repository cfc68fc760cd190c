"""`kubetune run` at a terminal: each event a person cares about as one plain line, the timings as one table at the
end, nothing for the summary (the closing report says it); pods and `--progress json` keep the JSON lines."""

from __future__ import annotations

import io

from kubetune_api import events
from kubetune_api.contract import Summary
from kubetune_api.metrics import Counts
from kubetune_trainer import terminal


def test_each_event_a_person_cares_about_is_one_plain_line() -> None:
    prepared = events.Prepared(source="here", records=1080, tokens=52339, rows={"train": 390, "validation": 44}, seconds=4.86)
    assert terminal.render(prepared) == "data prepared: 1,080 records, 52,339 tokens, 390 train rows, 44 validation rows (4.9 s)"
    base = events.Eval(step=0, model="base", evalLoss=5.552318, tokenAccuracy=0.001225)
    assert terminal.render(base) == "held-out at base model: loss 5.5523, token accuracy 0.0012"
    dpo = events.Eval(step=40, model="adapter", evalLoss=0.2441, preferenceAccuracy=1.0)
    assert terminal.render(dpo) == "held-out at step 40: DPO loss 0.2441, preference accuracy 1.000"
    saved = events.Checkpoint(step=20, uri="./out/checkpoints/step-000020/", stallSeconds=0.1, completeAfterSeconds=0.3)
    assert terminal.render(saved) == "checkpoint saved at step 20: ./out/checkpoints/step-000020/"
    data = events.DataLine(
        train=Counts(records=1080, samples=1080, tokens=46922),
        validation=Counts(records=120, samples=120, tokens=5000),
        trainSequences=390,
        packing=True,
        overlength="truncate",
        modelType="llama",
    )
    assert terminal.render(data) == "data: 1,080 training records (46,922 tokens), 120 held out; 390 training rows, packing on"
    assert terminal.render(events.Notice(message="dataset.packing turned off")) == "note: dataset.packing turned off"
    assert terminal.render(events.Timing(phase="training steps", seconds=1.0)) is None
    assert terminal.render(Summary(status="Succeeded")) is None


def test_installed_the_events_are_words_and_the_timings_a_table() -> None:
    shown = terminal.Terminal(io.StringIO())
    events.install_renderer(shown.show)
    try:
        events.emit(events.Notice(message="hello"))
        events.emit(events.Timing(phase="distributed init", seconds=3.5))
        events.emit(events.Timing(phase="training steps", seconds=12.25))
    finally:
        events.install_renderer(None)
    assert shown.stream.getvalue() == "note: hello\n"  # type: ignore[attr-defined]
    assert shown.table() == "time by phase:\n  distributed init      3.5 s\n  training steps       12.2 s"
    out = io.StringIO()
    events.emit(events.Notice(message="json again"), out)  # without a renderer: the JSON line
    assert out.getvalue().startswith('{"event": "notice"')
