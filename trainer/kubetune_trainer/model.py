"""Base model and tokenizer from a local directory or hub id, and the LoRA adapter on top (peft)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_api.events import Notice, emit
from kubetune_api.lora import ALL_LINEAR, LoraSpec
from kubetune_api.model import ModelSpec
from kubetune_trainer import attention
from kubetune_trainer.errors import TrainerFailure


def torch_dtype(spec: ModelSpec, on_gpu: bool) -> Any:
    import torch

    if not on_gpu:
        return torch.float32  # CPU runs compute in float32: bf16 matmuls on CPU are slow and imprecise
    if spec.dtype in ("auto", "bfloat16"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float16": torch.float16, "float32": torch.float32}[spec.dtype]


# Families whose attention keeps packed samples apart when positions restart at each sample (transformers builds
# their masks from position_ids). Each is checked by tests/test_packing_families.py against the pinned
# transformers: a packed sample's logits equal the sample's alone. OPT is not among them (its mask ignores
# position_ids: a packed sample attends to the one before it), nor is any family not checked here.
PACKING_FAMILIES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "gemma",
        "gemma2",
        "phi",
        "phi3",
        "gpt2",
        "gpt_neox",
        "olmo2",
        "granite",
        "falcon",
        "stablelm",
        "starcoder2",
        "cohere",
    }
)


def model_type(source: str, spec: ModelSpec) -> str:
    """The model's family (config.json's model_type), read without loading weights."""
    from transformers import AutoConfig

    try:
        return str(AutoConfig.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trustRemoteCode).model_type)
    except (OSError, ValueError) as exc:
        raise TrainerFailure(Reason.MODEL_MISSING, f"no model config at {spec.uri}{_hub_hint(spec)}: {exc}") from exc


def load_tokenizer(source: str, spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trustRemoteCode)
    except (OSError, ValueError) as exc:
        raise TrainerFailure(Reason.MODEL_MISSING, f"no usable tokenizer at {spec.uri}{_hub_hint(spec)}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attention_kernel(source: str, spec: ModelSpec, device: Any) -> str:
    """The attention implementation to load with: model.attnImplementation, auto and varlen resolved (varlen needs
    a model that dispatches through transformers' attention interface, and on a GPU the kernel). An explicit varlen
    that cannot run says why, in a notice, and runs sdpa; auto picks varlen on a GPU only, silently."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    asked = spec.attnImplementation
    if asked not in ("auto", "varlen"):
        return asked
    config = AutoConfig.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trustRemoteCode)
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        model_class = None  # remote code: its attention is its own
    why = attention.unsupported(config, model_class)
    if why is None and (asked == "auto" or device.type == "cuda"):
        why = attention.kernel_available(device)
    if why is None and device.type == "cuda" and spec.dtype == "float32":
        why = "FlashAttention computes in bfloat16 or float16, and model.dtype is float32"
    if why is None:
        attention.register()
        return attention.VARLEN
    if asked == "varlen":
        emit(Notice(message=f"model.attnImplementation varlen cannot run here ({why}); using sdpa attention"))
    return "sdpa"


def load_model(source: str, spec: ModelSpec, device: Any) -> Any:
    from transformers import AutoModelForCausalLM

    on_gpu = device.type == "cuda"
    if not source.startswith(("/", ".")) and Path(source).exists():
        source = str(Path(source).resolve())
    chosen = attention_kernel(source, spec, device)

    def load(attention: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            source,
            revision=spec.revision,
            trust_remote_code=spec.trustRemoteCode,
            dtype=torch_dtype(spec, on_gpu),
            attn_implementation=attention,
        )

    kernels = [chosen] + [k for k in ("sdpa", "eager") if k != chosen]
    refusals: list[str] = []
    model = None
    for kernel in kernels:  # a kernel this model or machine refuses (Gemma 2 and sdpa, no flash-attn): the next
        try:
            model = load(kernel)
            break
        except (ImportError, ValueError) as exc:
            if "attention" not in str(exc).lower() and "attn" not in str(exc).lower():
                raise TrainerFailure(Reason.MODEL_MISSING, f"no loadable model at {spec.uri}{_hub_hint(spec)}: {exc}") from exc
            refusals.append(f"{kernel}: {str(exc).splitlines()[0][:200]}")
        except OSError as exc:
            raise TrainerFailure(Reason.MODEL_MISSING, f"no loadable model at {spec.uri}{_hub_hint(spec)}: {exc}") from exc
    if model is None:
        raise TrainerFailure(
            Reason.ATTENTION_UNSUPPORTED,
            f"model.attnImplementation: no attention kernel this model accepts here ({'; '.join(refusals)})",
        )
    if refusals:
        emit(
            Notice(
                message=f"model.attnImplementation {spec.attnImplementation}{'' if chosen == spec.attnImplementation else f' ({chosen})'} cannot load this model here "
                f"({refusals[0].split(': ', 1)[1]}); using {model.config._attn_implementation} attention"
            )
        )
    model.config.use_cache = False
    return model


HUB_PROBE_SECONDS = 10.0


def check_hub_model(spec: ModelSpec) -> None:
    """Before transformers' own downloads (which retry a missing network for about a minute): a hub id must be in
    this machine's hub cache or answer on the hub within seconds, else MODEL_MISSING at once, with the hint."""
    import os

    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec.uri, "config.json", revision=spec.revision), str):
        return  # cached: transformers reads it from there
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise TrainerFailure(
            Reason.MODEL_MISSING, f"{spec.uri} is not in the hub cache and HF_HUB_OFFLINE is set{_hub_hint(spec)}"
        )
    try:
        model_info(spec.uri, revision=spec.revision, timeout=HUB_PROBE_SECONDS)
    except Exception as exc:  # not found, no network, refused: the same answer, said at once
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TrainerFailure(Reason.MODEL_MISSING, f"no model {spec.uri} on the hub ({why}){_hub_hint(spec)}") from exc


