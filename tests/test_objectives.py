"""The trainer's methods as objectives (kubetune_trainer.recipe.objectives), on a tiny model in this process: no
DeepSpeed, no second process. What a whole run shows (tests/test_trainer.py, tests/test_dpo.py) is not repeated."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune_api.method import DpoSpec
from kubetune_trainer.data.batching import IGNORE, Row, collate
from kubetune_trainer.recipe import evaluate, objectives
from kubetune_trainer.tiny import byte_tokenizer, tiny_llama


class Engine:
    """What the objectives call of DeepSpeed's engine: the module, and calling it."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, **inputs: Any) -> Any:
        return self.module(**inputs)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-process gloo group: the evaluations add their sums across ranks."""
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def model(random_adapter: bool) -> tuple[Any, objectives.Model]:
    import torch
    from peft import LoraConfig, get_peft_model

    tokenizer = byte_tokenizer()
    base = tiny_llama(tokenizer, hidden=32, layers=1, heads=2)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_adapter)
    peft = get_peft_model(base, lora)
    return tokenizer, objectives.Model(Engine(peft), torch.device("cpu"), varlen=False)


def row(tokenizer: Any, prompt: str, reply: str, start: int = 0) -> tuple[list[int], list[int], list[int]]:
    p, r = tokenizer(prompt)["input_ids"], tokenizer(reply, add_special_tokens=False)["input_ids"]
    return p + r, [IGNORE] * len(p) + r, list(range(len(p) + len(r)))


def test_sft_chunked_and_whole_losses_agree_and_the_base_is_the_adapter_disabled(group: None) -> None:
    import torch

    tokenizer, m = model(random_adapter=True)
    rows = [Row(*row(tokenizer, "2+2=", " 4")), Row(*row(tokenizer, "capital of France:", " Paris"))]
    inputs = collate(rows, tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    whole = objectives.objective(None, m, chunk=0)
    chunked = objectives.objective(None, m, chunk=3)
    assert isinstance(whole, objectives.SFT)
    expected = evaluate.train_loss(m.engine.module(**inputs).logits, labels)
    assert torch.allclose(whole.loss(inputs, labels), expected) and torch.allclose(
        chunked.loss(inputs, labels), expected, atol=1e-5
    )
    with_adapter = whole.evaluate([rows], tokenizer.pad_token_id, adapter=True)
    without = whole.evaluate([rows], tokenizer.pad_token_id, adapter=False)
    with m.engine.module.disable_adapter():
        nll, count, _ = evaluate.token_loss(m.engine.module(**collate(rows, tokenizer.pad_token_id)).logits, labels)
    assert without["evalLoss"] == pytest.approx(float(nll / count), abs=1e-6) and without["evalTokens"] == int(count)
    assert with_adapter["evalLoss"] != without["evalLoss"]  # a non-zero adapter changes the held-out loss


def test_dpo_starts_at_log_2_against_its_reference_and_prefers_nothing_yet(group: None) -> None:
    """The policy starts as its reference (LoRA's B is zero), so every pair's margin is 0: the sigmoid loss is
    ln 2 and the rewards 0, whatever the pairs say."""
    tokenizer, m = model(random_adapter=False)
    chosen, rejected = row(tokenizer, "2+2=", " 4"), row(tokenizer, "2+2=", " 5")
    pair = Row(*(a + b for a, b in zip(chosen, rejected, strict=True)))  # one row: chosen, then rejected, positions restarting
    inputs = collate([pair], tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    dpo = objectives.objective(DpoSpec(), m, chunk=0)
    assert isinstance(dpo, objectives.DPO)
    assert float(dpo.loss(inputs, labels).detach()) == pytest.approx(math.log(2), abs=1e-6)
    held_out = dpo.evaluate([[pair]], tokenizer.pad_token_id, adapter=True)
    assert held_out["evalLoss"] == pytest.approx(math.log(2), abs=1e-6) and held_out["evalPairs"] == 1
    assert held_out["rewardMargin"] == pytest.approx(0.0, abs=1e-6)
