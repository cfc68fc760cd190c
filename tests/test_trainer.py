"""The trainer for real: two processes under gloo, DeepSpeed ZeRO-2 and ZeRO-3, moto S3 in and out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.ds_config import deepspeed_config
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.metrics import Metrics
from kubetune_api.records import RunManifest
from kubetune_trainer import tiny
from kubetune_trainer.data import reading

from .conftest import ROOT
from .s3server import S3Server
from .trainer_helpers import Outcome, answers_with_plain_peft, environment, manifest, reloaded_eval_loss, run

pytestmark = pytest.mark.trainer


def assert_trained(outcome: Outcome, s3: S3Server, out: str) -> dict[str, Any]:
    assert outcome.returncode == 0, outcome.stdout[-3000:] + outcome.stderr[-5000:]
    summary = outcome.summary
    assert summary["status"] == "Succeeded"
    assert summary["metrics"]["evalLoss"] < summary["metrics"]["baseEvalLoss"]
    keys = s3.keys(out)
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.json", "manifest.json", "_SUCCESS"):
        assert name in keys
    progress = outcome.of("progress")
    assert progress and set(progress[-1]) >= {"step", "totalSteps", "epoch", "loss", "learningRate", "tokensPerSecond", "eta"}
    assert progress[-1]["step"] == progress[-1]["totalSteps"]
    metrics = json.loads(s3.get(out + "metrics.json"))
    Metrics.model_validate(metrics)  # written through the model, read back through it
    assert metrics["final"]["evalLoss"] == summary["metrics"]["evalLoss"]
    RunManifest.model_validate_json(s3.get(out + "manifest.json"))  # written through the model, read back through it
    manifest_doc = json.loads(s3.get(out + "manifest.json"))
    ran = FineTuneJobSpec.model_validate(manifest_doc["spec"])
    expected = deepspeed_config(ran, metrics["train"]["worldSize"], on_gpu=False)
    ds = manifest_doc["deepspeed"]  # what ran is the one derivation, with the adapter's size for the bucket
    assert {k: v for k, v in ds.items() if k != "zero_optimization"} == {
        k: v for k, v in expected.items() if k != "zero_optimization"
    }
    assert ds["zero_optimization"]["reduce_bucket_size"] <= expected["zero_optimization"]["reduce_bucket_size"]
    assert set(manifest_doc["versions"]) >= {"torch", "transformers", "peft", "deepspeed"}
    assert len(manifest_doc["specSha256"]) == 64 and manifest_doc["datasets"]["train"]["sha256"]
    return metrics


# spec.evaluation.tasks in the whole runs here (docs/evaluation.md): no run of its own
ANSWERS = {
    "name": "answers",
    "graders": [{"type": "exactMatch"}, {"type": "contains"}, {"type": "numeric"}, {"type": "rougeL"}],
    "generation": {"maxNewTokens": 12, "stop": ["\n"]},
    "limit": 40,
    "samples": 3,
}


def assert_tasks(
    outcome: Outcome, s3: S3Server, out: str, metrics: dict[str, Any], tiny_model: Path, items: int, tmp: Path
) -> None:
    """The task's scores for both models in metrics.json and the summary, its samples, and the samples' answers
    are what the written adapter (and the base model) answer, greedy, one prompt at a time, in plain PEFT."""
    task = metrics["tasks"]["answers"]
    assert task["items"] == items and task["skipped"] == 0
    assert [g["grader"] for g in task["graders"]] == ["exactMatch", "contains", "numeric", "rougeL"]
    for graded in task["graders"]:
        for side in ("base", "adapter"):
            assert 0.0 <= graded[side]["score"] <= 1.0 and graded[side]["stderr"] >= 0.0
    first = task["graders"][0]
    assert outcome.summary["metrics"]["taskScore"] == first["adapter"]["score"]
    assert outcome.summary["metrics"]["baseTaskScore"] == first["base"]["score"]
    samples = [json.loads(line) for line in s3.get(out + "samples.jsonl").decode().splitlines()]
    assert len(samples) == 3 and all(s["task"] == "answers" and s["reference"] for s in samples)
    said = answers_with_plain_peft(s3, out, tiny_model, samples[0], 12, tmp)
    assert said == {"base": samples[0]["base"]["answer"], "adapter": samples[0]["adapter"]["answer"]}
    assert [g["grader"] for g in samples[0]["adapter"]["grades"]] == ["exactMatch", "contains", "numeric", "rougeL"]


def only_lora_tensors(s3: S3Server, out: str, tmp: Path) -> list[str]:
    from safetensors.torch import load_file

    path = tmp / "adapter_model.safetensors"
    path.write_bytes(s3.get(out + "adapter/adapter_model.safetensors"))
    return [name for name in load_file(str(path)) if "lora_" not in name]


def test_zero2_two_processes_trains_evaluates_and_saves_a_peft_adapter(
    s3: S3Server, stored: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    """Over 30 s: a two-process run (its task evaluation included), then `kubetune eval` of what it wrote, one
    process; the task's checks ride on this run rather than a run of their own."""
    out = "s3://adapters/zero2/"
    dataset = {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128}
    body = manifest(
        "zero2",
        s3,
        {
            "model": {"uri": stored["model"]},
            "dataset": dataset,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "training": {
                "epochs": 3,
                "learningRate": 3.0e-3,
                "microBatchSize": 8,
                "evalEverySteps": 10,
                "checkpointEverySteps": 10,
            },
            "deepspeed": {"zeroStage": 2},
            "output": {"uri": out},
            # the task's own items (the training records here, not the held-out split): fetched from S3 like the data
            "evaluation": {"tasks": [{**ANSWERS, "items": stored["train"]}]},
        },
    )
    outcome = run(body, s3, tmp_path)
    metrics = assert_trained(outcome, s3, out)
    assert only_lora_tensors(s3, out, tmp_path) == []
    assert len(metrics["history"]) >= 2 and metrics["data"]["validation"]["samples"] == 80
    assert_tasks(outcome, s3, out, metrics, tiny_model, items=40, tmp=tmp_path)
    first = tiny.records(600, seed=1)[0]  # the items file's first record, rank 0's first item
    sample = json.loads(s3.get(out + "samples.jsonl").decode().splitlines()[0])
    assert sample["item"] == 0 and sample["reference"] == first["completion"].strip() and first["prompt"] in sample["prompt"]
    # `kubetune eval` on its own (one process, no training) judges the written adapter to the same scores
    path, scores = tmp_path / "zero2.yaml", tmp_path / "eval.json"
    judged = subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "eval", str(path), "--out", str(scores)],
        env=environment(s3, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert judged.returncode == 0, judged.stdout[-2000:] + judged.stderr[-3000:]
    again = json.loads(scores.read_text())["tasks"]["answers"]
    for mine, theirs in zip(again["graders"], metrics["tasks"]["answers"]["graders"], strict=True):
        for side in ("base", "adapter"):
            assert mine[side]["score"] == pytest.approx(theirs[side]["score"], abs=1e-6), (side, mine, theirs)
    assert "answers (exactMatch)" in judged.stdout
    reloaded = reloaded_eval_loss(s3, out, tiny_model, dataset, tiny.records(80, seed=2), tmp_path)
    assert reloaded == pytest.approx(metrics["final"]["evalLoss"], abs=2e-4)
    checkpoints = {k.split("/")[1] for k in s3.keys(out) if k.startswith("checkpoints/")}
    assert checkpoints - {"best"} and all(name.startswith("step-") for name in checkpoints - {"best"})


def test_zero3_chat_parquet_with_a_seeded_split(s3: S3Server, stored: dict[str, str], tiny_model: Path, tmp_path: Path) -> None:
    out = "s3://adapters/zero3/"
    dataset = {"train": stored["chat"], "validationSplit": 0.1, "format": "chat", "maxSeqLength": 160, "packing": False}
    body = manifest(
        "zero3",
        s3,
        {
            "model": {"uri": stored["model"]},
            "dataset": dataset,
            "lora": {
                "r": 8,
                "alpha": 16,
                "dropout": 0.0,
                "targetModules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
            },
            "training": {
                "epochs": 1,
                "learningRate": 5.0e-3,
                "microBatchSize": 8,
                "evalEverySteps": 0,
                "checkpointEverySteps": 0,
            },
            "deepspeed": {"zeroStage": 3},
            "output": {"uri": out},
            "evaluation": {"tasks": [{**ANSWERS, "limit": 15}]},  # 15 items on 2 ranks: one share topped up, synced
        },
    )
    outcome = run(body, s3, tmp_path)
    metrics = assert_trained(outcome, s3, out)
    assert only_lora_tensors(s3, out, tmp_path) == []
    assert_tasks(outcome, s3, out, metrics, tiny_model, items=15, tmp=tmp_path)
    records = tiny.records(500, seed=3, fmt="chat")
    held_out = [records[i] for i in reading.split_positions(len(records), 0.1, seed=42)[1]]
    assert metrics["data"]["validation"]["records"] == len(held_out) == 50
    reloaded = reloaded_eval_loss(s3, out, tiny_model, dataset, held_out, tmp_path)
    assert reloaded == pytest.approx(metrics["final"]["evalLoss"], abs=2e-4)
