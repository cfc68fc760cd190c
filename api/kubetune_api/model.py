"""spec.model: the base model to fine-tune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictStr

from ._base import Section
from ._types import ModelUri


class ModelSpec(Section):
    """The base model the adapter is trained on top of."""

    uri: ModelUri = Field(
        description="Where the base model is: s3://bucket/prefix/ (downloaded and verified), "
        "an absolute or ./relative path, or a hub id like org/name.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Compute dtype on GPUs: auto (bfloat16 where supported), bfloat16, float16 or float32. "
        "CPU runs always compute in float32.",
    )
    revision: StrictStr | None = Field(
        None, max_length=255, description="Hub revision (branch, tag or commit) when uri is a hub id."
    )
    trustRemoteCode: StrictBool = Field(
        False, description="Allow model code shipped with the checkpoint to run. Off unless you trust the source."
    )
    attnImplementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel: sdpa (default), eager, or flash_attention_2 (GPU image only)."
    )
