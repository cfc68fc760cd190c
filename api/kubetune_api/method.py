"""spec.method: what the adapter learns from. sft (demonstrations: the default) or dpo (preference pairs), in the
spirit of OpenAI's fine-tuning `method`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictFloat

from ._base import Rule, Section

SFT_FORMATS = ("prompt-completion", "chat", "text", "alpaca", "sharegpt")
PREFERENCE_FORMATS = ("preference", "openai-preference", "shared-prefix")


def row_limit(max_seq_length: int, pairs: bool) -> int:
    """The longest row a step trains on: dataset.maxSeqLength, twice it for preference pairs (a pair's chosen and
    rejected responses side by side in one row, so one forward pass scores both)."""
    return 2 * max_seq_length if pairs else max_seq_length


class DpoSpec(Section):
    """Direct Preference Optimization (Rafailov et al., 2023) on LoRA. The reference model is the base model with
    the adapter disabled, or, when model.adapter is set, that starting adapter frozen: no second copy in memory."""

    beta: StrictFloat = Field(
        0.1,
        gt=0,
        le=10,
        description="How far the adapter may move from the reference: the temperature of the implicit reward, "
        "0 < x <= 10 (higher stays closer).",
    )
    lossType: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="sigmoid: the DPO paper's loss, -log sigmoid(beta x margin); ipo: Azar et al.'s squared loss "
        "(margin of per-token mean log-probabilities - 1/(2 beta))^2, which does not drive the margin to infinity.",
    )
    labelSmoothing: StrictFloat = Field(
        0.0,
        ge=0,
        le=0.5,  # below 0.5: a rule (an exclusive maximum beside a default is refused by the API server)
        description="Conservative DPO: the share of pairs assumed mislabelled, 0 <= x < 0.5 (sigmoid loss only).",
    )
    rpoAlpha: StrictFloat = Field(
        0.0,
        ge=0,
        le=10,
        description="RPO (Pang et al., 2024): adds rpoAlpha x the chosen response's mean token loss, which keeps the "
        "chosen responses likely; 0 turns it off.",
    )

    rules = (
        Rule(
            field="labelSmoothing",
            message="labelSmoothing must be below 0.5 (at 0.5 every pair is as likely mislabelled as not)",
            cel="self.labelSmoothing < 0.5",
            check=lambda d: d.labelSmoothing < 0.5,
        ),
        Rule(
            field="labelSmoothing",
            message="labelSmoothing applies to lossType sigmoid only",
            cel="self.labelSmoothing == 0.0 || self.lossType == 'sigmoid'",
            check=lambda d: d.labelSmoothing == 0.0 or d.lossType == "sigmoid",
        ),
    )


class MethodSpec(Section):
    """How the adapter is trained: sft (supervised, on demonstrations; the default) or dpo (on preference pairs,
    with dataset.format one of preference, openai-preference, shared-prefix)."""

    type: Literal["sft", "dpo"] = Field("sft", description="sft (demonstrations) or dpo (preference pairs).")
    dpo: DpoSpec | None = Field(None, description=DpoSpec.__doc__)

    rules = (
        Rule(
            field="dpo",
            message="method.dpo is set only with method.type: dpo",
            cel="!has(self.dpo) || self.type == 'dpo'",
            check=lambda m: m.dpo is None or m.type == "dpo",
        ),
    )

    @property
    def dpo_settings(self) -> DpoSpec:
        """DPO's settings in force (the defaults when method.dpo is empty)."""
        return self.dpo or DpoSpec()
