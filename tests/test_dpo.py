"""DPO through `kubetune run` on the real S3 server: two processes under ZeRO-3 raise the held-out preference
accuracy on a generated rule from 0.5 to at least 0.9, and the adapter, reloaded in plain PEFT, reproduces the
reported accuracy; a job continues from an SFT job's adapter (its weights loaded, it the reference), and one whose
LoRA settings differ from the adapter's, or that names no adapter, fails before step 1 with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer import tiny

from .s3server import S3Server
from .trainer_helpers import downloaded_adapter, manifest, resumable, run

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def preferences(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("preferences")
    train = tiny.preference_records(400, seed=21, fmt="openai-preference")
    held = tiny.preference_records(60, seed=22, fmt="openai-preference")
    s3.bucket("data")
    return {
        "train": s3.put("data", "pref/train.jsonl", tiny.write_jsonl(tmp / "t.jsonl", train).read_bytes()),
        "validation": s3.put("data", "pref/val.jsonl", tiny.write_jsonl(tmp / "v.jsonl", held).read_bytes()),
        "held": held,
    }


def dpo_job(name: str, s3: S3Server, stored: dict[str, str], preferences: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": stored["model"]},
        "method": {"type": "dpo", "dpo": {"beta": 0.1}},
        "dataset": {
            "train": preferences["train"],
            "validation": preferences["validation"],
            "format": "openai-preference",
            "maxSeqLength": 64,
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"epochs": 1, "learningRate": 5e-3, "microBatchSize": 4, "evalEverySteps": 0, "checkpointEverySteps": 0},
        "output": {"uri": f"s3://adapters/{name}/"},
    }
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value}
    return manifest(name, s3, body)


def held_out_accuracy(s3: S3Server, out: str, model_dir: Path, held: list[dict[str, Any]], tmp: Path) -> tuple[float, int]:
    """The adapter from S3 in plain PEFT, scored on the held-out pairs here, one process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_api.dataset import DatasetSpec
    from kubetune_api.method import DpoSpec
    from kubetune_trainer.data import pairs, prepared
    from kubetune_trainer.data.tokens import Rows
    from kubetune_trainer.recipe import evaluate, preference

    adapter = downloaded_adapter(s3, out, tmp / "reloaded")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    table, _ = pairs.tokenize_pairs(
        held, DatasetSpec(train="./v.jsonl", format="openai-preference", maxSeqLength=64), tokenizer, "v"
    )
    rows = Rows(table, *prepared._pack(table.lengths(), 64, True, False, 0, True))

    def policy(inputs: dict[str, Any]) -> Any:
        return model(**inputs, use_cache=False).logits

    def reference(inputs: dict[str, Any]) -> Any:
        with model.disable_adapter():
            return policy(inputs)

    batches = evaluate.local_batches(list(rows), 4)
    totals = preference.eval_sums(policy, reference, batches, tokenizer.pad_token_id, "cpu", DpoSpec(beta=0.1))
    said = preference.metrics(totals)
    return said["preferenceAccuracy"], said["evalPairs"]


