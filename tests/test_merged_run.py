"""Whole runs for output.merged and mixture-of-experts models: a 2-process ZeRO-3 run writes merged/ (shards,
index, config, generation config, tokenizer) whose logits are base + adapter; a Mixtral trains with the default
LoRA settings, dropout set to 0 and recorded; a merge that cannot happen fails before the first step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_trainer import tiny

from .model_helpers import save_with_byte_tokenizer
from .s3server import S3Server
from .trainer_helpers import manifest, run

pytestmark = pytest.mark.trainer


def fetch(s3: S3Server, uri: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for key in s3.keys(uri):
        (into / key).write_bytes(s3.get(uri + key))
    return into


def test_zero3_run_writes_a_merged_model_with_the_adapters_logits(s3: S3Server, stored: dict[str, str], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    tokenizer = tiny.byte_tokenizer()
    tiny.tiny_llama(tokenizer).save_pretrained(base_dir, max_shard_size="100KB")
    tokenizer.save_pretrained(base_dir)
    shards = sorted(p.name for p in base_dir.glob("*.safetensors"))
    assert len(shards) > 2
    out = "s3://adapters/merged/zero3/"
    body = manifest(
        "merged",
        s3,
        {
            "model": {"uri": s3.upload_dir(base_dir, "models", "sharded-llama")},
            "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128},
            "lora": {"r": 4, "alpha": 8},
            "training": {"maxSteps": 4, "learningRate": 0.01, "evalEverySteps": 0, "checkpointEverySteps": 0},
            "deepspeed": {"zeroStage": 3},
            "output": {"uri": out, "merged": True},
        },
    )
    outcome = run(body, s3, tmp_path)
    assert outcome.returncode == 0, outcome.stdout[-3000:] + outcome.stderr[-3000:]
    merged = fetch(s3, out + "merged/", tmp_path / "merged")
    assert {*shards, "model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer_config.json"} <= {
        p.name for p in merged.iterdir()
    }
    record = json.loads(s3.get(out + "manifest.json"))["merged"]
    assert record["uri"] == out + "merged/" and record["shards"] == len(shards)
    assert record["largestShardBytes"] < record["bytes"]
    adapter = fetch(s3, out + "adapter/", tmp_path / "adapter")
    ids = torch.tensor([tokenizer("reverse: apple river\n")["input_ids"]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        plain = base(input_ids=ids).logits
        want = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3  # training moved the adapter: the comparison can fail
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), f"max difference {(got - want).abs().max():.3g}"
    assert "_SUCCESS" in s3.keys(out)


def mixtral_job(name: str, s3: S3Server, tmp: Path, records: int, spec: dict[str, Any]) -> dict[str, Any]:
    """A job on a tiny Mixtral with local data and output; `spec` adds to and overrides the sections."""
    train = tiny.write_jsonl(tmp / "train.jsonl", tiny.records(records, seed=1))
    base: dict[str, Any] = {
        "model": {"uri": str(save_with_byte_tokenizer("mixtral", tmp / "tiny-mixtral"))},
        "dataset": {"train": str(train), "maxSeqLength": 128},
        "output": {"uri": str(tmp / "out")},
    }
    for section, value in spec.items():
        base[section] = {**base.get(section, {}), **value}
    return manifest(name, s3, base)


def test_a_mixtral_trains_with_the_defaults_and_records_the_dropout_it_used(s3: S3Server, tmp_path: Path) -> None:
    training = {"maxSteps": 3, "evalEverySteps": 0, "checkpointEverySteps": 0}
    body = mixtral_job("mixtral", s3, tmp_path, 120, {"training": training, "deepspeed": {"zeroStage": 3}})
    outcome = run(body, s3, tmp_path)
    assert outcome.returncode == 0, outcome.stdout[-3000:] + outcome.stderr[-3000:]
    (notice,) = [n for n in outcome.of("notice") if "lora.dropout" in n["message"]]
    assert "lora.dropout 0.05 -> 0.0" in notice["message"]
    adjusted = json.loads((tmp_path / "out" / "manifest.json").read_text())["adjusted"]
    assert adjusted["lora.dropout"]["used"] == 0.0 and "gate_up_proj" in adjusted["lora.dropout"]["why"]
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_parameters"]) >= {"gate_up_proj", "down_proj"}  # the experts were adapted


def test_a_merge_that_cannot_happen_fails_before_training(s3: S3Server, tmp_path: Path) -> None:
    body = mixtral_job("cannot-merge", s3, tmp_path, 60, {"training": {"maxSteps": 3}, "output": {"merged": True}})
    outcome = run(body, s3, tmp_path, processes=1)
    assert outcome.returncode == 1 and outcome.summary["reason"] == "CannotMerge"
    assert "fused expert parameters" in outcome.summary["message"]
    assert not outcome.of("progress")  # not one step was spent
