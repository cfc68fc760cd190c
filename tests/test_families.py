"""Every family docs/trainer.md lists takes the default LoRA settings and learns: the adapter wraps its layers, only the
adapter trains, and a few steps lower the loss. Mixture-of-experts models (Mixtral, OLMoE, Qwen 2 MoE) train
with the defaults too: where peft's expert-parameter wrappers refuse dropout it is set to 0 and recorded, and
Mixtral's w1/w2/w3 (which peft maps onto the fused experts) are accepted target names."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from kubetune_api.lora import LoraSpec
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.model import add_lora, check_targets

from .model_helpers import COMMON, CONFIGS
from .model_helpers import tiny as packing_tiny

MOE = {
    "olmoe": ("OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2}),
}


def tiny(family: str) -> Any:
    if family in CONFIGS:
        return packing_tiny(family)
    name, extra = MOE[family]
    torch.manual_seed(0)
    config = getattr(transformers, name)(**{**COMMON, **extra})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def learns(model: Any) -> tuple[float, float]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses[0], losses[-1]


@pytest.mark.parametrize("family", sorted([*CONFIGS, *MOE]))
def test_each_family_trains_with_the_default_lora(family: str) -> None:
    model, adjusted = add_lora(tiny(family), LoraSpec(), seed=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names), names[:5]
    first, last = learns(model)
    assert last < first, f"{family}: loss {first:.4f} -> {last:.4f}"
    fused = bool(getattr(model.peft_config["default"], "target_parameters", None))
    assert bool(adjusted) == fused  # dropout is changed exactly where the experts are fused parameters
    if fused:
        assert adjusted["lora.dropout"]["asked"] == 0.05 and adjusted["lora.dropout"]["used"] == 0.0


def test_mixtral_expert_names_are_accepted_and_reach_the_experts() -> None:
    model, _ = add_lora(tiny("mixtral"), LoraSpec(targetModules=["q_proj", "w1", "w2", "w3"], dropout=0.0), seed=0)
    assert set(model.peft_config["default"].target_parameters) == {"gate_up_proj", "down_proj"}
    first, last = learns(model)
    assert last < first


def test_a_misspelt_expert_name_is_still_refused_with_the_names_that_exist() -> None:
    with pytest.raises(TrainerFailure) as caught:
        check_targets(tiny("mixtral"), LoraSpec(targetModules=["q_proj", "w4"]))
    assert caught.value.reason.value == "TargetModulesNotFound"
    assert "['w4']" in caught.value.message and "w1" in caught.value.message and "q_proj" in caught.value.message