def _hub_hint(spec: ModelSpec) -> str:
    """A model.uri that is neither s3:// nor a ./ or / path is read as a hub id: say so, in case a folder was meant."""
    uri = spec.uri
    if uri.startswith(("s3://", "/", "./", "../")):
        return ""
    return f" (read as a hub id since it is not a directory here; write ./{uri} for a local folder)"


def linear_module_names(model: Any) -> list[str]:
    """Short names of the layers LoRA can adapt (what a user may put in lora.targetModules): linear layers, and the
    Conv1D layers GPT-2-style models use in their place."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, Conv1D)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, kinds)}
    return sorted(names)


def moe_target_names(model: Any) -> set[str]:
    """Target names peft maps onto a mixture-of-experts model's fused expert parameters (Mixtral's w1, w2, w3 are
    one gate_up_proj and one down_proj tensor per layer in transformers 5): accepted though no module has them."""
    try:
        from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN, _MOE_TARGET_MODULE_MAPPING
    except ImportError:
        return set()
    family = _MODEL_TO_CONVERSION_PATTERN.get(getattr(model.config, "model_type", None))
    return set(_MOE_TARGET_MODULE_MAPPING.get(family or "", {}))


def check_targets(model: Any, lora: LoraSpec) -> None:
    if lora.targetModules == [ALL_LINEAR]:
        return
    modules = [name for name, _ in model.named_modules()]
    mapped = moe_target_names(model)
    experts = expert_parameters(model)
    missing = []
    for target in lora.targetModules:
        if target in mapped:
            continue
        escaped = re.escape(target).replace(r"\*", ".*")
        pattern = re.compile(r"(^|\.)" + escaped + "$")
        if not any(pattern.search(name) for name in modules):  # a parameter is no module: peft cannot wrap it so
            missing.append(target)
    if missing:
        raise TrainerFailure(Reason.TARGET_MODULES_NOT_FOUND, targets_message(model, missing, mapped, experts))


def expert_parameters(model: Any) -> list[str]:
    """Short names of a mixture-of-experts model's fused expert parameters (transformers 5: gate_up_proj, down_proj)."""
    return sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_parameters() if ".experts." in f".{name}"})


def targets_message(model: Any, missing: list[str], mapped: set[str], experts: list[str]) -> str:
    """What lora.targetModules may name on this model: its linear layers, and how its experts are reached."""
    text = f"lora.targetModules {missing} match no layer of the model; its linear layers are: "
    text += ", ".join(linear_module_names(model))
    if experts:
        names = ", ".join(sorted(mapped - {"gate"})) or "all-linear"
        text += (
            f"; its experts are fused parameters ({', '.join(experts)}), not layers: target them with {names} "
            "(peft maps those onto them) or all-linear"
        )
    elif mapped:
        text += ", " + ", ".join(sorted(mapped))
    return text


def fused_targets(model: Any, config: Any) -> list[str]:
    """The expert parameters a LoRA config will reach on this model (peft rewrites targets such as all-linear or
    Mixtral's w1 onto transformers 5's fused expert tensors): previewed on a copy, so nothing is wrapped twice."""
    try:
        from peft.utils.transformers_weight_conversion import (
            convert_peft_config_for_transformers,
            get_model_conversion_mapping,
        )
    except ImportError:
        return []
    preview = copy.deepcopy(config)
    convert_peft_config_for_transformers(preview, model=model, conversions=get_model_conversion_mapping(model))
    return sorted(preview.target_parameters or [])


def add_lora(model: Any, lora: LoraSpec, seed: int) -> tuple[Any, dict[str, Any]]:
    """Wrap the model with a fresh LoRA adapter; every base weight is frozen. Returns the model and what was
    changed from the spec to make it work (recorded in the manifest): peft's wrappers for fused expert parameters
    (Mixtral, OLMoE) cannot apply dropout, so on such models the adapter trains with dropout 0, and says so."""
    import torch
    from peft import LoraConfig, get_peft_model

    check_targets(model, lora)

    def config(dropout: float) -> Any:
        return LoraConfig(
            r=lora.r,
            lora_alpha=int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha,
            lora_dropout=dropout,
            target_modules=ALL_LINEAR if lora.targetModules == [ALL_LINEAR] else list(lora.targetModules),
            bias=lora.bias,
            use_rslora=lora.useRslora,
            task_type="CAUSAL_LM",
        )

    chosen, adjusted = config(lora.dropout), {}
    fused = fused_targets(model, chosen) if lora.dropout else []
    if fused:
        chosen = config(0.0)
        adjusted["lora.dropout"] = {
            "asked": lora.dropout,
            "used": 0.0,
            "why": f"the model's experts are fused parameters ({', '.join(fused)}) and peft's wrappers for them "
            "cannot apply dropout",
        }
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, chosen), adjusted
    except ValueError as exc:  # peft's NoMatchingPeftModuleError: whatever check_targets let through, said the same way
        if "not found in the base model" not in str(exc):
            raise
        missing = list(lora.targetModules)
        raise TrainerFailure(
            Reason.TARGET_MODULES_NOT_FOUND, targets_message(model, missing, moe_target_names(model), expert_parameters(model))
        ) from exc
