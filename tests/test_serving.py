"""Servable, checked before training and after (issue 26): the LoRA settings vLLM and KServe's LLMInferenceService
cannot load are refused by the spec's rules (tests/cases.py runs them offline, in the CRD and at admission); the
adapter a run writes is checked again before _SUCCESS, here on real PEFT adapters, servable and hand-broken; and
`kubetune serve` renders the LLMInferenceService (examples/serving/, which the cluster tier dry-runs against KServe's
CRD) and the vllm serve command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.job import FineTuneJobSpec
from kubetune_api.manifests import dump, load
from kubetune_api.serving import VLLM_MODULES, ServingSpec, adapter_problems
from kubetune_trainer.recipe.outputs import serving_problems

from .conftest import ROOT, job, kubetune

SERVED = ROOT / "examples" / "serving" / "finetunejob.yaml"


def spec(**serving: Any) -> FineTuneJobSpec:
    body = job(**{"spec.output.serving": serving})["spec"]
    return FineTuneJobSpec.model_validate(body)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", hidden=32, layers=2, heads=2, seed=0)


def adapter(model_dir: Path, out: Path, **lora: Any) -> Path:
    """A real PEFT adapter of the tiny model, saved as a run saves it."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    config = peft.LoraConfig(task_type="CAUSAL_LM", **{"r": 16, "target_modules": "all-linear", **lora})
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


def test_a_written_adapter_passes_the_check_and_hand_broken_ones_fail_it(tiny_model: Path, tmp_path: Path) -> None:
    served = spec(vllm={"maxLoraRank": 16}, kserve={})
    assert serving_problems(served, adapter(tiny_model, tmp_path / "ok")) == []
    wide = adapter(tiny_model, tmp_path / "r24", r=24)
    assert serving_problems(served, wide) == [
        "rank 24 is not one vLLM serves (8, 16, 32, 64, 128, 256, 320, 512)",
        "rank 24 is above output.serving.vllm.maxLoraRank 16",
    ]
    saved = adapter(tiny_model, tmp_path / "saved", modules_to_save=["lm_head"])
    problems = serving_problems(served, saved)
    assert any(p.startswith("modules_to_save (lm_head)") for p in problems), problems
    assert any(p.startswith("tensors other than LoRA weights: ") and "lm_head" in p for p in problems), problems
    head = adapter(tiny_model, tmp_path / "head", target_modules=["q_proj", "lm_head"])
    assert any("lm_head not adapted by vLLM" in p for p in serving_problems(served, head))
    biased = adapter(tiny_model, tmp_path / "bias", bias="lora_only")
    assert any(p.startswith("bias 'lora_only'") for p in serving_problems(served, biased))
    assert serving_problems(spec(), wide) == []  # no serving target named: nothing to check


def test_the_rank_limit_of_each_target_is_checked_on_the_written_adapter() -> None:
    config = {"r": 64, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    tensors = ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    both = ServingSpec.model_validate({"vllm": {}, "kserve": {}})
    assert adapter_problems(config, tensors, both) == ["rank 64 is above output.serving.vllm.maxLoraRank 16"]
    assert adapter_problems(config, tensors, ServingSpec.model_validate({"kserve": {}})) == []
    odd = {**config, "r": 16, "use_dora": True, "rank_pattern": {"q_proj": 8}, "target_modules": "model.*attn.*"}
    problems = adapter_problems(odd, tensors, both)
    assert "DoRA (use_dora) is not served by vLLM" in problems and any("per-module ranks" in p for p in problems)
    assert any(p.startswith("target modules: ") for p in problems)


def test_every_module_vllm_adapts_is_allowed_and_the_output_head_is_not() -> None:
    for module in VLLM_MODULES:
        FineTuneJobSpec.model_validate(job(**{"spec.lora.targetModules": [module], "spec.output.serving": {"vllm": {}}})["spec"])
    with pytest.raises(ValueError, match=r"lora\.targetModules must be all-linear or modules vLLM adapts"):
        FineTuneJobSpec.model_validate(
            job(**{"spec.lora.targetModules": ["embed_tokens"], "spec.output.serving": {"kserve": {}}})["spec"]
        )


def test_serve_renders_the_shipped_llm_inference_service_and_the_vllm_command() -> None:
    rendered = kubetune("serve", str(SERVED))
    assert rendered.returncode == 0, rendered.stderr
    shipped = (ROOT / "examples" / "serving" / "llminferenceservice.yaml").read_text()
    assert load(rendered.stdout.encode())[0].body == load(shipped.encode())[0].body, "run `kubetune serve` on the example again"
    (service,) = [d.body for d in load(rendered.stdout.encode())]
    model = service["spec"]["model"]
    assert model["uri"] == "s3://models/llama-3.2-1b/" and model["name"] == "llama-3.2-1b"
    assert model["lora"]["adapters"] == [
        {"name": "support-bot-served", "uri": "s3://adapters/team-a/support-bot-served/adapter/"}
    ]
    (main,) = service["spec"]["template"]["containers"]
    rank = main["args"][main["args"].index("--max-lora-rank") + 1]
    module = json.loads(main["args"][main["args"].index("--lora-modules") + 1])
    assert rank == "64" and module == {
        "name": "support-bot-served",
        "path": "/mnt/adapters/support-bot-served",
        "base_model_name": "llama-3.2-1b",
    }
    (fetch,) = service["spec"]["template"]["initContainers"]
    assert fetch["args"] == ["s3://adapters/team-a/support-bot-served/adapter/", "/mnt/adapters/support-bot-served"]
    secrets = [e for e in fetch["env"] if "valueFrom" in e]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in secrets} == {"s3-credentials"}  # references, never values
    command = kubetune("serve", "--vllm", str(SERVED))
    assert (
        command.returncode == 0 and "vllm serve ./llama-3.2-1b --served-model-name llama-3.2-1b --enable-lora" in command.stdout
    )
    assert "--max-lora-rank 32 --lora-modules" in command.stdout and "aws s3 cp --recursive" in command.stdout


def test_serve_checks_the_job_against_the_server_it_renders_for(tmp_path: Path) -> None:
    """A job that names no serving target is checked as if it named the one rendered, in validate's words."""
    wide = tmp_path / "wide.yaml"
    wide.write_text(dump(job(**{"spec.lora.r": 128})))
    refused = kubetune("serve", str(wide))
    assert refused.returncode == 1
    assert "spec.lora.r: lora.r must be at most output.serving.kserve.maxLoraRank" in refused.stderr
    assert "(served by kserve)" in refused.stderr
    assert kubetune("serve", "--vllm", str(wide)).returncode == 1
    hub = tmp_path / "hub.yaml"
    hub.write_text(dump(job(**{"spec.model.uri": "meta-llama/Llama-3.2-1B"})))
    done = kubetune("serve", str(hub))
    assert done.returncode == 0 and "uri: hf://meta-llama/Llama-3.2-1B" in done.stdout
