"""The plain baseline a user would write: transformers Trainer + peft LoRA, padding to the longest sample, one process.

Run by trainer_bench.py: `python bench/baseline_trainer.py WORKDIR EPOCHS LR BATCH [gpu]` prints one JSON line
(gpu: bf16 on the first GPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from kubetune_api.dataset import DatasetSpec
from kubetune_trainer.data import batching, formats, reading
from kubetune_trainer.recipe import evaluate


def main() -> None:
    work, epochs, lr, batch = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    gpu = sys.argv[5:] == ["gpu"]
    if not gpu:
        torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    spec = DatasetSpec.model_validate({"train": "./t.jsonl", "maxSeqLength": 256, "packing": False})
    train, _ = formats.tokenize([r for _, r in reading.read_indexed(work / "train.jsonl", "train")[0]], spec, tokenizer, "train")
    held, _ = formats.tokenize([r for _, r in reading.read_indexed(work / "val.jsonl", "val")[0]], spec, tokenizer, "val")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16 if gpu else torch.float32)
    seed = int(os.environ.get("BENCH_SEED", "42"))  # the same as kubetune's training.seed in the same comparison
    torch.manual_seed(seed)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in train]  # any sized, indexable dataset will do
    args = TrainingArguments(
        output_dir=str(work / "baseline-out"),
        per_device_train_batch_size=batch,
        num_train_epochs=epochs,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a fraction of the steps, as kubetune's warmupRatio
        max_grad_norm=1.0,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=gpu,
        seed=seed,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=batching.IGNORE)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    started = time.monotonic()
    result = trainer.train()
    wall = time.monotonic() - started
    useful = sum(len(s.input_ids) for s in train) * epochs
    model.eval()
    rows = batching.rows(held, 256, packing=False)
    sums = evaluate.eval_sums(
        lambda inputs: model(**inputs, use_cache=False).logits,
        evaluate.local_batches(rows, 8),
        tokenizer.pad_token_id,
        model.device,
    )
    print(
        json.dumps(
            {
                "trainSeconds": result.metrics["train_runtime"],
                "wallSeconds": wall,
                "usefulTokensPerSecond": useful / result.metrics["train_runtime"],
                "steps": result.global_step,
                "evalLoss": evaluate.metrics(sums)["evalLoss"],
            }
        )
    )


if __name__ == "__main__":
    main()
