"""The trainer for real: two processes under gloo, DeepSpeed ZeRO-2 and ZeRO-3, moto S3 in and out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.dataset import DatasetSpec
from kubetune_trainer import data, evaluate, tiny

from .s3server import S3Server
from .trainer_helpers import Outcome, manifest, run

pytestmark = pytest.mark.trainer


def reloaded_eval_loss(
    s3: S3Server, out: str, tiny_model: Path, dataset: dict[str, Any], records: list[dict[str, Any]], tmp: Path
) -> float:
    """Load the adapter from S3 with plain PEFT and evaluate it on the held-out records, in one process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp / "adapter"
    adapter.mkdir(exist_ok=True)
    for key in s3.keys(out + "adapter/"):
        (adapter / key).write_bytes(s3.get(out + "adapter/" + key))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    spec = DatasetSpec.model_validate({"train": "./t.jsonl", **dataset})
    samples, _ = data.tokenize(records, spec, tokenizer, "held-out")
    batches = evaluate.local_batches(data.rows(samples, spec.maxSeqLength, spec.packing), 4)
    sums = evaluate.eval_sums(lambda inputs: model(**inputs, use_cache=False).logits, batches, tokenizer.pad_token_id, "cpu")
    return evaluate.metrics(sums)["evalLoss"]


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
    assert metrics["final"]["evalLoss"] == summary["metrics"]["evalLoss"]
    manifest_doc = json.loads(s3.get(out + "manifest.json"))
    assert set(manifest_doc["versions"]) >= {"torch", "transformers", "peft", "deepspeed"}
    assert len(manifest_doc["specSha256"]) == 64 and manifest_doc["datasets"]["train"]["sha256"]
    return metrics


def only_lora_tensors(s3: S3Server, out: str, tmp: Path) -> list[str]:
    from safetensors.torch import load_file

    path = tmp / "adapter_model.safetensors"
    path.write_bytes(s3.get(out + "adapter/adapter_model.safetensors"))
    return [name for name in load_file(str(path)) if "lora_" not in name]


def test_zero2_two_processes_trains_evaluates_and_saves_a_peft_adapter(
    s3: S3Server, stored: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
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
        },
    )
    outcome = run(body, s3, tmp_path)
    metrics = assert_trained(outcome, s3, out)
    assert only_lora_tensors(s3, out, tmp_path) == []
    assert len(metrics["history"]) >= 2 and metrics["data"]["validation"]["samples"] == 80
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
                "epochs": 3,
                "learningRate": 5.0e-3,
                "microBatchSize": 8,
                "evalEverySteps": 0,
                "checkpointEverySteps": 0,
            },
            "deepspeed": {"zeroStage": 3},
            "output": {"uri": out},
        },
    )
    outcome = run(body, s3, tmp_path)
    metrics = assert_trained(outcome, s3, out)
    assert only_lora_tensors(s3, out, tmp_path) == []
    records = tiny.records(500, seed=3, fmt="chat")
    held_out = [records[i] for i in data.split_positions(len(records), 0.1, seed=42)[1]]
    assert metrics["data"]["validation"]["records"] == len(held_out) == 50
    reloaded = reloaded_eval_loss(s3, out, tiny_model, dataset, held_out, tmp_path)
    assert reloaded == pytest.approx(metrics["final"]["evalLoss"], abs=2e-4)
