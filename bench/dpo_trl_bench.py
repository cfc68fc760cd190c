"""DPO against TRL (not a test): kubetune's DPO and TRL 1.16's DPOTrainer side by side on the same pairs.

  .venv/bin/python bench/dpo_trl_bench.py [--seeds 0,1,2] [--steps 150] [--sides kubetune,trl,packed]
                                                                             (make bench-dpo runs it)

The same generated conversational preference pairs (400 for training, 100 held out; a system message and a user
turn per prompt, one assistant reply each side: the chosen in capitals), the same model (the quickstart's tiny
Llama), LoRA r 8, alpha 16, dropout 0 on every linear layer, learning rate 5e-3 cosine with 3% warm-up, beta 0.1,
the sigmoid loss, 8 pairs a step, one process, fp32, no truncation and no packing (TRL's default), for each seed.
TRL's reference is the model with the adapter disabled, as kubetune's. Prints each side's held-out DPO loss and
preference accuracy per seed, their means and standard errors, and the time per trained pair; exits 1 when
kubetune's mean held-out loss is worse than TRL's by more than two standard errors of the difference.

The side `packed` is kubetune with dataset.packing on (its default) over the same pairs for the same epochs: fewer,
larger steps, each row holding several pairs (what the default costs or gains in held-out loss and time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "quickstart" / "tiny-llama"
SYSTEM = {"role": "system", "content": "You answer in capitals."}
PAIRS, HELD = 400, 100
BATCH = 8


def write_pairs(work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "trainer"))
    from kubetune_trainer.tiny import preference_records

    records = preference_records(PAIRS + HELD, seed=0, fmt="preference-chat")
    for record in records:
        record["prompt"] = [SYSTEM, *record["prompt"]]
    train, held = work / "train.jsonl", work / "held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:PAIRS]))
    held.write_text("".join(json.dumps(r) + "\n" for r in records[PAIRS:]))
    return train, held


TRL_SIDE = """
import json, sys, time
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model_dir, train, held, out, seed, steps = sys.argv[1:7]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
data = load_dataset("json", data_files={"train": train, "test": held})
config = DPOConfig(
    output_dir=out, learning_rate=5e-3, lr_scheduler_type="cosine", warmup_steps=0.03, beta=0.1, loss_type=["sigmoid"],
    per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=int(steps), max_length=None, seed=int(seed),
    report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000, bf16=False, dataloader_num_workers=0,
    disable_tqdm=True,
)
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = DPOTrainer(
    model=model, args=config, train_dataset=data["train"], eval_dataset=data["test"], processing_class=tokenizer,
    peft_config=lora,
)
started = time.monotonic()
trainer.train()
seconds = time.monotonic() - started
found = trainer.evaluate()
print(json.dumps({"loss": found["eval_loss"], "accuracy": found["eval_rewards/accuracies"], "seconds": seconds}))
"""


def trl(train: Path, held: Path, work: Path, seed: int, steps: int) -> dict[str, float]:
    out = work / f"trl-{seed}"
    argv = [sys.executable, "-c", TRL_SIDE, str(MODEL), str(train), str(held), str(out), str(seed), str(steps)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=work, check=False)
    if done.returncode != 0:
        raise SystemExit(f"TRL's side failed (seed {seed}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def kubetune(train: Path, held: Path, work: Path, seed: int, steps: int, packing: bool = False) -> dict[str, float]:
    length: dict[str, Any] = {"epochs": steps * BATCH // PAIRS} if packing else {"maxSteps": steps}
    spec: dict[str, Any] = {
        "model": {"uri": f"{MODEL}/"},
        "method": {"type": "dpo", "dpo": {"beta": 0.1, "lossType": "sigmoid"}},
        "dataset": {
            "train": str(train),
            "validation": str(held),
            "format": "preference",
            "maxSeqLength": 256,
            "packing": packing,
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
        "training": {
            **length,
            "learningRate": 5e-3,
            "scheduler": "cosine",
            "warmupRatio": 0.03,
            "microBatchSize": BATCH,
            "seed": seed,
            "evalEverySteps": 0,
            "checkpointEverySteps": 0,
        },
        "workers": {"replicas": 1, "gpusPerWorker": 0},
        "output": {"uri": f"{work / f'kubetune-{seed}'}/", "overwrite": True},
    }
    manifest = work / f"kubetune-{seed}.yaml"
    manifest.write_text(
        json.dumps(
            {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"dpo-{seed}"}, "spec": spec}
        )
    )
    argv = [sys.executable, "-m", "kubetune_cli", "run", str(manifest), "--processes", "1", "--progress", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = next((e for e in reversed(events) if e.get("event") == "summary"), None)
    if summary is None or summary.get("status") != "Succeeded":
        raise SystemExit(f"kubetune's side failed (seed {seed}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    seconds = sum(e["seconds"] for e in events if e.get("event") == "timing" and e.get("phase") == "training steps")
    metrics = summary["metrics"]
    trained = max(e["step"] for e in events if e.get("event") == "progress")
    return {"loss": metrics["evalLoss"], "accuracy": metrics["preferenceAccuracy"], "seconds": seconds, "steps": trained}


def packed(train: Path, held: Path, work: Path, seed: int, steps: int) -> dict[str, float]:
    return kubetune(train, held, work / "packed", seed, steps, packing=True)


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--sides", default="kubetune,trl", help="of kubetune, trl and packed (kubetune, packing on)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runners = {"kubetune": kubetune, "trl": trl, "packed": packed}
    chosen = args.sides.split(",")
    if not chosen or set(chosen) - set(runners):
        parser.error(f"--sides: choose from {', '.join(runners)}")
    sides: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="kubetune-dpo-trl-") as scratch:
        work = Path(scratch)
        train, held = write_pairs(work)
        (work / "packed").mkdir()
        for seed in seeds:
            for name in chosen:
                side = runners[name]
                started = time.monotonic()
                found = side(train, held, work, seed, args.steps)
                sides[name].append(found)
                print(
                    f"seed {seed} {name:<9} held-out DPO loss {found['loss']:.4f}  preference accuracy "
                    f"{found['accuracy']:.3f}  ({time.monotonic() - started:.0f} s in all)",
                    flush=True,
                )
    pairs_trained = args.steps * BATCH
    print(f"\n{args.steps} steps of {BATCH} pairs, seeds {args.seeds}; mean (standard error)")
    print(f"{'':10}{'held-out DPO loss':>22}{'preference accuracy':>24}{'ms per pair':>14}{'steps':>8}")
    means = {}
    for name, runs in sides.items():
        loss, loss_se = mean_se([r["loss"] for r in runs])
        accuracy, accuracy_se = mean_se([r["accuracy"] for r in runs])
        per_pair = statistics.fmean([r["seconds"] for r in runs]) / pairs_trained * 1000
        means[name] = (loss, loss_se, per_pair)
        steps = round(statistics.fmean([r.get("steps", args.steps) for r in runs]))
        print(f"{name:10}{loss:>14.4f} ({loss_se:.4f}){accuracy:>16.3f} ({accuracy_se:.3f}){per_pair:>14.1f}{steps:>8}")
    if "packed" in means and "kubetune" in means:
        (unpacked, _, unpacked_ms), (packed_loss, _, packed_ms) = means["kubetune"], means["packed"]
        print(f"packed over unpacked: held-out loss {packed_loss - unpacked:+.4f}, time per pair {packed_ms / unpacked_ms:.2f}x")
    if "kubetune" not in means or "trl" not in means:
        return 0
    (ours, ours_se, ours_ms), (theirs, theirs_se, theirs_ms) = means["kubetune"], means["trl"]
    print(f"kubetune over TRL: held-out loss {ours - theirs:+.4f}, time per pair {ours_ms / theirs_ms:.2f}x")
    bound = 2 * math.hypot(ours_se, theirs_se)
    if ours - theirs > bound:
        print(f"FAIL: kubetune's mean held-out DPO loss is worse than TRL's by more than two standard errors ({bound:.4f})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
