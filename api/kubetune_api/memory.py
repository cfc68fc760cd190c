"""Memory per training process, estimated before anything is loaded: from the model's config.json (and its
safetensors headers, when at hand) and the spec. Pure arithmetic, no torch: the preflight, `kubetune preflight`
and the trainer's own metrics use the same numbers.

What a LoRA run holds on each GPU at its peak (the start of the backward pass):
- the base weights in the compute dtype; under ZeRO-3 a 1/N share of every tensor DeepSpeed partitions (those of
  at least `stage3_param_persistence_threshold` elements) plus the layers it gathers for the pass;
- the adapter's training state, as DeepSpeed's ZeRO estimators count it (compute copy, fp32 master, gradients,
  two Adam moments; partitioned by stage 1 and up, gradients by stage 2 and up, offloaded with offload);
- DeepSpeed's gradient buckets (reduce_bucket_size elements, two when overlapping communication);
- the activations saved for the backward pass: per token and layer, counted tensor by tensor for a decoder block
  (norms, attention inputs and outputs as SDPA keeps them, the MLP, LoRA's dropout and low-rank inputs), or one
  layer's input per layer with gradient checkpointing;
- the logits and their float32 loss.
Each term is in `Estimate.parts`; tests/test_memory_estimate.py compares the total with measured peaks.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .job import FineTuneJobSpec, chunked_loss, loss_chunk_tokens
from .lora import ALL_LINEAR

BUCKET = 50_000_000  # the largest reduce bucket the trainer asks DeepSpeed for (elements)
PERSISTENCE = 100_000  # DeepSpeed's stage3_param_persistence_threshold: smaller tensors stay whole on every rank
PREFETCH = 50_000_000  # DeepSpeed's stage3_prefetch_bucket_size (elements)
GIB = 2**30
# Families whose MLP has no gate (two matrices, one activation): the others are gated (SwiGLU/GeGLU: three)
UNGATED = frozenset({"gpt2", "gpt_neox", "gpt_bigcode", "gptj", "opt", "falcon", "phi", "starcoder2", "bloom", "mpt"})
# activations written as several elementwise operations (tanh-approximated GELU, x * sigmoid(1.702x)) keep more
# intermediate tensors than the one input of a fused activation: extras, in units of the MLP's width
COMPOSITE_ACTIVATION = {"gelu_new": 3, "gelu_fast": 3, "quick_gelu": 2}


def bucket_elements(trainable: int) -> int:
    """DeepSpeed's reduce bucket for this many trainable parameters: its buffers are allocated at full size
    whatever is trained, so a LoRA adapter of a few million parameters gets buckets of its own size."""
    return int(min(BUCKET, max(trainable, 1_000_000)))


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a model: its decoder's dimensions and its tensors' sizes."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated: bool = True
    experts: int = 0  # mixture of experts: experts per layer, and how many each token is routed to
    experts_per_token: int = 0
    attention_dropout: float = 0.0  # the model's own dropout in training mode (GPT-2's 0.1, Llama's 0)
    hidden_dropout: float = 0.0
    activation: str = "silu"
    tensors: tuple[int, ...] = ()  # element counts of every weight tensor (the safetensors headers, or derived)

    @property
    def params(self) -> int:
        return sum(self.tensors)

    @property
    def layer_params(self) -> int:
        return (self.params - self.vocab * self.hidden) // max(1, self.layers)

    def linears(self) -> dict[str, tuple[int, int, int]]:
        """Per layer: the linear layers' (inputs, outputs, copies), under Llama's names and the common aliases."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        mlp = max(1, self.experts)
        out = {"q_proj": (h, q, 1), "k_proj": (h, kv, 1), "v_proj": (h, kv, 1), "o_proj": (q, h, 1)}
        out.update({"up_proj": (h, self.intermediate, mlp), "down_proj": (self.intermediate, h, mlp)})
        if self.gated:
            out["gate_proj"] = (h, self.intermediate, mlp)
        return out


def _first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(config.get(name), (int, float)) and not isinstance(config.get(name), bool):
            return config[name]
    return default


