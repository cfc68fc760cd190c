"""spec.output.serving: the servers the adapter must load in. Checked before training (the spec's rules: offline, at
admission, in the status) and again on the adapter the run wrote, before _SUCCESS (adapter_problems).

What vLLM loads (the engine inside KServe's LLMInferenceService too): LoRA ranks from a fixed set up to its
`--max-lora-rank`; LoRA weights of its linear layers only (no trained biases, no `modules_to_save` copies of whole
modules, no DoRA magnitudes); the output head and the embeddings are not adapted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from ._base import Section

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
RANKS_TEXT = ", ".join(map(str, VLLM_LORA_RANKS))
LoraRank = Literal[8, 16, 32, 64, 128, 256, 320, 512]
VLLM_DEFAULT_MAX_RANK: LoraRank = 16  # vLLM's --max-lora-rank when not given
KSERVE_MAX_RANK: LoraRank = 64  # what `kubetune serve` passes to the LLMInferenceService's vLLM unless the job says otherwise

# The checkpoint names of the linear layers vLLM's model classes adapt with LoRA (q/k/v and gate/up are packed into
# qkv_proj and gate_up_proj inside vLLM; the others are those of the GPT-NeoX, Falcon, Phi, GPT-2, OPT, Mixtral,
# InternLM and ChatGLM families). An allow-list: a name not here is refused, with the list.
VLLM_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
    "query_key_value",
    "dense",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "c_attn",
    "c_proj",
    "c_fc",
    "fc1",
    "fc2",
    "out_proj",
    "w1",
    "w2",
    "w3",
    "wqkv",
    "wo",
)
ALL_LINEAR = "all-linear"  # peft's: every linear layer but the output head, so names from the list above


class VllmServing(Section):
    """vLLM run directly (`vllm serve BASE --enable-lora --max-lora-rank N --lora-modules ...`)."""

    maxLoraRank: LoraRank = Field(
        VLLM_DEFAULT_MAX_RANK,
        description=f"The server's --max-lora-rank: one of {RANKS_TEXT} ({VLLM_DEFAULT_MAX_RANK}, vLLM's default, when omitted).",
    )


class KServeServing(Section):
    """KServe's LLMInferenceService (serving.kserve.io/v1alpha2, vLLM inside): `kubetune serve` renders one."""

    maxLoraRank: LoraRank = Field(
        KSERVE_MAX_RANK,
        description=f"The --max-lora-rank the rendered LLMInferenceService gives vLLM: one of {RANKS_TEXT}.",
    )


class ServingSpec(Section):
    """Servers the adapter must load in: a LoRA configuration they cannot load is refused before training, and the
    written adapter is checked again before _SUCCESS (NotServable). `kubetune serve` prints the manifests."""

    vllm: VllmServing | None = Field(None, description=VllmServing.__doc__)
    kserve: KServeServing | None = Field(None, description=KServeServing.__doc__)

    def targets(self) -> list[tuple[str, int]]:
        """(output.serving field, max rank) of each target named."""
        named = (("vllm", self.vllm), ("kserve", self.kserve))
        return [(f"output.serving.{name}", target.maxLoraRank) for name, target in named if target is not None]


def module_problem(modules: Iterable[str]) -> str | None:
    """Why vLLM would not adapt these target modules, or None."""
    wrong = [m for m in modules if m != ALL_LINEAR and m not in VLLM_MODULES]
    if not wrong:
        return None
    return f"{', '.join(sorted(wrong))} not adapted by vLLM; allowed: {ALL_LINEAR} or {', '.join(VLLM_MODULES)}"


def adapter_problems(config: dict[str, Any], tensors: Iterable[str], serving: ServingSpec) -> list[str]:
    """What in a written PEFT adapter (its adapter_config.json and tensor names) the serving targets cannot load."""
    problems: list[str] = []
    rank = config.get("r")
    if rank not in VLLM_LORA_RANKS:
        problems.append(f"rank {rank!r} is not one vLLM serves ({RANKS_TEXT})")
    for field, limit in serving.targets():
        if isinstance(rank, int) and rank > limit:
            problems.append(f"rank {rank} is above {field}.maxLoraRank {limit}")
    for pattern in config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}:
        if pattern:
            problems.append(f"per-module ranks or alphas ({', '.join(sorted(pattern))}) are not served by vLLM")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save ({', '.join(map(str, config['modules_to_save']))}): vLLM loads LoRA weights only")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not served by vLLM")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config.get('bias')!r}: vLLM loads LoRA weights only, not trained biases")
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    said = module_problem(n.rsplit(".", 1)[-1] for n in names)
    if said is not None or not names:
        problems.append(f"target modules: {said or 'none'}")
    odd = sorted({t for t in tensors if "lora_A" not in t and "lora_B" not in t})
    if odd:
        problems.append(f"tensors other than LoRA weights: {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}")
    return problems
