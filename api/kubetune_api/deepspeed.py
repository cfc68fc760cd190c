"""spec.deepspeed: ZeRO stage and offload."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from ._base import Rule, Section


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # True == 1 in Python; the API server rejects a boolean here
        raise ValueError("must be one of 1, 2 or 3")
    return value


class DeepSpeedSpec(Section):
    """How DeepSpeed shards and offloads training state across processes."""

    zeroStage: Annotated[Literal[1, 2, 3], BeforeValidator(_not_bool)] = Field(
        2,
        description="ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters "
        "(for base models that do not fit one GPU).",
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        "none",
        description="Move state to CPU memory: none, optimizer (optimizer state), or all (optimizer state and "
        "parameters; needs zeroStage 3). Saves GPU memory, costs speed.",
    )

    rules = (
        Rule(
            field="offload",
            message="offload all (parameters) needs zeroStage 3",
            cel="self.offload != 'all' || self.zeroStage == 3",
            check=lambda d: d.offload != "all" or d.zeroStage == 3,
        ),
    )
