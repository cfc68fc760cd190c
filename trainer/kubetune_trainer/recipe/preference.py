"""DPO on rows of preference pairs (pairs.py): each row holds whole pairs, chosen then rejected, each sequence's
positions restarting at 0, so one forward pass scores both sides and the model's attention keeps them apart (the
packing families). A sequence's log-probability is the sum over its response tokens; the reference's comes from the
same model with the adapter disabled, or switched to the frozen starting adapter (model.adapter): no second copy
of the model. The losses are the DPO paper's (sigmoid, with optional label smoothing), IPO's, and RPO's added
term, as TRL computes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubetune_api.method import DpoSpec
from kubetune_trainer.data.batching import IGNORE, Row, collate

# the sums an evaluation adds up across ranks, in this order
SUMS = ("loss", "pairs", "correct", "margin", "chosen", "rejected", "tokens")


def sequence_logps(logits: Any, labels: Any, positions: Any) -> tuple[Any, Any, Any, Any]:
    """Each pair's (chosen, rejected) summed response log-probabilities and response token counts, pairs in row
    order. A row's sequences are numbered by their restarting positions; even ones are chosen, odd ones rejected;
    trailing padding is a sequence with no scored token and counts as no pair."""
    import torch

    width = logits.size(1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-probabilities in at least float32
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1, :].reshape(-1, logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(labels.size(0), width - 1)
    scored = (labels[:, 1:] != IGNORE).to(nll.dtype)
    sequence = (torch.cumsum((positions == 0).long(), dim=1) - 1)[:, 1:]  # of each predicted token
    count = int(sequence.max()) + 2 if sequence.numel() else 2
    count += count % 2
    sums = torch.zeros(labels.size(0), count, dtype=nll.dtype, device=nll.device).scatter_add(1, sequence, -nll * scored)
    tokens = torch.zeros_like(sums).scatter_add(1, sequence, scored)
    real = tokens[:, 0::2] > 0  # a pair is there when its chosen side scores something
    return sums[:, 0::2][real], sums[:, 1::2][real], tokens[:, 0::2][real], tokens[:, 1::2][real]


def dpo_losses(policy: tuple[Any, Any, Any, Any], reference: tuple[Any, Any], settings: DpoSpec) -> tuple[Any, Any, Any]:
    """Per pair: the loss, the chosen and the rejected implicit rewards (beta x log-ratio against the reference).
    IPO compares per-token mean log-probabilities (as TRL does); RPO adds rpoAlpha x the chosen mean token NLL."""
    from torch.nn.functional import logsigmoid

    chosen, rejected, chosen_tokens, rejected_tokens = policy
    ref_chosen, ref_rejected = reference
    beta = settings.beta
    if settings.lossType == "ipo":
        chosen, rejected = chosen / chosen_tokens, rejected / rejected_tokens
        ref_chosen, ref_rejected = ref_chosen / chosen_tokens, ref_rejected / rejected_tokens
    margin = (chosen - rejected) - (ref_chosen - ref_rejected)
    if settings.lossType == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        smoothing = settings.labelSmoothing
        losses = -logsigmoid(beta * margin) * (1 - smoothing) - logsigmoid(-beta * margin) * smoothing
    if settings.rpoAlpha:
        losses = losses + settings.rpoAlpha * (-policy[0] / chosen_tokens)
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def score(
    policy: Callable[[dict[str, Any]], Any],
    reference: Callable[[dict[str, Any]], Any],
    inputs: dict[str, Any],
    labels: Any,
    settings: DpoSpec,
) -> tuple[Any, Any, Any, Any]:
    """One micro-batch of pairs: each pair's loss, chosen and rejected rewards, and the batch's response tokens. The
    reference goes first, without gradients, and its logits are freed before the policy's forward."""
    import torch

    with torch.no_grad():
        theirs = sequence_logps(reference(inputs), labels, inputs["position_ids"])
    mine = sequence_logps(policy(inputs), labels, inputs["position_ids"])
    losses, chosen, rejected = dpo_losses(mine, theirs[:2], settings)
    return losses, chosen, rejected, mine[2] + mine[3]


def pair_sums(losses: Any, chosen_rewards: Any, rejected_rewards: Any, tokens: Any) -> list[float]:
    """SUMS of one batch: a tie (equal rewards, as before any training) counts as half right."""
    import torch

    correct = (chosen_rewards > rejected_rewards).double().sum() + 0.5 * (chosen_rewards == rejected_rewards).double().sum()
    margin = (chosen_rewards - rejected_rewards).double().sum()
    values = [
        losses.double().sum(),
        float(len(losses)),
        correct,
        margin,
        chosen_rewards.double().sum(),
        rejected_rewards.double().sum(),
        tokens.double().sum(),
    ]
    return [float(v.detach().cpu()) if isinstance(v, torch.Tensor) else float(v) for v in values]


def eval_sums(
    policy: Callable[[dict[str, Any]], Any],
    reference: Callable[[dict[str, Any]], Any],
    batches: Iterable[Sequence[Row]],
    pad_id: int,
    device: Any,
    settings: DpoSpec,
) -> list[float]:
    """SUMS over this rank's held-out batches (no gradients)."""
    import torch

    totals = [0.0] * len(SUMS)
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            labels = inputs.pop("labels")
            sums = pair_sums(*score(policy, reference, inputs, labels, settings))
            totals = [a + b for a, b in zip(totals, sums, strict=True)]
    return totals


def metrics(sums: list[float]) -> dict[str, float]:
    """The held-out preference metrics from SUMS added up over every rank (evalLoss: the DPO loss)."""
    got = dict(zip(SUMS, sums, strict=True))
    pairs = got["pairs"]
    if not pairs:
        nan = float("nan")
        return {"evalLoss": nan, "preferenceAccuracy": nan, "rewardMargin": nan, "evalPairs": 0, "evalTokens": 0}
    return {
        "evalLoss": round(got["loss"] / pairs, 6),
        "preferenceAccuracy": round(got["correct"] / pairs, 6),
        "rewardMargin": round(got["margin"] / pairs, 6),
        "chosenReward": round(got["chosen"] / pairs, 6),
        "rejectedReward": round(got["rejected"] / pairs, 6),
        "evalPairs": int(pairs),
        "evalTokens": int(got["tokens"]),
    }
