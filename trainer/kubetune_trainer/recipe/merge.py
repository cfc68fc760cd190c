"""output.merged: the base model's weights with the adapter folded in, written one shard at a time.

Each safetensors shard of the base model is read tensor by tensor, every adapted weight gets `scale * B @ A`
added (in float32, stored back in the shard's own dtype), and the shard is written and handed to `publish`
(which uploads it and may delete the local copy) before the next is read: peak memory is one shard plus the
adapter, never the whole model. The adapter on disk is the one the run wrote (gathered across ranks under ZeRO-3),
so the merge does not depend on how training was partitioned.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
PEFT_PREFIX = "base_model.model."


def weight_files(model_dir: Path) -> list[Path]:
    """The base model's safetensors shards; a model stored only as pickles cannot be merged (never unpickled)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in model_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
        raise TrainerFailure(
            Reason.CANNOT_MERGE,
            "output.merged needs the base model's weights as safetensors; "
            f"{'it has only ' + ', '.join(others[:5]) if others else 'none were found'}. "
            "Convert the model to safetensors or set output.merged: false",
        )
    return files


@dataclass(frozen=True)
class Delta:
    a: Any
    b: Any


@dataclass(frozen=True)
class Adapter:
    scale: float
    fan_in_fan_out: bool
    deltas: dict[str, Delta]  # module path (as in the base model) -> its LoRA pair
    replaced: dict[str, Any]  # full tensor names the adapter trained outright (biases with lora.bias)


def read_adapter(adapter_dir: Path) -> Adapter:
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("target_parameters"):
        raise TrainerFailure(
            Reason.CANNOT_MERGE,
            "output.merged cannot fold adapters on fused expert parameters "
            f"({', '.join(sorted(config['target_parameters']))}); target the attention layers only or set "
            "output.merged: false",
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise TrainerFailure(Reason.CANNOT_MERGE, "output.merged does not support per-module ranks or alphas")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, Any]] = {}
    replaced: dict[str, Any] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                pairs.setdefault(name.split(marker)[0], {})[part] = tensor
                break
        else:  # a trained bias of an adapted layer is stored under its wrapper's base_layer
            replaced[name.replace(".base_layer.", ".")] = tensor
    deltas = {}
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise TrainerFailure(Reason.CANNOT_MERGE, f"the adapter's {module} lacks one of lora_A, lora_B")
        deltas[module] = Delta(pair["lora_A"], pair["lora_B"])
    return Adapter(scale, bool(config.get("fan_in_fan_out")), deltas, replaced)


def _lookup(names: dict[str, Any], key: str) -> str | None:
    """The adapter entry for a base tensor: the same path, or one ending with it (checkpoints saved without the
    model's outer prefix, as GPT-2's are)."""
    if key in names:
        return key
    matches = [name for name in names if name.endswith("." + key) or key.endswith("." + name)]
    return matches[0] if len(matches) == 1 else None


def merge(
    model_dir: Path, adapter_dir: Path, target: Path, publish: Callable[[Path], None], extra: Callable[[Path], None]
) -> dict[str, Any]:
    """Write the merged model under `target` shard by shard; `extra(target)` adds files of its own (the tokenizer)
    once the base model's non-weight files are there. Returns what was written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    adapter = read_adapter(adapter_dir)
    shards = weight_files(model_dir)
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(model_dir.iterdir()):  # config, generation config, tokenizer, the shard index
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and not item.name.startswith("."):
            shutil.copyfile(item, target / item.name)
    extra(target)
    for item in sorted(target.iterdir()):
        publish(item)
    merged: set[str] = set()
    replaced: set[str] = set()
    written, largest = 0, 0
    for shard in shards:
        out: dict[str, Any] = {}
        with safe_open(str(shard), framework="pt") as reader:
            metadata = reader.metadata() or {}
            for key in reader.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = reader.get_tensor(key)
                module = _lookup(adapter.deltas, key.removesuffix(".weight")) if key.endswith(".weight") else None
                whole = _lookup(adapter.replaced, key)
                if module is not None:
                    delta = adapter.deltas[module]
                    update = (delta.b.float() @ delta.a.float()) * adapter.scale
                    if adapter.fan_in_fan_out:
                        update = update.T
                    if update.shape != tensor.shape:
                        raise TrainerFailure(
                            Reason.CANNOT_MERGE,
                            f"the adapter's {module} has shape {tuple(update.shape)}, the base weight {key} "
                            f"{tuple(tensor.shape)}",
                        )
                    tensor = (tensor.float() + update).to(tensor.dtype)
                    merged.add(module)
                elif whole is not None:
                    tensor = adapter.replaced[whole].to(tensor.dtype)
                    replaced.add(whole)
                out[key] = tensor.contiguous()
        size = sum(t.numel() * t.element_size() for t in out.values())
        largest, written = max(largest, size), written + size
        path = target / shard.name
        save_file(out, str(path), metadata={**metadata, "format": "pt"})
        del out
        publish(path)
    missing = sorted(set(adapter.deltas) - merged) + sorted(set(adapter.replaced) - replaced)
    if missing:
        raise TrainerFailure(
            Reason.CANNOT_MERGE,
            f"{len(missing)} adapter layers have no weight in the base model's safetensors files "
            f"(first: {missing[0]}); the merged model was not finished",
        )
    return {"shards": len(shards), "bytes": written, "largestShardBytes": largest, "mergedLayers": len(merged)}
