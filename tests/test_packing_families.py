"""Packing isolation per model family, against the pinned transformers: for every family kubetune packs, a packed
sample's logits equal the sample's alone (positions restart per sample); for a family that cannot keep packed
samples apart (OPT) the logits differ, and the trainer turns packing off for it. Tiny models from config."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.model import PACKING_FAMILIES

from .model_helpers import CONFIGS, tiny


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_packing_is_used_exactly_where_it_isolates(family: str) -> None:
    model = tiny(family)
    assert model.config.model_type == family
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randint(1, 300, (1, 7), generator=generator), torch.randint(1, 300, (1, 9), generator=generator)
    with torch.no_grad():
        alone = model(input_ids=b, use_cache=False).logits
        positions = torch.cat([torch.arange(7), torch.arange(9)])[None]
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits[:, 7:]
    isolated = torch.allclose(packed, alone, atol=1e-5, rtol=1e-4)
    assert isolated == (family in PACKING_FAMILIES), f"{family}: max difference {(packed - alone).abs().max():.3g}"


def test_every_packing_family_is_checked() -> None:
    assert set(PACKING_FAMILIES) <= set(CONFIGS)


def test_a_refused_attention_kernel_falls_back_to_eager_and_says_so(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from kubetune_api.model import ModelSpec
    from kubetune_trainer.model import load_model

    tiny("gemma2").save_pretrained(tmp_path / "gemma2")
    model = load_model(str(tmp_path / "gemma2"), ModelSpec(uri="./gemma2", attnImplementation="sdpa"), device=torch.device("cpu"))
    assert model.config._attn_implementation == "eager"
    assert "model.attnImplementation sdpa cannot load this model here" in capsys.readouterr().out


def test_targets_that_match_nothing_list_the_real_layers_even_for_conv1d_models() -> None:
    from kubetune_api.lora import LoraSpec
    from kubetune_trainer.errors import TrainerFailure
    from kubetune_trainer.model import check_targets

    with pytest.raises(TrainerFailure) as caught:
        check_targets(tiny("gpt2"), LoraSpec(targetModules=["q_proj"]))
    assert "c_attn" in caught.value.message and "c_fc" in caught.value.message  # GPT-2's Conv1D layers


def test_a_model_path_without_dot_slash_says_it_was_read_as_a_hub_id() -> None:
    from kubetune_api.model import ModelSpec
    from kubetune_trainer.errors import TrainerFailure
    from kubetune_trainer.model import load_tokenizer

    with pytest.raises(TrainerFailure) as caught:
        load_tokenizer("models/nowhere", ModelSpec(uri="models/nowhere"))
    assert "read as a hub id since it is not a directory here; write ./models/nowhere for a local folder" in caught.value.message


def test_a_kernel_this_machine_lacks_falls_back_to_sdpa_not_to_model_missing(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from kubetune_api.model import ModelSpec
    from kubetune_trainer.model import load_model

    tiny("llama").save_pretrained(tmp_path / "llama")
    model = load_model(
        str(tmp_path / "llama"), ModelSpec(uri="./llama", attnImplementation="flash_attention_2"), device=torch.device("cpu")
    )
    assert model.config._attn_implementation == "sdpa"  # flash-attn is not installed here
    assert "model.attnImplementation flash_attention_2 cannot load this model here" in capsys.readouterr().out
