"""Preemption benchmark (not a test): what a SIGTERM costs a run, side by side with the run it interrupts.

  .venv/bin/python bench/preemption_bench.py [--steps 60] [--at 25]         (or: make bench-preemption)

On the trainer benchmark's model (2 local processes, ZeRO-2, output on the real S3 server), one job is trained
without interruption (the baseline) and the same job is SIGTERM'd after `--at` steps, as the kubelet does a
preempted pod, then run again. Prints the just-in-time checkpoint's size, the loop's stall to write it, the time
until it was uploaded and COMPLETE, the time from the signal to the process's exit, the steps lost, and the
held-out loss of the resumed run against the baseline's. Then the same arithmetic the preflight uses
(kubetune_api.grace) for a 70B-shaped model: the checkpoint's size and its write and upload time per worker, and
the work a preemption loses before (half the checkpoint interval on average) and after (at most one step).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import S3Server, start  # noqa: E402

from kubetune_api import grace  # noqa: E402
from kubetune_api.job import FineTuneJobSpec  # noqa: E402
from kubetune_api.manifests import dump  # noqa: E402
from kubetune_api.memory import estimate, shape_of  # noqa: E402
from kubetune_trainer import tiny  # noqa: E402

MODEL = {"hidden": 256, "layers": 4, "heads": 8}  # the trainer benchmark's (bench/trainer_bench.py)
LLAMA_70B = {  # Llama-3-70B's config.json, the parts the estimate reads
    "model_type": "llama",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "vocab_size": 128256,
}
INTERVAL = 200  # training.checkpointEverySteps' default


def job(name: str, s3: S3Server, work: Path, steps: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": str(work / "model")},
            "dataset": {"train": str(work / "train.jsonl"), "validation": str(work / "val.jsonl"), "maxSeqLength": 192},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "training": {
                "maxSteps": steps,
                "microBatchSize": 4,
                "learningRate": 2e-3,
                "evalEverySteps": 0,
                "checkpointEverySteps": 0,  # the one written on SIGTERM is all there is
                "logEverySteps": 1,
            },
            "deepspeed": {"zeroStage": 2},
            "workers": {"replicas": 2, "gpusPerWorker": 0},
            "storage": {"endpoint": s3.endpoint, "region": "us-east-1", "addressingStyle": "path"},
            "output": {"uri": f"s3://bench/{name}/"},
        },
    }


def kubetune_run(body: dict[str, Any], s3: S3Server, work: Path, sigterm_after: int | None = None) -> dict[str, Any]:
    """Run it (SIGTERM'd after that many progress lines): its events, the signal's and the exit's times."""
    name = body["metadata"]["name"]
    manifest = work / f"{name}.yaml"
    manifest.write_text(dump(body))
    command = [sys.executable, "-m", "kubetune_cli", "run", str(manifest), "--progress", "json", "--work-dir", str(work / name)]
    env = {**os.environ, **s3.env, "KUBETUNE_CACHE": str(work / "cache")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    assert process.stdout is not None
    events: list[dict[str, Any]] = []
    signalled = None
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        events.append(event)
        progress = [e for e in events if e.get("event") == "progress"]
        if sigterm_after is not None and signalled is None and len(progress) >= sigterm_after:
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
    process.wait()
    return {"events": events, "signalled": signalled, "exited": time.monotonic(), "code": process.returncode}


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == kind]


def checkpoint_size(s3: S3Server, uri: str) -> int:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(o["Size"] for page in pages for o in page.get("Contents", []))


def seventy_b(workers: int, gpus: int) -> tuple[int, int, float]:
    """Trainable parameters, checkpoint bytes and write-and-upload seconds of a rank-16 all-linear LoRA on 70B."""
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "s3://models/llama-3-70b/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "lora": {"r": 16, "targetModules": ["all-linear"]},
            "deepspeed": {"zeroStage": 3},
            "workers": {"replicas": workers, "gpusPerWorker": gpus},
            "output": {"uri": "s3://adapters/70b/"},
        }
    )
    trainable = estimate(shape_of(LLAMA_70B), spec, workers * gpus, True).trainable
    size = grace.checkpoint_bytes(trainable, 2)
    return trainable, size, grace.checkpoint_seconds(size, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--at", type=int, default=25, help="SIGTERM after this many progress lines")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubetune-bench-preemption-"))
    tiny.save_tiny_model(work / "model", **MODEL, seed=0)
    tiny.write_jsonl(work / "train.jsonl", tiny.records(3000, seed=11))
    tiny.write_jsonl(work / "val.jsonl", tiny.records(300, seed=12))
    s3 = start(work / "weed.log")
    try:
        s3.bucket("bench")
        whole = kubetune_run(job("whole", s3, work, args.steps), s3, work)
        stopped = kubetune_run(job("preempted", s3, work, args.steps), s3, work, sigterm_after=args.at)
        (written,) = of(stopped["events"], "checkpoint")
        size = checkpoint_size(s3, written["uri"])
        resumed = kubetune_run(job("preempted", s3, work, args.steps), s3, work)
    finally:
        s3.stop()
    base = of(whole["events"], "summary")[-1]
    summary = of(stopped["events"], "summary")[-1]
    logged = max(e["step"] for e in of(stopped["events"], "progress"))
    trained = next(e["seconds"] for e in of(whole["events"], "timing") if e["phase"] == "training steps")
    per_step = trained / base["steps"]
    after = of(resumed["events"], "summary")[-1]
    print(
        f"model: tiny Llama {MODEL}, LoRA r16, 2 CPU processes, ZeRO-2, output on SeaweedFS (S3); SIGTERM after {args.at} steps"
    )
    print(f"   exit code {stopped['code']}, reason {summary['reason']}: {summary['message']}")
    print(f"   just-in-time checkpoint at step {written['step']}: {size / 2**20:.2f} MiB in storage")
    print(
        f"   loop stalled {written['stallSeconds']:.3f} s to write it; COMPLETE (uploaded) after {written['completeAfterSeconds']:.3f} s"
    )
    print(f"   signal to exit: {stopped['exited'] - stopped['signalled']:.2f} s (the grace period it needs)")
    print(f"   steps lost: {max(0, logged - written['step'])} (last step logged {logged}, checkpointed {written['step']})")
    print(
        f"   held-out loss: resumed {after['metrics']['evalLoss']:.5f}, uninterrupted {base['metrics']['evalLoss']:.5f}, "
        f"difference {abs(after['metrics']['evalLoss'] - base['metrics']['evalLoss']):.1e}"
    )
    print(
        f"   work lost per preemption: before {INTERVAL / 2:.0f} steps ({INTERVAL / 2 * per_step:.1f} s here) on average, "
        f"after at most 1 ({per_step:.2f} s)"
    )
    for workers, gpus in ((1, 8), (8, 8)):
        trainable, total, seconds = seventy_b(workers, gpus)
        print(
            f"70B-shaped (Llama-3-70B, LoRA r16 all-linear, bf16), {workers} worker(s) x {gpus} GPUs: {trainable / 1e6:.0f}M trainable, "
            f"checkpoint {total / 2**30:.2f} GiB, about {seconds:.0f} s to write and upload per worker "
            f"(grace {grace.WRITE_BYTES_PER_SECOND >> 20} MiB/s write, {grace.UPLOAD_BYTES_PER_SECOND >> 20} MiB/s upload)"
        )


if __name__ == "__main__":
    main()