def shape_of(config: dict[str, Any], tensors: list[int] | None = None) -> Shape:
    """A Shape from config.json (a multimodal model's text_config, if it has one) and, if known, its tensor sizes."""
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    family = str(config.get("model_type") or "")
    hidden = int(_first(config, "hidden_size", "n_embd", "d_model", default=0))
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers", default=0))
    heads = int(_first(config, "num_attention_heads", "n_head", "num_heads", default=0))
    if hidden <= 0 or layers <= 0 or heads <= 0:
        raise ValueError("config.json names no hidden size, layer count or head count")
    kv = int(_first(config, "num_key_value_heads", "num_kv_heads", default=1 if config.get("multi_query") else heads))
    head_dim = int(_first(config, "head_dim", default=hidden // heads))
    inter = int(_first(config, "intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size", default=4 * hidden))
    vocab = int(_first(config, "vocab_size", default=32000))
    experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts", default=0))
    per_token = int(_first(config, "num_experts_per_tok", "moe_topk", default=2 if experts else 0))
    shape = Shape(
        family,
        hidden,
        layers,
        heads,
        kv,
        head_dim,
        inter,
        vocab,
        family not in UNGATED,
        experts,
        per_token,
        float(_first(config, "attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", default=0.0)),
        float(_first(config, "hidden_dropout", "resid_pdrop", "hidden_dropout_prob", default=0.0)),
        str(config.get("hidden_act") or config.get("activation_function") or "silu"),
    )
    if tensors is None:
        per_layer = sum(i * o * n for i, o, n in shape.linears().values()) + 2 * hidden + hidden * experts
        untied = 0 if config.get("tie_word_embeddings", True) else vocab * hidden
        tensors = [vocab * hidden, untied] + [per_layer] * layers + [hidden]
    return Shape(**{**shape.__dict__, "tensors": tuple(t for t in tensors if t)})


def safetensors_sizes(header: bytes) -> list[int]:
    """Element counts of the tensors a safetensors header describes (its JSON, without the 8-byte length)."""
    described = json.loads(header)
    return [math.prod(v["shape"]) for k, v in described.items() if k != "__metadata__" and isinstance(v, dict)]


def read_header(path: Path) -> bytes:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 * 2**20:
            raise ValueError(f"{path.name}: a safetensors header of {size} bytes")
        return f.read(size)


def shape_from_dir(directory: Path) -> Shape:
    """The Shape of a model directory: config.json, and the tensors of its *.safetensors files."""
    config = json.loads((directory / "config.json").read_text())
    files = sorted(directory.glob("*.safetensors"))
    tensors = [n for f in files for n in safetensors_sizes(read_header(f))] if files else None
    return shape_of(config, tensors)


@dataclass(frozen=True)
class Estimate:
    """Bytes per training process, by part, and the total."""

    parts: dict[str, int]
    trainable: int
    tokens: int  # per micro-batch
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"bytesPerProcess": self.total, "parts": dict(self.parts), "trainableParameters": self.trainable}


def lora_targets(shape: Shape, targets: list[str]) -> dict[str, tuple[int, int, int]]:
    """The linear layers LoRA adapts in each decoder layer (all-linear: all of them but the output head)."""
    linears = shape.linears()
    if targets == [ALL_LINEAR]:
        return linears
    aliases = {
        "query": "q_proj",
        "key": "k_proj",
        "value": "v_proj",
        "dense": "o_proj",
        "out_proj": "o_proj",
        "c_proj": "o_proj",
        "fc1": "up_proj",
        "c_fc": "up_proj",
        "fc2": "down_proj",
        "w1": "gate_proj",
        "w3": "up_proj",
        "w2": "down_proj",
    }
    out = {}
    for target in targets:
        name = aliases.get(target.rsplit(".", 1)[-1], target.rsplit(".", 1)[-1])
        if name in linears:
            out[name] = linears[name]
        elif name in ("c_attn", "qkv_proj", "query_key_value", "Wqkv"):
            for part in ("q_proj", "k_proj", "v_proj"):
                out[part] = linears[part]
        elif name == "gate_up_proj":
            out.update({k: linears[k] for k in ("gate_proj", "up_proj") if k in linears})
    return out


def activation_bytes(shape: Shape, spec: FineTuneJobSpec, b: int, targets: dict[str, tuple[int, int, int]]) -> int:
    """Bytes the autograd graph keeps per token and decoder layer (no gradient checkpointing)."""
    h, q, kv, inter = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    norms = 2 * (4 + 2 * b) * h  # two RMSNorms: the float32 input, the normalised and the scaled output
    attention = (2 * q + 2 * kv) * b + 2 * q * b + 4 * shape.heads  # SDPA's q, k, v, output, o_proj's input, lse
    mlp_width = inter * max(1, shape.experts_per_token)
    # gate, act(gate), up, their product (ungated: fc1, act(fc1)); more for activations made of several operations
    mlp = ((4 if shape.gated else 2) + COMPOSITE_ACTIVATION.get(shape.activation, 0)) * mlp_width * b
    if shape.hidden_dropout > 0:  # after attention and after the MLP: the output and its mask
        mlp += 2 * h * (b + 1)
    lora = spec.lora
    adapter = 0
    for inputs, _outputs, _copies in targets.values():
        adapter += lora.r * b
        if lora.dropout > 0:
            adapter += inputs * (b + 1)  # the dropped-out input and its mask, one per adapted layer
    return norms + attention + mlp + adapter


def attention_matrix_bytes(shape: Shape, rows: int, seq: int, b: int, gpu: bool) -> int:
    """The attention probabilities one layer keeps: only where SDPA falls back to its math kernel, which on CPUs
    it does for dropout inside attention (GPU kernels apply dropout without materialising them)."""
    if gpu or shape.attention_dropout <= 0:
        return 0
    return rows * shape.heads * seq * seq * (2 * b + 1)  # softmax output, dropped-out copy, mask


def estimate(
    shape: Shape, spec: FineTuneJobSpec, world: int | None = None, gpu: bool | None = None, rows: int | None = None
) -> Estimate:
    """Peak bytes per training process for this spec on `world` processes, on GPUs (bf16/fp16) or CPUs (fp32), for
    rows of `rows` tokens (default: the spec's row_tokens, the longest a step may train on)."""
    world = spec.workers.world_size if world is None else world
    gpu = spec.workers.gpusPerWorker > 0 if gpu is None else gpu
    stage, offload, t = spec.deepspeed.zeroStage, spec.deepspeed.offload, spec.training
    b = 4 if not gpu or spec.model.dtype == "float32" else 2
    targets = lora_targets(shape, list(spec.lora.targetModules))
    per_layer_lora = sum(spec.lora.r * (i + o) * n for i, o, n in targets.values())
    trainable = per_layer_lora * shape.layers
    parts: dict[str, int] = {}
    notes: list[str] = []

    # base weights
    if stage == 3:
        kept = sum(n for n in shape.tensors if n < PERSISTENCE)
        split = shape.params - kept
        parts["weights"] = (kept + (0 if offload == "all" else math.ceil(split / world))) * b
        widest = max(shape.layer_params, shape.vocab * shape.hidden)
        parts["gathered"] = min(split, widest + min(PREFETCH, shape.layer_params)) * b
    else:
        parts["weights"] = shape.params * b

    # the adapter's training state (DeepSpeed's estimator, for the trainable part)
    shard = world if stage >= 1 else 1
    master = 0 if offload != "none" else 4 * trainable // shard + 8 * trainable // shard  # fp32 copy + Adam m, v
    grads = trainable * (4 if stage == 1 else b) // (world if stage >= 2 else 1)
    parts["adapter"] = trainable * b + master + grads
    bucket = bucket_elements(trainable)
    reduce_dtype = 4 if stage == 1 or b == 4 else b
    parts["buckets"] = bucket * reduce_dtype * (2 if gpu and stage in (1, 2) else 1)

    # activations and logits for one micro-batch of full rows
    seq = spec.row_tokens if rows is None else rows
    tokens = t.microBatchSize * seq
    layer = tokens * activation_bytes(shape, spec, b, targets) + attention_matrix_bytes(shape, t.microBatchSize, seq, b, gpu)
    final_norm = tokens * (4 + 2 * b) * shape.hidden
    # the loss: float32 log-softmax kept for the backward pass, then the gradients of the loss and of the log-softmax;
    # chunked (training.chunkedLoss), one chunk's at a time, recomputed in the backward pass
    scored = min(tokens, loss_chunk_tokens(shape.vocab)) if chunked_loss(spec, shape.vocab) else tokens
    logits = scored * shape.vocab * 12
    if scored < tokens:
        notes.append(f"chunked loss: the logits of {scored} tokens at a time")
    if t.gradientCheckpointing:
        # each layer's input is kept; the backward pass then recomputes one layer at a time, after the loss's
        # tensors are gone: the peak is the larger of the two moments
        parts["activations"] = shape.layers * tokens * shape.hidden * b + final_norm
        parts["logits"] = logits
        parts["recompute"] = max(0, layer - logits)
        notes.append("gradient checkpointing: one layer's input kept per layer, one layer recomputed at a time")
    else:
        parts["activations"] = shape.layers * layer + final_norm
        parts["logits"] = logits
    return Estimate(parts, trainable, tokens, notes)


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB / 10 else f"{value / 2**20:.0f} MiB"
