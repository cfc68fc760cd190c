"""Per-rank parameter and optimizer-state bytes after one step, for a DeepSpeed ZeRO stage (0 = plain data parallel).

Run by trainer_bench.py under torchrun with two processes: `python -m torch.distributed.run --nproc-per-node 2
bench/memory_probe.py MODEL_DIR STAGE`; rank 0 prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def tensor_bytes(value: Any, seen: set[int]) -> int:
    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            return 0
        seen.add(id(value))
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    return 0


def main() -> None:
    model_dir, stage = sys.argv[1], int(sys.argv[2])
    deepspeed.init_distributed(dist_backend="gloo")
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 2 * dist.get_world_size(),
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        "zero_force_ds_cpu_optimizer": False,
    }
    if stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(config)  # noqa: F841  (partitions weights while loading)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config
    )
    ids = torch.randint(0, 200, (2, 64))
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    params = 0
    for p in engine.module.parameters():
        local = getattr(p, "ds_tensor", None)
        params += (local.numel() * local.element_size()) if local is not None else p.numel() * p.element_size()
    seen: set[int] = set()
    inner = getattr(optimizer, "optimizer", optimizer)
    state = tensor_bytes(dict(inner.state), seen)
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):
        state += tensor_bytes(getattr(optimizer, name, []), seen)
    totals = torch.tensor([params, state], dtype=torch.float64)
    per_rank = [torch.zeros_like(totals) for _ in range(dist.get_world_size())]
    dist.all_gather(per_rank, totals)
    if dist.get_rank() == 0:
        print(json.dumps({"stage": stage, "perRank": [[int(x) for x in t] for t in per_rank]}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
