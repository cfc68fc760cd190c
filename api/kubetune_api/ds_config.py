"""The DeepSpeed JSON derived from a spec: pure, so the operator renders it into the ConfigMap, `kubetune render` shows
it, and the trainer runs it. The trainer derives it with what only the running job knows (the world that started, whether
the GPU has bfloat16, the adapter's size); with the spec's world on a bfloat16 GPU it is what the ConfigMap shows, bar
the reduce bucket, which is at most the rendered size (memory.bucket_elements). manifest.json records what ran."""

from __future__ import annotations

from typing import Any

from .job import FineTuneJobSpec
from .memory import BUCKET, bucket_elements


def deepspeed_config(
    spec: FineTuneJobSpec,
    world_size: int | None = None,
    on_gpu: bool | None = None,
    *,
    bf16: bool = True,
    trainable: int | None = None,
) -> dict[str, Any]:
    """DeepSpeed config for `world_size` processes (default: the spec's) on GPUs or CPUs (default: from the spec);
    `bf16`: whether the GPU has bfloat16 (without it, dtype auto and bfloat16 train in float16 with loss scaling);
    `trainable`: the adapter's parameter count, which sizes the reduce bucket."""
    world = spec.workers.world_size if world_size is None else world_size
    gpu = spec.workers.gpusPerWorker > 0 if on_gpu is None else on_gpu
    t, ds = spec.training, spec.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.zeroStage,
        "overlap_comm": gpu,
        "contiguous_gradients": True,
        # DeepSpeed allocates its gradient buckets at full size: sized to the adapter, a LoRA run keeps the difference
        "reduce_bucket_size": BUCKET if trainable is None else bucket_elements(trainable),
    }
    if ds.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if ds.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    if ds.zeroStage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.microBatchSize,
        "gradient_accumulation_steps": t.gradientAccumulationSteps,
        "train_batch_size": t.microBatchSize * t.gradientAccumulationSteps * world,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW everywhere: DeepSpeed's fused and CPU Adam kernels are compiled at run time (a compiler in
            # the image, a minute at start-up), and a LoRA adapter's optimizer step is a sliver of the step's time
            "params": {
                "lr": t.learningRate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weightDecay,
                "torch_adam": True,
            },
        },
        "steps_per_print": 1_000_000_000,  # progress is reported by kubetune, not DeepSpeed
        "wall_clock_breakdown": False,
    }
    config["zero_force_ds_cpu_optimizer"] = False  # with offload too: torch's AdamW on the host's copy
    if t.maxGradNorm > 0:
        config["gradient_clipping"] = t.maxGradNorm
    dtype = spec.model.dtype
    if gpu and dtype in ("auto", "bfloat16") and bf16:
        config["bf16"] = {"enabled": True}
    elif gpu and dtype in ("auto", "bfloat16", "float16"):
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config
