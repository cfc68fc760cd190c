"""Attention over packed rows without a dense mask: each sample in a row attends only to itself, through PyTorch's
variable-length FlashAttention kernel (torch.nn.attention.varlen, prebuilt in torch's CUDA build: nothing to
compile), given the samples' bounds (cumulative lengths) read on the host from the rows' restarting positions.

transformers' sdpa path builds a dense block-diagonal mask (rows x L x L) for packed rows, which rules out the
flash kernel and computes every masked-out block; this computes only each sample's own causal triangle. It is
registered with transformers' attention interface as VARLEN and chosen by model.attnImplementation (varlen, or auto
on a GPU). On the CPU the same function runs each sample through sdpa in turn: exact, and what the CPU tests check.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from typing import Any

VARLEN = "kubetune_varlen"  # the name registered with transformers' AttentionInterface


def bounds(position_ids: Any, device: Any) -> dict[str, Any]:
    """The flash-attention keyword arguments (transformers' FlashAttentionKwargs names) of a collated batch: the
    cumulative sample lengths over the flattened rows, where each sample (and each row's padding run) starts at
    position 0. Read on the host: from the CPU positions the collate made, no device synchronisation."""
    import numpy as np
    import torch

    positions = position_ids.detach().cpu().numpy().reshape(-1)
    starts = np.flatnonzero(positions == 0)
    cu = np.append(starts, positions.size).astype(np.int32)
    longest = int(np.diff(cu).max()) if cu.size > 1 else 0
    tensor = torch.from_numpy(cu).to(device, non_blocking=True)
    return {"cu_seq_lens_q": tensor, "cu_seq_lens_k": tensor, "max_length_q": longest, "max_length_k": longest}


def kernel_available(device: Any) -> str | None:
    """None when the CUDA kernel can run on `device`; else why not (said in the notice that falls back)."""
    import torch

    if device.type != "cuda":
        return "no CUDA device"
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return "FlashAttention needs a GPU of compute capability 8.0 or later"
    return None


def unsupported(config: Any, model_class: Any) -> str | None:
    """None when this model's attention can run through VARLEN; else why not."""
    if not getattr(model_class, "_supports_attention_backend", False):
        return f"{config.model_type} models do not dispatch through transformers' attention interface"
    if getattr(config, "attn_logit_softcapping", None):
        return f"{config.model_type} caps its attention logits (attn_logit_softcapping), which the kernel does not"
    return None


def register() -> None:
    """Make VARLEN a name transformers accepts as attn_implementation (no mask is built for it: bounds say all)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, flash_attention_mask)


def varlen_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function contract: query (B, Hq, L, D), key and value (B, Hkv, L, D); returns
    (B, L, Hq, D). The batch's bounds come as cu_seq_lens_q and max_length_q (bounds())."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        raise ValueError(f"{VARLEN} attention needs the batch's sample bounds (cu_seq_lens_q): none were passed")
    if dropout:
        raise ValueError(f"{VARLEN} attention has no dropout (the model's attention_dropout is {dropout})")
    b, heads, length, dim = query.shape
    q = query.transpose(1, 2).reshape(b * length, heads, dim)
    k = key.transpose(1, 2).reshape(b * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(b * length, value.shape[1], dim)
    left = sliding_window - 1 if sliding_window else -1
    if q.is_cuda:
        out = _flash(q, k, v, cu, int(kwargs["max_length_q"]), scaling, left)
    else:
        out = _per_sample(q, k, v, cu, scaling, left)
    return out.reshape(b, length, heads, dim), None


@functools.cache
def _varlen_params() -> frozenset[str]:
    """The keyword arguments this torch's varlen_attn takes (read once, not per layer and step)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _flash(q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float | None, left: int) -> Any:
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_params()
    options: dict[str, Any] = {"scale": scale}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:  # an older torch without grouped-query support: the key/value heads repeated
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    if "window_size" in params:
        options["window_size"] = (left, 0)  # (-1, 0) is causal
    elif left >= 0:
        raise ValueError(f"this torch's varlen_attn has no sliding window (the model's is {left + 1})")
    if "is_causal" in params:
        options["is_causal"] = True
    return varlen_attn(q, k, v, cu, cu, longest, longest, **options)


def _per_sample(q: Any, k: Any, v: Any, cu: Any, scale: float | None, left: int) -> Any:
    """The CPU path: each sample's causal attention by sdpa, in turn (exact; no dense mask over the row)."""
    import torch
    from torch.nn import functional

    edges = [int(x) for x in cu.tolist()]
    outs = []
    for start, end in itertools.pairwise(edges):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        mask = None
        if left >= 0:
            i = torch.arange(end - start)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] <= left)
        out = functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=qs.shape[0] != ks.shape[0]
        )
        outs.append(out.transpose(0, 1))
    return torch.cat(outs, dim=0)
