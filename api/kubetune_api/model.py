"""spec.model: the base model to fine-tune."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, StrictBool, StrictStr

from ._base import Rule, Section
from ._types import HUB_ID, ModelUri, OutputUri, is_s3, s3_cel


class ModelSpec(Section):
    """The base model the adapter is trained on top of."""

    uri: ModelUri = Field(
        description="Where the base model is: s3://bucket/prefix/ (downloaded and verified), "
        "an absolute or ./relative path, or a hub id like org/name.",
    )
    adapter: OutputUri | None = Field(
        None,
        description="Start from this PEFT LoRA adapter (a directory: adapter_config.json and safetensors weights, e.g. an "
        "earlier job's adapter/) instead of a fresh one, for sft and dpo alike. Its adapter_config.json must match lora "
        "(r, alpha, targetModules, bias, useRslora). With dpo it is also the frozen reference.",
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
    attnImplementation: Literal["auto", "varlen", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel. auto (default): varlen on a GPU where the model allows it, else sdpa. varlen: "
        "PyTorch's variable-length FlashAttention over packed rows, each sample attending only to itself with no "
        "dense mask (GPU; on the CPU each sample runs through sdpa in turn). sdpa: PyTorch's scaled-dot-product "
        "attention with a block-diagonal mask over packed rows. eager, or flash_attention_2 (needs the flash-attn "
        "package, not in the image).",
    )

    rules = (
        Rule(
            field="uri",
            message="a cluster job reads its model from s3://bucket/prefix/ (no . or .. segments) or a hub id; "
            "local paths are for kubetune run only",
            cel=f"{s3_cel('self.uri')} || self.uri.matches('^{HUB_ID}$')",
            check=lambda m: is_s3(m.uri) or re.fullmatch(HUB_ID, m.uri) is not None,
            cluster=True,
        ),
        Rule(
            field="adapter",
            message="a cluster job reads its starting adapter from s3://bucket/prefix/ (no . or .. segments); local paths "
            "are for kubetune run only",
            cel=f"!has(self.adapter) || ({s3_cel('self.adapter')})",
            check=lambda m: m.adapter is None or is_s3(m.adapter),
            cluster=True,
        ),
    )
