"""The DPO loss and its rewards as kubetune computes them (pairs packed into rows, one forward for chosen and
rejected, the reference from the same model with the adapter disabled) against the formulas written out here, each
sequence scored alone: the sigmoid loss of the DPO paper with label smoothing, IPO on per-token means, and RPO's
added chosen NLL, to 1e-5."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kubetune_api.dataset import DatasetSpec
from kubetune_api.method import DpoSpec
from kubetune_trainer.data import batching, formats, pairs, prepared
from kubetune_trainer.data.tokens import Rows
from kubetune_trainer.recipe import preference
from kubetune_trainer.tiny import byte_tokenizer, preference_records, tiny_llama


@pytest.fixture(scope="module")
def policy() -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    tokenizer = byte_tokenizer()
    model = get_peft_model(tiny_llama(tokenizer, seed=3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(5)
    with torch.no_grad():  # a trained-looking adapter: the policy differs from the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.double().eval(), tokenizer  # float64: the comparison measures the method, not float32 rounding


def logp_alone(model: Any, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Sum of log p(label) over the scored tokens of one sequence run alone, and how many."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
    logps = torch.log_softmax(logits, -1)
    total, count = 0.0, 0
    for t in range(1, len(ids)):
        if labels[t] != -100:
            total += float(logps[t - 1, labels[t]])
            count += 1
    return total, count


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


SETTINGS = [
    DpoSpec(beta=0.1),
    DpoSpec(beta=0.5, labelSmoothing=0.2),
    DpoSpec(beta=0.3, lossType="ipo"),
    DpoSpec(beta=0.1, rpoAlpha=0.7),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["sigmoid", "smoothed", "ipo", "rpo"])
def test_loss_and_rewards_equal_the_formulas(policy: Any, settings: DpoSpec) -> None:
    import torch

    model, tokenizer = policy
    records = preference_records(7, seed=11, fmt="preference-chat") + preference_records(5, seed=12, fmt="preference")
    spec = DatasetSpec(train="./p.jsonl", format="preference", maxSeqLength=64)
    table, _ = pairs.tokenize_pairs(records[7:], spec, tokenizer, "p")
    chat_table, _ = pairs.tokenize_pairs(records[:7], DatasetSpec(train="./p.jsonl", format="preference"), tokenizer, "p")
    samples = list(chat_table) + list(table)
    whole = formats.TokenTable.of(samples)
    members, offsets = prepared._pack(whole.lengths(), 256, True, True, 0, True)
    rows = Rows(whole, members, offsets)
    assert len(rows) < 12  # several pairs share a row
    batch = list(rows)
    inputs = batching.collate(batch, tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    with torch.no_grad():
        mine = preference.sequence_logps(model(**inputs, use_cache=False).logits, labels, inputs["position_ids"])
        with model.disable_adapter():
            theirs = preference.sequence_logps(model(**inputs, use_cache=False).logits, labels, inputs["position_ids"])
    losses, chosen_rewards, rejected_rewards = preference.dpo_losses(mine, theirs[:2], settings)
    # the same pairs, in the rows' order, each sequence alone
    order = [int(m) for r in range(len(rows)) for m in rows.members[rows.offsets[r] : rows.offsets[r + 1]]][0::2]
    assert len(order) == len(losses) == 12
    b = settings.beta
    for k, first in enumerate(order):
        c, r = samples[first], samples[first + 1]
        pc, nc = logp_alone(model, c.input_ids, c.labels)
        pr, nr = logp_alone(model, r.input_ids, r.labels)
        with model.disable_adapter():
            rc, _ = logp_alone(model, c.input_ids, c.labels)
            rr, _ = logp_alone(model, r.input_ids, r.labels)
        if settings.lossType == "ipo":
            h = (pc / nc - pr / nr) - (rc / nc - rr / nr)
            loss = (h - 1 / (2 * b)) ** 2
            want_chosen, want_rejected = b * (pc - rc) / nc, b * (pr - rr) / nr
        else:
            h = (pc - pr) - (rc - rr)
            e = settings.labelSmoothing
            loss = -logsigmoid(b * h) * (1 - e) - logsigmoid(-b * h) * e
            want_chosen, want_rejected = b * (pc - rc), b * (pr - rr)
        loss += settings.rpoAlpha * (-pc / nc)
        assert float(losses[k]) == pytest.approx(loss, abs=1e-5)
        assert float(chosen_rewards[k]) == pytest.approx(want_chosen, abs=1e-5)
        assert float(rejected_rewards[k]) == pytest.approx(want_rejected, abs=1e-5)
    sums = preference.pair_sums(losses, chosen_rewards, rejected_rewards, mine[2] + mine[3])
    said = preference.metrics(sums)
    assert said["evalPairs"] == 12 and said["evalLoss"] == pytest.approx(float(losses.mean()), abs=1e-6)
    wins = sum(float(c) > float(r) for c, r in zip(chosen_rewards, rejected_rewards, strict=True))
    assert said["preferenceAccuracy"] == pytest.approx(wins / 12, abs=1e-6)


def test_before_training_every_pair_is_a_tie(policy: Any) -> None:
    """A fresh adapter is the reference: every reward is 0, the loss log 2 and the accuracy one half."""
    import torch

    model, tokenizer = policy
    table, _ = pairs.tokenize_pairs(
        preference_records(6, seed=2), DatasetSpec(train="./p.jsonl", format="preference"), tokenizer, "p"
    )
    members, offsets = prepared._pack(table.lengths(), 2048, False, False, 0, True)
    inputs = batching.collate(list(Rows(table, members, offsets)), tokenizer.pad_token_id)
    labels = inputs.pop("labels")
    with torch.no_grad(), model.disable_adapter():
        same = preference.sequence_logps(model(**inputs, use_cache=False).logits, labels, inputs["position_ids"])
    said = preference.metrics(preference.pair_sums(*preference.dpo_losses(same, same[:2], DpoSpec()), same[2] + same[3]))
    assert said["preferenceAccuracy"] == 0.5 and said["rewardMargin"] == 0.0
    assert said["evalLoss"] == pytest.approx(math.log(2), abs=1e-6)
