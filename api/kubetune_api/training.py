"""spec.training: optimisation, schedule, evaluation and checkpoint cadence."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from ._base import Rule, Section


class EarlyStopping(Section):
    """Stop when the held-out loss has not improved for a while (checked at every evaluation)."""

    patience: StrictInt = Field(3, ge=1, le=1000, description="Evaluations in a row without improvement before stopping.")
    minDelta: StrictFloat = Field(0.0, ge=0, le=100, description="Smallest drop of held-out loss that counts as an improvement.")


class TrainingSpec(Section):
    """How long and how the adapter is optimised, and how often it is evaluated and checkpointed."""

    epochs: StrictInt = Field(1, ge=1, le=1000, description="Passes over the training data, 1 to 1000. maxSteps, if set, wins.")
    maxSteps: StrictInt | None = Field(
        None, ge=1, le=10_000_000, description="Stop after this many optimizer steps instead of after the epochs."
    )
    learningRate: StrictFloat = Field(2.0e-4, gt=0, le=1, description="Peak learning rate, 0 < x <= 1.")
    microBatchSize: StrictInt = Field(4, ge=1, le=1024, description="Sequences per process per forward pass, 1 to 1024.")
    gradientAccumulationSteps: StrictInt = Field(
        1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step, 1 to 1024."
    )
    globalBatchSize: StrictInt | None = Field(
        None,
        ge=1,
        description="Optional check of the batch arithmetic: when set it must equal microBatchSize x "
        "gradientAccumulationSteps x workers.replicas x processes per worker.",
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warm-up: cosine, linear or constant."
    )
    warmupRatio: StrictFloat = Field(0.03, ge=0, le=0.5, description="Fraction of steps spent warming up, 0 to 0.5.")
    warmupSteps: StrictInt | None = Field(
        None, ge=0, le=1_000_000, description="Warm-up length in steps; when set it replaces warmupRatio."
    )
    weightDecay: StrictFloat = Field(0.0, ge=0, le=1, description="AdamW weight decay, 0 to 1.")
    maxGradNorm: StrictFloat = Field(1.0, ge=0, le=1000, description="Gradient clipping norm, 0 turns clipping off.")
    seed: StrictInt = Field(42, ge=0, le=2**31 - 1, description="Seed for initialisation, shuffling and the validation split.")
    gradientCheckpointing: StrictBool = Field(
        False, description="Recompute activations in the backward pass: less memory, about 30% more compute."
    )
    chunkedLoss: StrictBool | None = Field(
        None,
        description="Compute the training loss a chunk of tokens at a time (about 1 GiB of float32 logits each, "
        "recomputed in the backward pass) instead of the whole micro-batch's logits at once: saves the largest "
        "activation of a large-vocabulary model (4,096 tokens x 128,256 entries is 6 GiB with its gradients) for "
        "about 2% more compute. Unset: on for sft under deepspeed.zeroStage 0-2 when the vocabulary has 32,768 "
        "entries or more. true: on wherever it applies (not dpo, not ZeRO-3); false: off.",
    )
    logEverySteps: StrictInt = Field(1, ge=1, le=100_000, description="Optimizer steps between progress lines.")
    evalEverySteps: StrictInt = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Optimizer steps between held-out evaluations; 0 evaluates only before and after training.",
    )
    checkpointEverySteps: StrictInt = Field(
        200, ge=0, le=1_000_000, description="Optimizer steps between checkpoints to output.uri/checkpoints/; 0 turns them off."
    )
    keepCheckpoints: StrictInt = Field(2, ge=1, le=100, description="Newest complete checkpoints kept; older ones are deleted.")
    earlyStopping: EarlyStopping | None = Field(
        None, description="Stop early when the held-out loss stops improving; needs evalEverySteps > 0. Empty: off."
    )

    rules = (
        Rule(
            field="earlyStopping",
            message="earlyStopping needs evalEverySteps > 0",
            cel="!has(self.earlyStopping) || self.evalEverySteps > 0",
            check=lambda t: t.earlyStopping is None or t.evalEverySteps > 0,
        ),
        Rule(
            field="warmupSteps",
            message="warmupSteps must be smaller than maxSteps",
            cel="!has(self.warmupSteps) || !has(self.maxSteps) || self.warmupSteps < self.maxSteps",
            check=lambda t: t.warmupSteps is None or t.maxSteps is None or t.warmupSteps < t.maxSteps,
        ),
    )
