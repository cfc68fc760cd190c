"""output.merged, offline: the merge folds a real peft adapter into the base weights one shard at a time, with the
logits of base + adapter, for a Linear model (Llama) and a Conv1D one (GPT-2, fan_in_fan_out); what cannot be
merged is refused with CannotMerge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_api.lora import LoraSpec
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.model import add_lora
from kubetune_trainer.recipe.merge import merge, read_adapter

from .model_helpers import tiny


def trained_adapter(family: str, tmp: Path, **lora: Any) -> tuple[Path, Path, Any]:
    """A base model saved in several shards, and an adapter whose B matrices are not zero (as after training)."""
    base = tiny(family)
    base_dir = tmp / "base"
    base.save_pretrained(base_dir, max_shard_size="40KB")
    model, _ = add_lora(tiny(family), LoraSpec(r=4, alpha=8, dropout=0.0, **lora), seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or (lora.get("bias") == "all" and name.endswith(".bias")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    adapter_dir = tmp / "adapter"
    model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir, model.eval()


def merged_logits(base_dir: Path, adapter_dir: Path, tmp: Path) -> tuple[Any, dict[str, Any], list[str]]:
    from transformers import AutoModelForCausalLM

    published: list[str] = []
    target = tmp / "merged"
    written = merge(base_dir, adapter_dir, target, lambda p: published.append(p.name), lambda d: None)
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])
    with torch.no_grad():
        return model(input_ids=ids).logits, written, published


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_merged_model_gives_the_logits_of_base_plus_adapter(family: str, tmp_path: Path) -> None:
    base_dir, adapter_dir, peft_model = trained_adapter(family, tmp_path)
    got, written, published = merged_logits(base_dir, adapter_dir, tmp_path)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3  # the adapter changes the model: the comparison below can fail
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), f"max difference {(got - want).abs().max():.3g}"
    shards = sorted(p.name for p in base_dir.glob("*.safetensors"))
    assert len(shards) > 1 and written["shards"] == len(shards)
    assert written["largestShardBytes"] < written["bytes"]  # one shard at a time, never the whole model
    assert set(shards) <= set(published) and "config.json" in published and "model.safetensors.index.json" in published
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert index == json.loads((base_dir / "model.safetensors.index.json").read_text())


def test_trained_biases_replace_the_base_ones(tmp_path: Path) -> None:
    base_dir, adapter_dir, peft_model = trained_adapter("gpt2", tmp_path, bias="all")
    assert read_adapter(adapter_dir).replaced  # the adapter holds trained biases
    got, _, _ = merged_logits(base_dir, adapter_dir, tmp_path)
    with torch.no_grad():
        want = peft_model(input_ids=torch.tensor([[5, 17, 42, 99, 7, 3, 250]])).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_a_base_model_without_safetensors_cannot_be_merged(tmp_path: Path) -> None:
    base_dir, adapter_dir, _ = trained_adapter("llama", tmp_path)
    for shard in base_dir.glob("*.safetensors"):
        shard.rename(shard.with_suffix(".bin"))
    with pytest.raises(TrainerFailure) as caught:
        merge(base_dir, adapter_dir, tmp_path / "merged", lambda p: None, lambda d: None)
    assert caught.value.reason.value == "CannotMerge"
    assert "needs the base model's weights as safetensors" in caught.value.message


def test_an_adapter_on_another_model_is_refused_not_half_merged(tmp_path: Path) -> None:
    _, adapter_dir, _ = trained_adapter("llama", tmp_path / "a")
    other = tmp_path / "other"
    tiny("gpt2").save_pretrained(other)
    with pytest.raises(TrainerFailure) as caught:
        merge(other, adapter_dir, tmp_path / "merged", lambda p: None, lambda d: None)
    assert caught.value.reason.value == "CannotMerge" and "have no weight in the base model" in caught.value.message
