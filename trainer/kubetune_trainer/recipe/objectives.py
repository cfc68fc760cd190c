"""What a method trains and how it is judged: the objective. SFT (next-token loss, held-out loss, perplexity and
token accuracy) and DPO (the preference loss against a frozen reference, held-out preference metrics) are each a
loss over one micro-batch and an evaluation over the held-out batches; the recipe (train.py) runs either the same
way, so the next method is a new class here, not new branches there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubetune_api.method import DpoSpec
from kubetune_trainer import adapters, attention
from kubetune_trainer.data import batching
from kubetune_trainer.recipe import evaluate, preference
from kubetune_trainer.recipe.rank import all_sum


@dataclass(frozen=True)
class Model:
    """The engine as the objectives call it: a forward pass that gives logits (the bounds of packed samples
    computed where a batch comes without them), and the device its tensors go to."""

    engine: Any
    device: Any
    varlen: bool  # the attention kernel that takes the samples' bounds (attention.VARLEN)

    def forward(self, inputs: dict[str, Any]) -> Any:
        if self.varlen and "cu_seq_lens_q" not in inputs:  # an evaluation's batch: its positions read back once
            inputs = {**inputs, **attention.bounds(inputs["position_ids"], self.device)}
        return self.engine(**inputs, use_cache=False).logits


class Objective(Protocol):
    """A method: the loss a step minimises, and the held-out metrics of the adapter (or of where it started)."""

    def loss(self, inputs: dict[str, Any], labels: Any) -> Any: ...

    def evaluate(self, batches: list[list[batching.Row]], pad_id: int, adapter: bool) -> dict[str, float]: ...


class SFT:
    """Next-token cross-entropy on the scored tokens; with training.chunkedLoss (`chunk` tokens, 0: off) the logits
    are made a chunk at a time from the final hidden states and never all at once."""

    def __init__(self, model: Model, chunk: int) -> None:
        import torch

        self.model, self.chunk = model, chunk
        self.no_logits = torch.zeros(0, dtype=torch.long, device=model.device)  # logits_to_keep: none

    def loss(self, inputs: dict[str, Any], labels: Any) -> Any:
        if not self.chunk:
            return evaluate.train_loss(self.model.forward(inputs), labels)
        engine = self.model.engine
        out = engine(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=self.no_logits)
        return evaluate.chunked_train_loss(out.hidden_states[-1], engine.module.get_output_embeddings(), labels, self.chunk)

    def evaluate(self, batches: list[list[batching.Row]], pad_id: int, adapter: bool) -> dict[str, float]:
        """Held-out loss, perplexity and token accuracy, with the adapter or without it (the base model)."""
        module = self.model.engine.module
        with contextlib.nullcontext() if adapter else module.disable_adapter():
            sums = evaluate.eval_sums(self.model.forward, batches, pad_id, self.model.device)
        return evaluate.metrics(all_sum(self.model.device, sums))


class DPO:
    """The DPO family's loss (preference.score) of the policy against its reference: the frozen starting adapter
    when the job continues one (model.adapter), else the base model (the adapter disabled)."""

    def __init__(self, model: Model, settings: DpoSpec) -> None:
        self.model, self.settings = model, settings

    def reference(self) -> Any:
        module = self.model.engine.module
        if adapters.REFERENCE in module.peft_config:
            return adapters.active(module, adapters.REFERENCE)
        return module.disable_adapter()

    def reference_forward(self, inputs: dict[str, Any]) -> Any:
        with self.reference():
            return self.model.forward(inputs)

    def loss(self, inputs: dict[str, Any], labels: Any) -> Any:
        """The micro-batch's mean loss (the reference's forward first, without gradients)."""
        losses, _, _, _ = preference.score(self.model.forward, self.reference_forward, inputs, labels, self.settings)
        return losses.mean()

    def evaluate(self, batches: list[list[batching.Row]], pad_id: int, adapter: bool) -> dict[str, float]:
        """The policy's preference metrics against the reference, whatever `adapter` says: before training the
        policy is where it starts."""
        forward: Callable[[dict[str, Any]], Any] = self.model.forward
        sums = preference.eval_sums(forward, self.reference_forward, batches, pad_id, self.model.device, self.settings)
        return preference.metrics(all_sum(self.model.device, sums))


def objective(settings: DpoSpec | None, model: Model, chunk: int) -> Objective:
    """The job's method: DPO with its settings (method.dpo), else SFT."""
    return DPO(model, settings) if settings is not None else SFT(model, chunk)
