"""What users' own inputs meet, said plainly (issue 40): a dataset too small to split, a model path that names
nothing, LoRA targets a model does not have. Fast: no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_api.validate import validate_object
from kubetune_trainer.data import prepared
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.tiny import byte_tokenizer

from .conftest import job


def test_a_one_record_dataset_says_the_split_took_it(tmp_path: Path) -> None:
    train = tmp_path / "one.jsonl"
    train.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    spec = validate_object(job(**{"spec.dataset": {"train": str(train)}})).job
    assert spec is not None
    with pytest.raises(TrainerFailure) as raised:
        prepared.tokenize_sets(spec.spec, byte_tokenizer(), train, None, tmp_path / "staging")
    message = raised.value.message
    assert raised.value.reason == "EmptyDataset" and "one.jsonl has 1" in message, message
    assert "held-out split (dataset.validationSplit 0.05" in message and "dataset.validation" in message, message


def test_a_bare_relative_path_that_names_nothing_fails_in_seconds_and_suggests_the_folder() -> None:
    from kubetune_api.model import ModelSpec
    from kubetune_trainer.model import check_hub_model

    with pytest.raises(TrainerFailure) as raised:
        check_hub_model(ModelSpec(uri="models/nope"))
    assert raised.value.reason == "ModelMissing" and "write ./models/nope for a local folder" in raised.value.message


def test_mixtrals_fused_experts_named_as_targets_say_which_layers_and_how_to_reach_the_experts() -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    from kubetune_api.lora import LoraSpec
    from kubetune_trainer.model import add_lora

    config = MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=2,
        num_experts_per_tok=1,
    )
    model = MixtralForCausalLM(config)
    with pytest.raises(TrainerFailure) as raised:
        add_lora(model, LoraSpec(r=4, alpha=8, targetModules=["gate_up_proj", "down_proj"]), seed=0)
    message = raised.value.message
    assert raised.value.reason == "TargetModulesNotFound", message
    assert "its linear layers are: k_proj, lm_head, o_proj, q_proj, v_proj" in message, message
    assert "experts are fused parameters (down_proj, gate_up_proj), not layers: target them with w1, w2, w3" in message
    wrapped, _ = add_lora(MixtralForCausalLM(config), LoraSpec(r=4, alpha=8, targetModules=["w1", "w2", "w3"]), seed=0)
    assert any("lora" in name for name, _ in wrapped.named_parameters())  # the way the message gives works
