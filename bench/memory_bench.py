"""Memory per process: the estimate (kubetune_api.memory, what the preflight reports) beside the measured peak of
real training steps through `kubetune run`, case by case (not a test; tests/test_memory_estimate.py checks a few).

On CPUs the peak is the allocator's count through torch's profiler (KUBETUNE_MEASURE_MEMORY=1), on a GPU
torch.cuda.max_memory_allocated, both from the first training step on.

  .venv/bin/python bench/memory_bench.py            (or: make bench-memory)   CPU cases, about 6 minutes
  python bench/memory_bench.py --gpu                 GPU cases (bf16), one GPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubetune_api.manifests import dump
from kubetune_trainer import tiny

ROOT = Path(__file__).resolve().parent.parent
LLAMA = {"config_class": "LlamaConfig", "num_attention_heads": 8, "num_key_value_heads": 4}
CPU_CASES: list[dict[str, Any]] = [
    {
        "model": {**LLAMA, "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 688},
        "seq": 512,
        "micro": 2,
        "stage": 2,
    },
    {
        "model": {**LLAMA, "hidden_size": 512, "num_hidden_layers": 4, "intermediate_size": 1376},
        "seq": 1024,
        "micro": 1,
        "stage": 1,
    },
    {
        "model": {**LLAMA, "hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 688, "vocab_size": 32000},
        "seq": 512,
        "micro": 2,
        "stage": 2,
    },
    {
        "model": {**LLAMA, "hidden_size": 1024, "num_hidden_layers": 2, "intermediate_size": 2752},
        "seq": 256,
        "micro": 1,
        "stage": 3,
        "procs": 2,
    },
    {
        "model": {**LLAMA, "hidden_size": 512, "num_hidden_layers": 4, "intermediate_size": 1376},
        "seq": 512,
        "micro": 2,
        "stage": 2,
        "checkpointing": True,
    },
    {
        "model": {
            "config_class": "Qwen2Config",
            "hidden_size": 384,
            "num_hidden_layers": 3,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "intermediate_size": 1024,
            "vocab_size": 8000,
        },
        "seq": 512,
        "micro": 2,
        "stage": 3,
        "procs": 2,
    },
    {
        "model": {"config_class": "GPT2Config", "n_embd": 384, "n_layer": 3, "n_head": 6, "n_positions": 1024},
        "seq": 512,
        "micro": 2,
        "stage": 2,
        "dropout": 0.0,
    },
]
GPU_MODEL = {
    **LLAMA,
    "hidden_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "intermediate_size": 5632,
    "vocab_size": 32000,
}
GPU_CASES: list[dict[str, Any]] = [
    {"model": GPU_MODEL, "seq": 1024, "micro": 4, "stage": 2},
    {"model": GPU_MODEL, "seq": 4096, "micro": 1, "stage": 2},
    {"model": GPU_MODEL, "seq": 2048, "micro": 2, "stage": 3},
    {"model": GPU_MODEL, "seq": 4096, "micro": 2, "stage": 2, "checkpointing": True},
    {"model": GPU_MODEL, "seq": 2048, "micro": 2, "stage": 1, "dropout": 0.0},
    {
        "model": {
            "config_class": "Qwen2Config",
            "hidden_size": 1536,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "intermediate_size": 8960,
            "vocab_size": 64000,
        },
        "seq": 2048,
        "micro": 2,
        "stage": 2,
    },
]


def label(case: dict[str, Any]) -> str:
    model = case["model"]
    name = model["config_class"].removesuffix("Config").lower()
    hidden = model.get("hidden_size", model.get("n_embd"))
    extra = " ckpt" if case.get("checkpointing") else ""
    extra += " no-dropout" if case.get("dropout") == 0.0 else ""
    return f"{name} h{hidden} v{model.get('vocab_size', 259)} seq {case['seq']}x{case['micro']} ZeRO-{case['stage']} x{case.get('procs', 1)}{extra}"


def measure(work: Path, case: dict[str, Any], gpu: bool, index: int) -> dict[str, Any]:
    """One `kubetune run` of three steps; returns metrics.json's train section (peak and estimate)."""
    model_dir = work / f"model-{hashlib.sha256(json.dumps(case['model'], sort_keys=True).encode()).hexdigest()[:12]}"
    if not model_dir.exists():
        tiny.save_config_model(model_dir, dtype="bfloat16" if gpu else "float32", **case["model"])
    if not (work / "train.jsonl").exists():
        tiny.write_jsonl(work / "train.jsonl", tiny.records(4000, seed=11))
        tiny.write_jsonl(work / "val.jsonl", tiny.records(40, seed=12))
    procs = case.get("procs", 1)
    body = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"memory-{index}"},
        "spec": {
            "model": {"uri": str(model_dir)},
            "dataset": {
                "train": str(work / "train.jsonl"),
                "validation": str(work / "val.jsonl"),
                "maxSeqLength": case["seq"],
                "packing": True,
            },
            "lora": {"r": 16, "alpha": 32, "dropout": case.get("dropout", 0.05)},
            "training": {
                "maxSteps": 3,
                "microBatchSize": case["micro"],
                "evalEverySteps": 0,
                "checkpointEverySteps": 0,
                "gradientCheckpointing": case.get("checkpointing", False),
            },
            "deepspeed": {"zeroStage": case["stage"]},
            "workers": {"replicas": 1, "gpusPerWorker": procs if gpu else 0, **({} if gpu else {"processesPerWorker": procs})},
            "output": {"uri": str(work / f"out-{index}"), "overwrite": True},
        },
    }
    manifest = work / f"case-{index}.yaml"
    manifest.write_text(dump(body))
    done = subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "run", str(manifest), "--work-dir", str(work / f"kt-{index}")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "KUBETUNE_MEASURE_MEMORY": "1"},
    )
    if done.returncode:
        raise RuntimeError(f"{label(case)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return dict(json.loads((work / f"out-{index}" / "metrics.json").read_text())["train"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the GPU cases, bf16 on one GPU")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--only", type=int, action="append", help="run only this case (by its place, from 0)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubetune-memory-"))
    rows = []
    print(f"{'case':58}{'estimate':>11}{'measured':>11}{'ratio':>7}   largest parts of the estimate")
    for index, case in enumerate(GPU_CASES if args.gpu else CPU_CASES):
        if args.only and index not in args.only:
            continue
        train = measure(work, case, args.gpu, index)
        estimate, peak = train["estimatedMemoryBytes"], train["peakMemoryBytes"]
        parts = sorted(train["estimatedMemoryParts"].items(), key=lambda kv: -kv[1])[:3]
        shown = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in parts)
        print(f"{label(case):58}{estimate / 2**20:>9.0f}Mi{peak / 2**20:>9.0f}Mi{estimate / peak:>7.2f}   {shown}", flush=True)
        rows.append({"case": label(case), "estimate": estimate, "peak": peak, "by": train.get("peakMemoryMeasuredBy")})
    ratios = [r["estimate"] / r["peak"] for r in rows]
    print(f"estimate / measured: {min(ratios):.2f} to {max(ratios):.2f} over {len(rows)} cases ({rows[0]['by']})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
