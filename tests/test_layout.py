"""The output layout is named once (kubetune_api.layout): what a run writes is what an overwrite clears."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_api import layout, validate_object
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.launch import prepare_output
from kubetune_trainer.storage import Store

from .conftest import job


def _spec(out: Path, overwrite: bool):  # type: ignore[no-untyped-def]
    body = job(**{"spec.output": {"uri": str(out), "overwrite": overwrite}, "spec.model": {"uri": str(out.parent / "m")}})
    body["spec"]["dataset"]["train"] = str(out.parent / "t.jsonl")
    result = validate_object(body)
    assert result.job is not None, result.problems
    return result.job.spec


def _finished_run(out: Path) -> None:
    for name in layout.RUN_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    for name in layout.RUN_PREFIXES:
        (out / name / "part").mkdir(parents=True)
        (out / name / "part" / "file").write_text("x")
    (out / layout.PREPARED / "abc").mkdir(parents=True)
    (out / layout.PREPARED / "abc" / "meta.json").write_text("{}")


def test_an_overwrite_clears_everything_a_run_wrote_and_keeps_the_prepared_data(tmp_path: Path) -> None:
    """merged/ and curves.svg were left behind before (the launcher's own list missed them)."""
    out = tmp_path / "out"
    _finished_run(out)
    spec = _spec(out, overwrite=True)
    prepare_output(spec, Store(spec.storage))
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["prepared/abc/meta.json"]


def test_a_finished_output_without_overwrite_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _finished_run(out)
    before = sorted(p for p in out.rglob("*"))
    spec = _spec(out, overwrite=False)
    with pytest.raises(TrainerFailure, match="already holds a finished adapter") as caught:
        prepare_output(spec, Store(spec.storage))
    assert caught.value.reason == "OutputExists" and sorted(p for p in out.rglob("*")) == before


def test_the_adapter_uri_is_one_derivation() -> None:
    assert layout.adapter_uri("s3://b/run") == layout.adapter_uri("s3://b/run/") == "s3://b/run/adapter/"
    assert layout.under("s3://b/run/", layout.METRICS) == "s3://b/run/metrics.json"
