"""The baselines beside kubetune in bench/gpu_bench.py, one per process, on the same model, data and LoRA:

  trl  TRL's SFTTrainer: best-fit-decreasing packing into max_length rows, padding-free (one flattened row per
       batch with restarting positions), the attention transformers picks for it (sdpa here: flash-attn is not
       installed), LoRA by peft
  hf   transformers Trainer + peft: one sample per row, padded to the longest in the batch (what a user writes first)

`python bench/gpu_baselines.py WORK KIND` reads WORK/bench.json (what gpu_bench.py wrote) and prints one JSON line:
steady-state useful tokens/s (steps after the warm-up ones, timed with the device synchronised), peak memory,
and the held-out loss by the same evaluation kubetune runs (kubetune_trainer.recipe.evaluate).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from kubetune_api.dataset import DatasetSpec
from kubetune_trainer.data import batching, formats, reading
from kubetune_trainer.recipe import evaluate


class Timer(TrainerCallback):  # type: ignore[misc]
    """Step end times (device synchronised) and each step's useful tokens, counted by the collator."""

    def __init__(self, gpu: bool) -> None:
        self.gpu, self.ends, self.tokens = gpu, [], []  # type: ignore[var-annotated]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.gpu:
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def counting(collate: Any, timer: Timer) -> Any:
    def run(features: list[dict[str, Any]]) -> Any:
        timer.tokens.append(sum(len(f["input_ids"]) for f in features))
        return collate(features)

    return run


def main() -> None:
    work, kind = Path(sys.argv[1]), sys.argv[2]
    plan = json.loads((work / "bench.json").read_text())
    gpu = plan["gpu"]
    if not gpu:
        torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    dtype = torch.bfloat16 if gpu else torch.float32
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    timer = Timer(gpu)
    common = {
        "output_dir": str(work / f"{kind}-out"),
        "max_steps": plan["steps"],
        "learning_rate": plan["lr"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "max_grad_norm": 1.0,
        "logging_steps": 10_000,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": not gpu,
        "bf16": gpu,
        "seed": plan["seed"],
        "dataloader_num_workers": 0,
    }
    records = [r for _, r in reading.read_indexed(work / "train.jsonl", "train")[0]]
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=dtype, attn_implementation="sdpa")
    if kind == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(
            **common,
            per_device_train_batch_size=plan["micro"],
            max_length=plan["seq"],
            packing=True,
            packing_strategy="bfd",
            padding_free=True,
            completion_only_loss=True,
            dataset_num_proc=1,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer, peft_config=lora
        )
        trainer.data_collator = counting(trainer.data_collator, timer)
    else:
        spec = DatasetSpec.model_validate({"train": "./t.jsonl", "maxSeqLength": plan["seq"], "packing": False})
        train, _ = formats.tokenize(records, spec, tokenizer, "train")
        model = get_peft_model(model, lora)
        args = TrainingArguments(**common, per_device_train_batch_size=plan["hfBatch"])
        collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=batching.IGNORE)
        dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in train]
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=counting(collate, timer))
    trainer.add_callback(timer)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    warm = plan["warmup"]
    seconds = timer.ends[-1] - timer.ends[warm - 1]
    # the collator runs once per micro-batch; a step is gradient_accumulation (1 here) of them
    tokens = sum(timer.tokens[warm : len(timer.ends)])
    model = trainer.model
    model.eval()
    held = [r for _, r in reading.read_indexed(work / "val.jsonl", "val")[0]]
    spec = DatasetSpec.model_validate({"train": "./t.jsonl", "maxSeqLength": plan["seq"], "packing": False})
    samples, _ = formats.tokenize(held, spec, tokenizer, "val")
    rows = batching.rows(samples, plan["seq"], packing=False)
    device = next(model.parameters()).device
    sums = evaluate.eval_sums(
        lambda inputs: model(**inputs, use_cache=False).logits, evaluate.local_batches(rows, 4), tokenizer.pad_token_id, device
    )
    print(
        json.dumps(
            {
                "usefulTokensPerSecond": tokens / seconds,
                "steps": len(timer.ends),
                "evalLoss": evaluate.metrics(sums)["evalLoss"],
                "peakMemoryBytes": torch.cuda.max_memory_allocated() if gpu else None,
            }
        )
    )


if __name__ == "__main__":
    main()
