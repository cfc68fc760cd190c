"""Held-out evaluation: token-weighted loss, perplexity and next-token accuracy, summed across ranks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubetune_trainer.data.batching import IGNORE, Row, collate


def token_loss(logits: Any, labels: Any) -> tuple[Any, Any, Any]:
    """Sum of next-token NLL, number of scored tokens, and number predicted right (labels shifted by one)."""
    import torch

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    correct = ((shift_logits.argmax(-1) == shift_labels) & mask).sum()
    return nll, mask.sum(), correct


def train_loss(logits: Any, labels: Any) -> Any:
    """Mean next-token NLL over the scored tokens: the training objective (no accuracy bookkeeping)."""
    import torch

    return torch.nn.functional.cross_entropy(
        logits[:, :-1, :].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def chunked_train_loss(hidden: Any, head: Any, labels: Any, chunk: int) -> Any:
    """train_loss from the final hidden states, `chunk` tokens at a time: each chunk's logits are made by the
    output layer, scored in float32 and dropped, then made again in the backward pass (activation checkpointing), so
    no more than one chunk's logits exist at once. The same mean over the scored tokens as train_loss."""
    import torch
    from torch.utils.checkpoint import checkpoint

    h = hidden[:, :-1, :].reshape(-1, hidden.size(-1))
    y = labels[:, 1:].reshape(-1)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, y.numel(), chunk):
        total = total + checkpoint(_nll_sum, head, h[start : start + chunk], y[start : start + chunk], use_reentrant=False)
    return total / (y != IGNORE).sum()


def _nll_sum(head: Any, hidden: Any, labels: Any) -> Any:
    import torch

    return torch.nn.functional.cross_entropy(head(hidden).float(), labels, ignore_index=IGNORE, reduction="sum")


def local_batches(rows: Sequence[Row], micro: int, count: int | None = None) -> list[list[Row]]:
    """This rank's eval batches from its own rows, padded with rows that score nothing to the `count` every rank
    agreed on (under ZeRO-3 every rank must run the same number of forwards); by default as many as the rows need."""
    count = math.ceil(len(rows) / micro) if count is None else count
    dummy = Row([0, 0], [IGNORE, IGNORE], [0, 1])  # scores nothing
    padded = [*rows, *[dummy] * (count * micro - len(rows))]
    return [padded[i : i + micro] for i in range(0, count * micro, micro)]


def eval_sums(forward: Callable[[dict[str, Any]], Any], batches: Iterable[list[Row]], pad_id: int, device: Any) -> list[float]:
    """[nll sum, tokens, correct] over batches with a model forward function (no gradients)."""
    import torch

    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            labels = inputs.pop("labels")
            logits = forward(inputs)
            nll, count, correct = token_loss(logits, labels)
            totals += torch.stack([nll.double().cpu(), count.double().cpu(), correct.double().cpu()])
    return [float(x) for x in totals]


def metrics(sums: list[float]) -> dict[str, float]:
    nll, count, correct = sums
    if count == 0:
        return {"evalLoss": float("nan"), "perplexity": float("nan"), "tokenAccuracy": float("nan"), "evalTokens": 0}
    loss = nll / count
    return {
        "evalLoss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "tokenAccuracy": round(correct / count, 6),
        "evalTokens": int(count),
    }
