"""GPU throughput at a real model's shape, side by side in one run on the same GPU, model and data (not a test):

  kubetune (its defaults: varlen attention over packed rows, the chunked loss), ZeRO-2, one GPU
  kubetune with those off (sdpa's block-diagonal mask, whole-batch logits): the unoptimised path, on/off
  kubetune under ZeRO-3, and with gradient checkpointing (--variants)
  TRL 1.16's SFTTrainer (packing, padding-free) and the transformers Trainer + peft (gpu_baselines.py)

A model of the published configuration (--shape llama3-8b: Llama-3-8B; llama3-1b for a quick check) is built with
random bf16 weights on the GPU (nothing downloaded); LoRA r=16, alpha 32, on every linear layer; generated records
of 256 to 3,072 tokens (log-uniform) packed into --seq-token rows (4,096). It prints, per run: steady-state useful
tokens/s per GPU (the logged windows after the first, which holds the warm-up and the profiled steps), model
TFLOP/s and MFU, peak memory against the preflight's estimate, and the held-out loss; for kubetune, where a
step's time goes (data, forward, backward, optimizer, communication, top kernels: recipe/profile.py).

FLOPs per token (the count NeMo's and torchtune's LoRA figures use, plus attention): 4 x the frozen matrix
parameters (forward, and the backward's input gradients; no weight gradients for the frozen base) + 6 x the LoRA
parameters + 12 x layers x query heads x head size x the mean attended context (causal, within each sample:
(n+1)/2 for a sample of n tokens). Only useful (non-padding) tokens count. MFU divides by the card's dense bf16
peak (H100/H200 SXM: 989.4 TFLOP/s; --peak-tflops otherwise).

  python bench/gpu_bench.py --shape llama3-8b                 one H100/H200, about 8 minutes
  python bench/gpu_bench.py --shape tiny --cpu --steps 6      the same pipeline on the CPU (tests/test_gpu_bench.py)

Exits 1 if the fast path's held-out loss is more than 0.5% above the unoptimised path's (same data, same order,
same seed: only the kernels differ).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune_api.manifests import dump
from kubetune_trainer import tiny

ROOT = Path(__file__).resolve().parent.parent
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {**tiny.LLAMA3_8B, "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5},
    "llama3-1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
    },
}
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
LOSS_TOLERANCE = 0.005
VARIANTS: dict[str, dict[str, Any]] = {
    "kubetune": {},
    "kubetune-plain": {"model": {"attnImplementation": "sdpa"}, "training": {"chunkedLoss": False}},
    "kubetune-zero3": {"deepspeed": {"zeroStage": 3}},
    "kubetune-gc": {"training": {"gradientCheckpointing": True}},
}


def build_model(work: Path, shape: dict[str, Any], gpu: bool) -> Path:
    """The shape's model with random weights (bf16 on the GPU, built there) and the byte tokenizer."""
    import torch
    import transformers

    if not gpu:
        return tiny.save_config_model(work / "model", "LlamaConfig", **shape)
    tokenizer = tiny.byte_tokenizer()
    config = transformers.LlamaConfig(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    del model
    torch.cuda.empty_cache()
    return work / "model"


def records(count: int, seed: int, shortest: int, longest: int) -> list[dict[str, str]]:
    """Prompt-completion records of log-uniform length in [shortest, longest] bytes (the byte tokenizer: tokens)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = int(math.exp(rng.uniform(math.log(shortest), math.log(longest))))
        text = " ".join(rng.choice(tiny.WORDS) for _ in range(size // 5 + 1))[:size]
        cut = max(1, size // 10)
        out.append({"prompt": text[:cut], "completion": text[cut:]})
    return out


def flops_per_token(config: dict[str, Any], lengths: list[int]) -> float:
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim") or d // heads
    inner = config["intermediate_size"]
    vocab = config["vocab_size"]
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * inner
    frozen = layers * per_layer + d * vocab
    r = 16
    lora = layers * r * ((d + heads * hd) + 2 * (d + kv * hd) + (heads * hd + d) + 2 * (d + inner) + (inner + d))
    context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    return 4 * frozen + 6 * lora + 12 * layers * heads * hd * context


def kubetune(work: Path, name: str, plan: dict[str, Any], gpu: bool, profile: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": str(work / "model")},
        "dataset": {
            "train": str(work / "train.jsonl"),
            "validation": str(work / "val.jsonl"),
            "maxSeqLength": plan["seq"],
            "packing": True,
        },
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {
            "maxSteps": plan["steps"],
            "learningRate": plan["lr"],
            "seed": plan["seed"],
            "microBatchSize": plan["micro"],
            "evalEverySteps": 0,
            "checkpointEverySteps": 0,
            "logEverySteps": plan["warmup"],
        },
        "deepspeed": {"zeroStage": 2},
        "workers": {"replicas": 1, "gpusPerWorker": 1 if gpu else 0},
        "output": {"uri": str(work / f"{name}-out"), "overwrite": True},
    }
    for section, values in VARIANTS[name].items():
        spec[section] = {**spec.get(section, {}), **values}
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
    manifest = work / f"{name}.yaml"
    manifest.write_text(dump(body))
    env = {**os.environ, "KUBETUNE_PROFILE_STEPS": str(plan["warmup"] - 2) if profile else "0"}
    done = subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "run", str(manifest), "--progress", "json", "--work-dir", str(work / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if done.returncode:
        return {"failed": (done.stdout[-1500:] + done.stderr[-1500:]).strip()}
    windows = [
        json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"event":"progress"') or '"event": "progress"' in x
    ]
    windows = [w for w in windows if w.get("event") == "progress"]
    metrics = json.loads((work / f"{name}-out" / "metrics.json").read_text())
    kernels = json.loads((work / f"{name}-out" / "manifest.json").read_text()).get("kernels", {})
    steady = [w["tokensPerSecond"] for w in windows[1:]] or [metrics["train"]["usefulTokensPerSecond"]]
    found = next((work / name).rglob("profile.json"), None) if profile else None
    return {
        "usefulTokensPerSecond": statistics.fmean(steady),
        "steps": metrics["train"]["steps"],
        "evalLoss": metrics["final"]["evalLoss"],
        "peakMemoryBytes": metrics["train"].get("peakMemoryBytes"),
        "estimatedMemoryBytes": metrics["train"].get("estimatedMemoryBytes"),
        "profile": json.loads(found.read_text()) if found else None,
        "kernels": kernels,
    }


def baseline(work: Path, kind: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_baselines.py"), str(work), kind], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode:
        return {"failed": (done.stdout[-1500:] + done.stderr[-1500:]).strip()}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the tiny shape: the pipeline, not a figure)")
    parser.add_argument("--seq", type=int, help="row length in tokens (default 4096; 256 on the CPU)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=6, help="steps in the first logged window (warm-up, profiled)")
    parser.add_argument("--micro", type=int, default=1, help="rows per micro-batch")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--variants", default="kubetune,kubetune-plain,kubetune-zero3")
    parser.add_argument("--baselines", default="trl,hf")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not an H100, H200 or A100")
    parser.add_argument("--work", type=Path, help="working directory (default: a new one under the temp dir)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    gpu = not args.cpu
    seq = args.seq or (4096 if gpu else 256)
    shape = SHAPES[args.shape]
    work = args.work or Path(tempfile.mkdtemp(prefix="kubetune-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    device, peak = "CPU", None
    if gpu:
        import torch

        device = torch.cuda.get_device_name()
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in device), None)
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
        device = f"{device}, driver {driver}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    build_model(work, shape, gpu)
    shortest, longest = (256, 3072) if gpu else (24, 200)
    mean_len = (longest - shortest) / math.log(longest / shortest)
    count = int(args.steps * args.micro * seq / mean_len * 1.3) + 8
    train = records(count, 11, shortest, longest)
    tiny.write_jsonl(work / "train.jsonl", train)
    tiny.write_jsonl(work / "val.jsonl", records(48 if gpu else 16, 12, shortest, longest))
    plan = {
        "gpu": gpu,
        "seq": seq,
        "steps": args.steps,
        "warmup": args.warmup,
        "micro": args.micro,
        "lr": args.lr,
        "seed": 42,
        "hfBatch": max(1, round(args.micro * seq / longest * 1.5)),  # padded to the longest: about one row's tokens
    }
    (work / "bench.json").write_text(json.dumps(plan))
    config = {**json.loads((work / "model" / "config.json").read_text())}
    per_token = flops_per_token(config, [len(r["prompt"]) + len(r["completion"]) for r in train])
    print(f"model: {args.shape} (Llama, random bf16 weights), rows of {seq} tokens, {args.steps} steps, micro-batch {args.micro}")
    print(f"device: {device}; model FLOPs per useful token {per_token / 1e9:.4g} GFLOP (4N + 6 N_lora + attention)")
    results: dict[str, dict[str, Any]] = {}
    runs = [v for v in args.variants.split(",") if v] + [f"baseline-{b}" for b in args.baselines.split(",") if b]
    # the comparisons the goals name first (a GPU lease is short): kubetune, TRL, the unoptimised path, the rest
    runs.sort(
        key=lambda n: (
            ["kubetune", "baseline-trl", "kubetune-plain"].index(n) if n in ("kubetune", "baseline-trl", "kubetune-plain") else 3
        )
    )
    for name in runs:
        began = time.monotonic()
        if name.startswith("baseline-"):
            results[name] = baseline(work, name.removeprefix("baseline-"))
        else:
            results[name] = kubetune(work, name, plan, gpu, profile=name == "kubetune")
        print(f"{name}: {'failed' if 'failed' in results[name] else 'done'} in {time.monotonic() - began:.0f} s", flush=True)
        if args.json:  # after every run: a run cut off by its time limit keeps what was measured
            figures = {"device": device, "plan": plan, "flopsPerToken": per_token, "results": results}
            args.json.write_text(json.dumps(figures, indent=1))
    print(f"{'':22}{'tok/s/GPU':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'estimate':>10}{'held-out loss':>15}")
    for name, r in results.items():
        if "failed" in r:
            print(f"{name:22} FAILED: {r['failed'][-600:]}")
            continue
        speed = r["usefulTokensPerSecond"]
        achieved = speed * per_token
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        mem = f"{r['peakMemoryBytes'] / 2**30:.2f}" if r.get("peakMemoryBytes") else "n/a"
        guess = f"{r['estimatedMemoryBytes'] / 2**30:.2f}" if r.get("estimatedMemoryBytes") else ""
        print(f"{name:22}{speed:>11.0f}{achieved / 1e12:>9.1f}{mfu:>7}{mem:>10}{guess:>10}{r['evalLoss']:>15.4f}")
    for name, r in results.items():
        if r.get("kernels"):
            print(f"{name}: attention {r['kernels']['attention']}, loss chunk {r['kernels']['lossChunkTokens'] or 'none'}")
    ours = results.get("kubetune", {})
    for other in ("baseline-trl", "baseline-hf", "kubetune-plain"):
        if "usefulTokensPerSecond" in ours and "usefulTokensPerSecond" in results.get(other, {}):
            ratio = ours["usefulTokensPerSecond"] / results[other]["usefulTokensPerSecond"]
            print(f"kubetune / {other}: {ratio:.2f}x tokens/s")
    if ours.get("peakMemoryBytes") and ours.get("estimatedMemoryBytes"):
        print(f"kubetune peak memory / preflight estimate: {ours['peakMemoryBytes'] / ours['estimatedMemoryBytes']:.2f}")
    if ours.get("profile"):
        p = ours["profile"]
        split = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in p["sections"].items())
        print(
            f"kubetune step {p['stepSeconds'] * 1000:.1f} ms ({p['measuredOn']}): {split}, communication {p['communicationSeconds'] * 1000:.1f} ms"
        )
        for k in p["topKernels"][:5]:
            print(f"  {k['seconds'] * 1000:8.2f} ms  {k['name']}")
    print(f"wall {time.monotonic() - started:.0f} s")
    plain = results.get("kubetune-plain", {})
    if "evalLoss" in ours and "evalLoss" in plain and ours["evalLoss"] > plain["evalLoss"] * (1 + LOSS_TOLERANCE):
        print(
            f"FAILED: the fast path's held-out loss {ours['evalLoss']:.4f} is more than {LOSS_TOLERANCE:.1%} above the "
            f"unoptimised path's {plain['evalLoss']:.4f}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    if any("failed" in r for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
