"""The GPU benchmark's pipeline (bench/gpu_bench.py), run on the CPU with the tiny shape: every side (kubetune on and
off its fast path, TRL's SFTTrainer, the transformers Trainer) trains on the same data and reports its figures, the
step profile is written, and the fast path's held-out loss equals the unoptimised one's. The FLOPs count it divides
by is checked against a real Llama-3-8B module tree (on the meta device: no weights)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from .conftest import ROOT


def bench_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu_bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_flops_count_matches_the_llama3_8b_module_tree() -> None:
    bench = bench_module()
    shape = bench.SHAPES["llama3-8b"]
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**shape))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert 8.0e9 < sum(p.numel() for p in model.parameters()) < 8.1e9  # Llama-3-8B: 8.03B parameters
    one_token = bench.flops_per_token(shape, [1])  # a context of 1: attention adds 12 x layers x 4096 x 1
    lora = one_token - 4 * linear - 12 * 32 * 4096
    assert 6 * 40e6 < lora < 6 * 45e6  # r=16 on every linear layer of Llama-3-8B: 41.9M parameters
    longer = bench.flops_per_token(shape, [4096])
    assert longer - one_token == pytest.approx(12 * 32 * 4096 * (4097 / 2 - 1))


@pytest.mark.trainer
def test_the_gpu_bench_runs_every_side_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--shape=tiny",
            "--cpu",
            "--steps=8",
            "--warmup=4",
            "--variants=kubetune,kubetune-plain",
            "--baselines=trl,hf",
            f"--work={tmp_path / 'work'}",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    results = figures["results"]
    assert set(results) == {"kubetune", "kubetune-plain", "baseline-trl", "baseline-hf"}
    for name, r in results.items():
        assert r["usefulTokensPerSecond"] > 0 and r["evalLoss"] > 0, name
    ours, plain = results["kubetune"], results["kubetune-plain"]
    assert ours["steps"] == plain["steps"] == 8
    assert ours["evalLoss"] == pytest.approx(plain["evalLoss"], rel=1e-4)
    # on the CPU auto is sdpa, and a 259-entry vocabulary is under the chunked loss's default threshold
    assert ours["kernels"] == plain["kernels"] == {"attention": "sdpa", "lossChunkTokens": 0}
    for kind in ("baseline-trl", "baseline-hf"):  # the same data and LoRA: the same neighbourhood of loss
        assert results[kind]["evalLoss"] == pytest.approx(ours["evalLoss"], rel=0.02), kind
    profile = ours["profile"]
    assert profile["steps"] == 2 and profile["stepSeconds"] > 0
    assert all(profile["sections"][s] > 0 for s in ("forward", "backward", "optimizer"))
    assert sum(profile["sections"].values()) <= profile["stepSeconds"] * 1.05
    assert "kubetune / baseline-trl:" in done.stdout and "MFU" in done.stdout
