"""A family that cannot keep packed samples apart trains with packing turned off, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer import tiny

from .model_helpers import save_with_byte_tokenizer
from .s3server import S3Server
from .trainer_helpers import manifest, run

pytestmark = pytest.mark.trainer


def test_an_opt_model_trains_unpacked_with_a_notice(s3: S3Server, tmp_path: Path) -> None:
    model_dir = save_with_byte_tokenizer("opt", tmp_path / "tiny-opt")
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.records(120, seed=1))
    body = manifest(
        "opt",
        s3,
        {
            "model": {"uri": str(model_dir)},
            "dataset": {"train": str(train), "maxSeqLength": 128, "packing": True},
            "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]},
            "training": {"maxSteps": 2, "evalEverySteps": 0},
            "output": {"uri": str(tmp_path / "out")},
        },
    )
    outcome = run(body, s3, tmp_path, processes=1)
    assert outcome.returncode == 0, outcome.stdout[-2000:] + outcome.stderr[-2000:]
    (notice,) = outcome.of("notice")
    assert "dataset.packing turned off: opt models do not keep packed samples apart" in notice["message"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data"]["packing"] is False and metrics["data"]["modelType"] == "opt"


def test_the_fast_path_trains_to_the_same_losses_as_the_plain_one(s3: S3Server, tmp_path: Path) -> None:
    """varlen attention and the chunked loss (on the CPU: each sample through sdpa in turn, one chunk) against sdpa's
    block-diagonal mask and whole-batch logits: the same training and held-out losses, step for step."""
    model_dir = tiny.save_tiny_model(tmp_path / "model", hidden=64, layers=2, heads=4, seed=0)
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.records(200, seed=1))
    curves = {}
    for name, attention, chunked in (("plain", "sdpa", False), ("fast", "varlen", True)):
        body = manifest(
            name,
            s3,
            {
                "model": {"uri": str(model_dir), "attnImplementation": attention},
                "dataset": {"train": str(train), "maxSeqLength": 128, "packing": True},
                "training": {"maxSteps": 4, "evalEverySteps": 0, "microBatchSize": 2, "chunkedLoss": chunked},
                "output": {"uri": str(tmp_path / f"{name}-out")},
            },
        )
        (tmp_path / name).mkdir()
        outcome = run(body, s3, tmp_path / name)
        assert outcome.returncode == 0, outcome.stdout[-2000:] + outcome.stderr[-2000:]
        metrics = json.loads((tmp_path / f"{name}-out" / "metrics.json").read_text())
        curves[name] = [p["loss"] for p in metrics["curves"]["train"]] + [metrics["final"]["evalLoss"]]
        kernels = json.loads((tmp_path / f"{name}-out" / "manifest.json").read_text())["kernels"]
        assert kernels["attention"] == ("kubetune_varlen" if chunked else "sdpa")
        assert (kernels["lossChunkTokens"] > 0) == chunked
        assert not outcome.of("notice"), outcome.of("notice")
    assert curves["fast"] == pytest.approx(curves["plain"], rel=1e-5)
