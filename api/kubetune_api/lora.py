"""spec.lora: the LoRA adapter's shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ._base import Rule, Section

ALL_LINEAR = "all-linear"
ModuleName = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.*-]+$")]


class LoraSpec(Section):
    """The low-rank adapter trained on top of the frozen base model."""

    r: StrictInt = Field(16, ge=1, le=1024, description="Adapter rank, 1 to 1024.")
    alpha: StrictFloat = Field(
        32,
        gt=0,
        le=4096,
        description="Scaling numerator: updates are scaled by alpha/r (alpha/sqrt(r) with useRslora). 0 < alpha <= 4096.",
    )
    dropout: StrictFloat = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input, 0 <= x < 1.")
    targetModules: list[ModuleName] = Field(
        default_factory=lambda: [ALL_LINEAR],
        min_length=1,
        max_length=64,
        json_schema_extra={"default": [ALL_LINEAR]},
        description="Module names to adapt (for example q_proj, v_proj), or [all-linear] for every linear "
        "layer but the output head. A name that matches nothing in the model stops the run before training.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train: none, all, or lora_only.")
    useRslora: StrictBool = Field(False, description="Rank-stabilised scaling, alpha/sqrt(r); helps at large r.")

    rules = (
        Rule(
            field="targetModules",
            message="all-linear cannot be combined with other module names",
            cel="!('all-linear' in self.targetModules) || size(self.targetModules) == 1",
            check=lambda s: ALL_LINEAR not in s.targetModules or len(s.targetModules) == 1,
        ),
    )
