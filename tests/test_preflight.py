"""The preflight (kubetune_trainer.preflight, `kubetune preflight`): every check against the real S3 server with
the job's credentials, its step count against a real run's, WontFit with the smallest change that fits, and the
report's bounds (it comes from a pod)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.job import FineTuneJobSpec
from kubetune_api.memory import estimate, shape_of
from kubetune_api.preflight import GpuType, Report, candidates, fit, format_report, parse_report

from .conftest import ROOT, kubetune
from .model_helpers import LLAMA_8B
from .s3server import S3Server
from .trainer_helpers import manifest, run, store_for


def spec_of(**sections: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "model": {"uri": "s3://models/base/"},
        "dataset": {"train": "s3://data/train.jsonl", "maxSeqLength": 4096},
        "training": {"microBatchSize": 4},
        "deepspeed": {"zeroStage": 2},
        "workers": {"replicas": 1, "gpusPerWorker": 8},
        "output": {"uri": "s3://out/"},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    return FineTuneJobSpec.model_validate(body)


def test_a_job_that_does_not_fit_gets_the_least_disruptive_change_that_does() -> None:
    shape = shape_of(LLAMA_8B)
    mine, suggestion = fit(shape, spec_of(), 24 * 2**30)  # an L4
    assert mine.total > 24 * 2**30 and suggestion is not None
    assert suggestion.split(" needs about ")[0] in [words for words, _ in candidates(spec_of())]
    # 16k tokens per micro-batch do not fit even an 80 GiB GPU without checkpointing; 2k tokens do, as written
    assert fit(shape, spec_of(), 80 * 2**30)[1] is not None
    smaller = spec_of(training={"microBatchSize": 1}, dataset={"maxSeqLength": 2048})
    assert fit(shape, smaller, 80 * 2**30)[1] is None
    # the first candidate tried is the cheapest: checkpointing, before any change of batch or GPUs
    assert candidates(spec_of())[0][0] == "training.gradientCheckpointing: true"


def test_a_dpo_jobs_sequence_advice_is_in_the_specs_terms() -> None:
    """The estimate sizes a DPO row as a pair (the spec's row_tokens: twice maxSeqLength), with no spec rewritten for
    it; a shorter-sequence candidate names the spec's field as the user writes it, not the doubled row."""
    dpo = spec_of(method={"type": "dpo"}, dataset={"format": "preference", "maxSeqLength": 8192})
    assert dpo.row_tokens == 16384 and spec_of(dataset={"maxSeqLength": 8192}).row_tokens == 8192
    shape = shape_of(LLAMA_8B)
    assert estimate(shape, dpo, gpu=True) == estimate(shape, dpo, gpu=True, rows=16384)
    assert estimate(shape, dpo, gpu=True).total > estimate(shape, dpo, gpu=True, rows=8192).total
    shorter = [words for words, _ in candidates(dpo) if words.startswith("dataset.maxSeqLength")]
    assert shorter[0] == "dataset.maxSeqLength: 4096 with ZeRO-3 offload all"  # rows of 8192: pairs of 4096


def test_a_model_that_fits_nowhere_says_so() -> None:
    huge = {**LLAMA_8B, "hidden_size": 16384, "num_hidden_layers": 400}
    _, suggestion = fit(shape_of(huge), spec_of(), 2 * 2**30)
    assert suggestion is None


def test_the_report_stays_within_a_termination_message_and_garbage_is_no_report() -> None:
    report = Report(passed=False, reason="BadRecord", message="x" * 1000)
    for name in ("output", "model", "dataset", "records", "memory"):
        report = report.with_check(name, False, "y" * 400)  # type: ignore[arg-type]
    text = report.to_json()
    assert len(text) <= 4096
    assert parse_report(text) is not None
    for bad in (
        "",
        "not json",
        '{"passed": "yes"}',
        '{"passed": true, "extra": 1}',
        "{" * 10_000,
        json.dumps({"passed": True, "tokens": -1}),
    ):
        assert parse_report(bad) is None, bad


def test_kubetune_preflight_prints_memory_per_gpu_and_gpu_hours_for_the_zero3_example() -> None:
    result = kubetune("preflight", str(ROOT / "examples" / "zero3-multi-worker.yaml"))
    assert result.returncode == 1, result.stderr  # its storage is not reachable from here, and it says so
    assert "memory per GPU: about" in result.stdout and "GiB" in result.stdout, result.stdout
    assert "GPU-hours: about" in result.stdout, result.stdout
    assert "llama-3.1-70b" in result.stdout  # the published config the estimate used, named


# against the S3 server


def _preflight(spec: dict[str, Any], s3: S3Server, monkeypatch: Any, tmp_path: Path, gpu: GpuType | None = None) -> Report:
    from kubetune_trainer.preflight import run as preflight

    store = store_for(s3, monkeypatch, "adapters")
    body = manifest("preflight", s3, spec)["spec"]
    return preflight(FineTuneJobSpec.model_validate(body), store, tmp_path, "test-gpu" if gpu else None, gpu)


def base_spec(stored: dict[str, str], out: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": stored["model"]},
        "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128, "packing": True},
        "training": {
            "epochs": 2,
            "microBatchSize": 4,
            "gradientAccumulationSteps": 2,
            "evalEverySteps": 0,
            "checkpointEverySteps": 0,
        },
        "output": {"uri": out},
    }
    for section, value in changes.items():
        spec[section] = {**spec.get(section, {}), **value}
    return spec


@pytest.mark.trainer
def test_a_good_job_passes_and_its_steps_are_the_trainers_own(
    s3: S3Server, stored: dict[str, str], monkeypatch: Any, tmp_path: Path
) -> None:
    spec = base_spec(stored, "s3://adapters/preflight/good/")
    report = _preflight(spec, s3, monkeypatch, tmp_path / "pre")
    assert report.passed, format_report(report)
    assert [c.name for c in report.checks] == ["output", "model", "dataset", "records", "memory"]
    assert report.records == 600 and report.tokens and report.memoryPerGpuBytes
    left = s3.keys("s3://adapters/preflight/good/")
    assert left and all(k.startswith("prepared/") for k in left), "the probe object was left behind"  # only the data
    assert report.preparedSha256 is not None  # what the operator passes to the workers (KUBETUNE_PREPARED_SHA256)
    done = run(manifest("preflight-good", s3, spec), s3, tmp_path, KUBETUNE_PREPARED_SHA256=report.preparedSha256)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(s3.get("s3://adapters/preflight/good/metrics.json"))
    assert report.totalSteps == metrics["train"]["steps"]  # the same records, dealt to the same two ranks
    # the run started from what the preflight prepared: nothing tokenized again
    (prepared_event,) = done.of("prepared")
    assert prepared_event["source"] == "storage", prepared_event
    # a tampered prepared dataset (loss on every token: well formed, so only its contents tell) is refused and made
    # again; a set without the preflight's record of its contents is not even fetched
    (mask_key,) = [k for k in left if k.endswith("/train.mask.npy")]
    import io

    import numpy as np

    mask = np.load(io.BytesIO(s3.get("s3://adapters/preflight/good/" + mask_key)), allow_pickle=False)
    mask[:] = True
    buffer = io.BytesIO()
    np.save(buffer, mask, allow_pickle=False)
    s3.put("adapters", "preflight/good/" + mask_key, buffer.getvalue())
    # (two steps: only where its data came from is checked; the training settings are not part of the set's digest)
    overwrite = {**spec, "output": {**spec["output"], "overwrite": True}, "training": {**spec["training"], "maxSteps": 2}}
    again = run(manifest("preflight-good", s3, overwrite), s3, tmp_path, KUBETUNE_PREPARED_SHA256=report.preparedSha256)
    assert again.returncode == 0, again.stderr[-3000:]
    (remade,) = again.of("prepared")
    assert remade["source"] == "here" and "contents digest differs" in remade["why"], remade
    from kubetune_trainer.data import prepared

    uri = "s3://adapters/preflight/good/" + mask_key.rsplit("/", 1)[0]
    store = store_for(s3, monkeypatch, "adapters")
    assert prepared.fetch(store, uri, tmp_path / "p", 10, 128, "x") == (None, "no record of its contents from the preflight")


@pytest.mark.trainer
def test_a_bad_record_names_its_line_and_field(s3: S3Server, stored: dict[str, str], monkeypatch: Any, tmp_path: Path) -> None:
    s3.put("data", "preflight/bad.jsonl", b'{"prompt": "a", "completion": "b"}\n' * 5 + b'{"prompt": "a", "answer": "b"}\n')
    spec = base_spec(stored, "s3://adapters/preflight/bad/", dataset={"train": "s3://data/preflight/bad.jsonl"})
    report = _preflight(spec, s3, monkeypatch, tmp_path)
    assert not report.passed and report.reason == "BadRecord", format_report(report)
    assert "bad.jsonl record 6: missing field 'completion'" in (report.message or "")


@pytest.mark.trainer
def test_a_missing_dataset_and_an_unwritable_output_are_named(
    s3: S3Server, stored: dict[str, str], monkeypatch: Any, tmp_path: Path
) -> None:
    spec = base_spec(stored, "s3://adapters/preflight/missing/", dataset={"train": "s3://data/preflight/nowhere.jsonl"})
    report = _preflight(spec, s3, monkeypatch, tmp_path / "a")
    assert report.reason == "DatasetMissing" and "nowhere.jsonl" in (report.message or "")
    for key, value in s3.readonly_env.items():  # credentials that may read the model and data, not write the output
        monkeypatch.setenv(key, value)
    from kubetune_trainer.preflight import run as preflight
    from kubetune_trainer.storage import Store

    body = FineTuneJobSpec.model_validate(manifest("ro", s3, base_spec(stored, "s3://adapters/preflight/readonly/"))["spec"])
    report = preflight(body, Store(body.storage), tmp_path / "b", None, None)
    assert report.reason == "AccessDenied", format_report(report)
    assert [c.name for c in report.checks if not c.ok] == ["output"], format_report(report)  # model and data read


@pytest.mark.trainer
def test_a_job_too_big_for_its_gpus_fails_as_wont_fit_with_a_change_that_fits(
    s3: S3Server, stored: dict[str, str], monkeypatch: Any, tmp_path: Path
) -> None:
    spec = base_spec(stored, "s3://adapters/preflight/big/", workers={"replicas": 1, "gpusPerWorker": 2})
    small = GpuType(memory="10Mi", tflops=0.01, pricePerHour=2.0)  # slow enough for GPU-hours to show
    report = _preflight(spec, s3, monkeypatch, tmp_path, small)
    assert report.reason == "WontFit", format_report(report)
    assert (
        "needs about" in (report.message or "")
        and report.suggestion == "training.gradientCheckpointing: true needs about 7 MiB per GPU"
    )
    assert report.gpuHours and report.estimatedCost == pytest.approx(report.gpuHours * 2.0, rel=1e-3)


def test_the_tasks_forwards_are_in_the_gpu_hours() -> None:
    """spec.evaluation.tasks run after training: base and adapter, each prompt once and each new token once (the KV
    cache), each option of a choice grader after the prompt; an upper bound that the time and GPU-hours include."""
    from kubetune_api.preflight import task_tokens, training_flops

    tasks = {
        "tasks": [
            {"name": "gen", "graders": [{"type": "exactMatch"}], "generation": {"maxNewTokens": 10}, "limit": 50},
            {"name": "pick", "graders": [{"type": "choice", "options": ["a", "b", "c"]}]},
        ]
    }
    spec = FineTuneJobSpec.model_validate({**spec_of().model_dump(mode="json"), "evaluation": tasks})
    # 100 held-out samples of 20 tokens: gen 2 x 50 x (20 + 10); pick 2 x 100 x 3 x (20 + 8)
    assert task_tokens(spec, 100, 2000) == 2 * 50 * 30 + 2 * 100 * 3 * 28
    assert task_tokens(spec_of(), 100, 2000) == 0 and task_tokens(spec, 0, 0) == 0
    shape = shape_of(LLAMA_8B)
    assert training_flops(shape, spec, 1e6, 1e4, 1e4) - training_flops(shape, spec, 1e6, 1e4) == 2 * shape.params * 1e4
