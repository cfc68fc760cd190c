"""The weights-only reading of checkpoint files, without a training run: what a checkpoint may hold beyond tensors
and plain data is exactly DeepSpeed's allow-listed classes, and `getattr` only as Python 3.11.0 to 3.11.4 pickle an
Enum member (getattr(ZeroStageEnum, "gradients")): a checkpoint written by Debian bookworm's python3 (3.11.2, the
image's) resumes under any later Python and back. Any other getattr is refused before it runs."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from deepspeed.runtime.zero.config import ZeroStageEnum

from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.recipe.checkpoint import safe_loading


class ByName:
    """Pickles as getattr(owner, name), as Python 3.11.2's Enum.__reduce_ex__ does."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name = owner, name

    def __reduce_ex__(self, protocol: object) -> tuple[Any, tuple[Any, str]]:
        return getattr, (self.owner, self.name)


def saved(value: Any) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save({"zero_stage": value, "weights": torch.ones(2)}, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("value", [ByName(ZeroStageEnum, "gradients"), ZeroStageEnum.gradients])
def test_an_enum_member_by_name_or_by_value_loads(value: Any) -> None:
    with safe_loading():
        loaded = torch.load(saved(value))
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and loaded["weights"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("owner", "name", "words"),
    [
        (ZeroStageEnum, "__class__", "GLOBAL getattr(ZeroStageEnum, '__class__')"),
        (ZeroStageEnum, "_missing_", "GLOBAL getattr(ZeroStageEnum, '_missing_')"),
        (ZeroStageEnum, "no_such_member", "GLOBAL getattr(ZeroStageEnum, 'no_such_member')"),
        (io.BytesIO, "read", "GLOBAL _io.BytesIO"),  # a class not allowed is refused before getattr is reached
    ],
)
def test_any_other_getattr_is_refused(owner: Any, name: str, words: str) -> None:
    with safe_loading(), pytest.raises(TrainerFailure) as refused:
        torch.load(saved(ByName(owner, name)))
    assert refused.value.reason.value == "CheckpointMismatch"
    assert f"refusing to load it (Unsupported global: {words})" in str(refused.value)
