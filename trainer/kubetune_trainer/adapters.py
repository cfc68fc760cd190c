"""Starting from an existing LoRA adapter (model.adapter): fetched as two allow-listed files (adapter_config.json
and adapter_model.safetensors: never a pickle), its config checked against the job's lora section before step 1,
its weights loaded into the job's adapter; for DPO also kept, frozen, as the reference (a second adapter, not a
second model)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
FILES = (CONFIG, WEIGHTS)  # what is fetched of an adapter prefix; anything else there is left alone
CONFIG_LIMIT = 1 << 20  # bytes of adapter_config.json read
REFERENCE = "reference"  # the frozen starting adapter's name, beside peft's "default"


def keep(relative: str) -> bool:
    return relative in FILES


def fetch(store: Any, uri: str, dest: Path, max_bytes: int) -> Path:
    """The adapter's two files on this machine (a local directory is read where it is), checked to be there."""
    what = "starting adapter (model.adapter)"
    if store.local_path(uri) is None:  # from the listing, before a byte is fetched
        _refuse_missing(uri, {o.relative for o in store.listing(uri, Reason.MODEL_MISSING, what)})
    directory = Path(store.download_prefix(uri, dest, Reason.MODEL_MISSING, what, max_bytes, Reason.MODEL_TOO_LARGE, keep=keep))
    _refuse_missing(uri, {name for name in FILES if (directory / name).is_file()})
    return directory


def _refuse_missing(uri: str, present: set[str]) -> None:
    missing = [name for name in FILES if name not in present]
    if missing:
        raise TrainerFailure(
            Reason.MODEL_MISSING,
            f"model.adapter {uri} is not a PEFT adapter: no {' or '.join(missing)} (the weights must be safetensors)",
        )


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    raw = path.read_bytes()[: CONFIG_LIMIT + 1]
    try:
        config = json.loads(raw) if len(raw) <= CONFIG_LIMIT else None
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise TrainerFailure(Reason.ADAPTER_MISMATCH, f"model.adapter: {CONFIG} is not a JSON object of at most 1 MiB")
    return config


def _modules(value: Any) -> Any:
    return sorted(value) if isinstance(value, list | set | tuple) else value


def mismatches(saved: dict[str, Any], made: Any) -> list[str]:
    """Where the adapter's saved config differs from the LoRA config this job made on this model (peft's, with
    all-linear already expanded to module names)."""
    fields: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "peft_type": ("peft_type", lambda v: str(getattr(v, "value", v))),
        "r": ("lora.r", int),
        "lora_alpha": ("lora.alpha", float),
        "bias": ("lora.bias", str),
        "use_rslora": ("lora.useRslora", bool),
        "target_modules": ("lora.targetModules", _modules),
        "target_parameters": ("lora.targetModules (fused expert parameters)", lambda v: _modules(v or [])),
    }
    out = []
    for key, (name, norm) in fields.items():
        theirs, mine = saved.get(key), getattr(made, key, None)
        try:
            equal = norm(theirs) == norm(mine)
        except (TypeError, ValueError):
            equal = False
        if not equal:
            out.append(
                f"{name}: the adapter has {json.dumps(_modules(theirs), default=str)}, the job {json.dumps(_modules(mine), default=str)}"
            )
    return out


def settings_problems(saved: dict[str, Any], lora: Any) -> list[str]:
    """The preflight's check, without the model: the adapter's settings against the spec's lora (target modules
    only when listed: all-linear is known once the model is built, and the trainer checks it then)."""
    from types import SimpleNamespace

    made = SimpleNamespace(
        peft_type="LORA",
        r=lora.r,
        lora_alpha=lora.alpha,
        bias=lora.bias,
        use_rslora=lora.useRslora,
        target_modules=saved.get("target_modules") if lora.targetModules == ["all-linear"] else list(lora.targetModules),
        target_parameters=saved.get("target_parameters"),
    )
    return mismatches(saved, made)


def refuse(problems: list[str]) -> None:
    if problems:
        raise TrainerFailure(
            Reason.ADAPTER_MISMATCH,
            "model.adapter was trained with other LoRA settings than this job's: "
            + "; ".join(problems)
            + ". Set lora to the adapter's settings",
        )


def start_from(model: Any, directory: Path, reference: bool) -> None:
    """Load the starting adapter's weights into the job's adapter ("default", made by model.add_lora with the
    job's lora settings), refusing one made with other settings; with `reference`, load it once more, frozen."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    refuse(mismatches(read_config(directory), model.peft_config["default"]))
    try:
        weights = load_file(str(directory / WEIGHTS))
    except Exception as exc:  # safetensors' own errors: a truncated or foreign file
        raise TrainerFailure(Reason.ADAPTER_MISMATCH, f"model.adapter: {WEIGHTS} is not readable: {exc}") from exc
    result = set_peft_model_state_dict(model, weights, adapter_name="default")
    expected = {name for name, _ in model.named_parameters() if ".default." in name and "lora_" in name}
    loaded = len(expected) - len([k for k in result.missing_keys if ".default." in k and "lora_" in k])
    if result.unexpected_keys or loaded != len(expected):
        raise TrainerFailure(
            Reason.ADAPTER_MISMATCH,
            f"model.adapter's weights do not fit this model's adapter: {len(result.unexpected_keys)} tensors match no "
            f"LoRA layer, {len(expected) - loaded} LoRA layers got no tensor (another base model?)",
        )
    if reference:
        model.load_adapter(str(directory), adapter_name=REFERENCE, is_trainable=False)
        for name, parameter in model.named_parameters():
            if f".{REFERENCE}." in name:
                parameter.requires_grad_(False)


@contextlib.contextmanager
def active(model: Any, name: str) -> Iterator[None]:
    """Every LoRA layer computes with adapter `name` for a while (no requires_grad flag changes, unlike peft's
    set_adapter: the optimizer's view stays as it is)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [m._active_adapter for m in layers]
    try:
        for layer in layers:
            layer._active_adapter = name
        yield
    finally:
        for layer, was in zip(layers, before, strict=True):
            layer._active_adapter = was