def test_two_processes_under_zero3_learn_the_preference_and_the_adapter_reloads(
    s3: S3Server, stored: dict[str, str], preferences: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    body = dpo_job("dpo-zero3", s3, stored, preferences, deepspeed={"zeroStage": 3}, output={"minPreferenceAccuracy": 0.9})
    done = run(body, s3, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = done.summary["metrics"]
    assert said["basePreferenceAccuracy"] == 0.5  # the policy starts as the reference: every pair a tie
    assert said["preferenceAccuracy"] >= 0.9 and said["rewardMargin"] > 0, said
    evals = done.of("eval")
    assert (
        evals[0]["model"] == "base" and evals[0]["evalPairs"] == 60 and evals[0]["evalLoss"] == pytest.approx(0.693147, abs=1e-5)
    )
    metrics = json.loads(s3.get("s3://adapters/dpo-zero3/metrics.json"))
    assert metrics["data"]["train"]["pairs"] == 400 and metrics["data"]["validation"]["pairs"] == 60
    assert metrics["final"]["chosenReward"] > metrics["final"]["rejectedReward"]
    gate = metrics["qualityGate"]
    assert gate["passed"] and gate["minPreferenceAccuracy"] == 0.9 and gate["preferenceAccuracy"] == said["preferenceAccuracy"]
    assert "adapter_model.safetensors" in s3.keys("s3://adapters/dpo-zero3/adapter/")
    accuracy, count = held_out_accuracy(s3, "s3://adapters/dpo-zero3/", tiny_model, preferences["held"], tmp_path)
    assert count == 60 and abs(accuracy - said["preferenceAccuracy"]) <= 1 / 60, (accuracy, said)


def test_dpo_continues_from_an_sft_adapter_and_a_mismatched_one_fails_before_step_1(
    s3: S3Server, stored: dict[str, str], preferences: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load

    sft = run(resumable("sft-start", s3, stored, "s3://adapters/sft-start/", maxSteps=6, learningRate=5e-3), s3, tmp_path)
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-3000:]
    start = "s3://adapters/sft-start/adapter/"
    # a step too small to move anything: the adapter written is the starting one, so its weights were loaded
    body = dpo_job(  # under ZeRO-3: the frozen reference adapter is partitioned like the rest
        "dpo-continued",
        s3,
        stored,
        preferences,
        model={"adapter": start},
        training={"maxSteps": 1, "learningRate": 1e-9},
        deepspeed={"zeroStage": 3},
    )
    done = run(body, s3, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.summary["metrics"]["basePreferenceAccuracy"] == 0.5  # the starting adapter is the reference
    before = load(s3.get(start + "adapter_model.safetensors"))
    after = load(s3.get("s3://adapters/dpo-continued/adapter/adapter_model.safetensors"))
    assert before.keys() == after.keys() and any(float(t.abs().max()) > 0 for k, t in before.items() if "lora_B" in k)
    assert all(float((before[k] - after[k]).abs().max()) < 1e-6 for k in before)
    config = json.loads(s3.get("s3://adapters/dpo-continued/adapter/adapter_config.json"))
    assert "reference" not in json.dumps(s3.keys("s3://adapters/dpo-continued/adapter/")) and config["r"] == 4
    # other LoRA settings than the adapter's: refused before any step
    other = run(
        dpo_job("dpo-mismatch", s3, stored, preferences, model={"adapter": start}, lora={"r": 8}), s3, tmp_path, processes=1
    )
    assert other.returncode == 1 and other.summary["reason"] == "AdapterMismatch", other.stdout[-2000:]
    assert "lora.r: the adapter has 4, the job 8" in other.summary["message"] and not other.of("progress")
    # the preflight refuses it before any GPU is asked for, and counts the pairs of a good one
    from kubetune_api.job import FineTuneJobSpec
    from kubetune_trainer.preflight import run as preflight

    from .trainer_helpers import store_for

    store = store_for(s3, monkeypatch, "adapters")
    mismatched = FineTuneJobSpec.model_validate(
        dpo_job("dpo-pre", s3, stored, preferences, model={"adapter": start}, lora={"r": 8})["spec"]
    )
    report = preflight(mismatched, store, tmp_path / "pre", None, None)
    assert not report.passed and report.reason == "AdapterMismatch" and "lora.r" in (report.message or "")
    good = FineTuneJobSpec.model_validate(dpo_job("dpo-pre", s3, stored, preferences, model={"adapter": start})["spec"])
    report = preflight(good, store, tmp_path / "pre-good", None, None)
    assert report.passed and [c.name for c in report.checks] == ["output", "model", "dataset", "adapter", "records", "memory"]
    assert "460 preference pairs" in next(c.message for c in report.checks if c.name == "records")
    # a prefix that holds no adapter
    none = run(dpo_job("dpo-none", s3, stored, preferences, model={"adapter": stored["model"]}), s3, tmp_path, processes=1)
    assert none.summary["reason"] == "ModelMissing" and "is not a PEFT adapter" in none.summary["message"], none.summary
