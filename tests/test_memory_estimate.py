"""The memory estimate (kubetune_api.memory, what the preflight reports and WontFit is decided on) against
measured peaks: on this machine's CPUs, real `kubetune run` steps measured through torch's profiler; on a GPU, the
figures bench/memory_bench.py --gpu recorded on an H200 (tests/fixtures/memory-h200.json), re-estimated with
today's arithmetic. Every case must be within 25%."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.job import FineTuneJobSpec
from kubetune_api.memory import bucket_elements, estimate, safetensors_sizes, shape_from_dir, shape_of

from .conftest import ROOT
from .model_helpers import LLAMA_8B

FIXTURE = ROOT / "tests" / "fixtures" / "memory-h200.json"
TOLERANCE = 0.25


def spec(**over: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "model": {"uri": "/models/base"},
        "dataset": {"train": "/data/train.jsonl", "maxSeqLength": over.pop("seq", 2048), "packing": True},
        "lora": {"r": 16, "alpha": 32, "dropout": over.pop("dropout", 0.05)},
        "training": {
            "microBatchSize": over.pop("micro", 2),
            "gradientCheckpointing": over.pop("checkpointing", False),
            "chunkedLoss": over.pop("chunked", None),
        },
        "deepspeed": {"zeroStage": over.pop("stage", 2), "offload": over.pop("offload", "none")},
        "workers": {"replicas": over.pop("replicas", 1), "gpusPerWorker": over.pop("gpus", 1)},
        "output": {"uri": "/out"},
    }
    assert not over, over
    return FineTuneJobSpec.model_validate(body)


def test_a_known_model_has_its_published_parameter_count() -> None:
    shape = shape_of(LLAMA_8B)
    assert abs(shape.params - 8.03e9) / 8.03e9 < 0.01  # Llama 3.1 8B: 8.03B parameters
    gpt2 = shape_of({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257})
    assert not gpt2.gated and gpt2.intermediate == 3072
    assert abs(gpt2.params - 124e6) / 124e6 < 0.03  # GPT-2 small, tied embeddings


def test_zero3_offload_checkpointing_and_more_gpus_each_lower_the_estimate() -> None:
    shape = shape_of(LLAMA_8B)
    base = estimate(shape, spec(stage=2)).total
    assert estimate(shape, spec(stage=3, gpus=8)).total < base
    assert estimate(shape, spec(stage=3, gpus=8)).total < estimate(shape, spec(stage=3, gpus=2)).total
    assert estimate(shape, spec(stage=3, gpus=8, offload="all")).total < estimate(shape, spec(stage=3, gpus=8)).total
    assert estimate(shape, spec(checkpointing=True)).total < base
    assert estimate(shape, spec(seq=4096)).total > base
    # bf16 weights of an 8B model: about 15 GiB on every GPU below ZeRO-3
    assert 14.5 * 2**30 < estimate(shape, spec(stage=2)).parts["weights"] < 15.5 * 2**30


def test_buckets_follow_the_adapter_not_deepspeeds_default() -> None:
    assert bucket_elements(3_000_000) == 3_000_000
    assert bucket_elements(10) == 1_000_000
    assert bucket_elements(10**9) == 50_000_000


def test_safetensors_headers_give_the_tensor_sizes(tmp_path: Path) -> None:
    header = json.dumps(
        {"__metadata__": {"format": "pt"}, "a": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]}}
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_8B, "num_hidden_layers": 1}))
    assert safetensors_sizes(header) == [32]
    assert shape_from_dir(tmp_path).tensors == (32,)


def _gpu_cases() -> list[dict[str, Any]]:
    return list(json.loads(FIXTURE.read_text())["cases"])


@pytest.mark.parametrize("case", _gpu_cases(), ids=lambda c: c["case"])
def test_the_estimate_is_within_25_percent_of_the_h200_peaks(case: dict[str, Any]) -> None:
    guess = estimate(
        shape_of(case["config"]),
        spec(
            seq=case["maxSeqLength"],
            micro=case["microBatchSize"],
            stage=case["zeroStage"],
            checkpointing=case["gradientCheckpointing"],
            dropout=case["loraDropout"],
            chunked=False,  # measured before the chunked loss: the whole batch's logits
        ),
        world=1,
        gpu=True,
    )
    ratio = guess.total / case["peakBytes"]
    assert abs(ratio - 1) <= TOLERANCE, f"{case['case']}: estimate / measured = {ratio:.2f} ({guess.parts})"


def _bench() -> Any:
    loaded = importlib.util.spec_from_file_location("memory_bench", ROOT / "bench" / "memory_bench.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    sys.modules["memory_bench"] = module
    loaded.loader.exec_module(module)
    return module


# the CPU cases of bench/memory_bench.py this test runs: Llama (a large vocabulary, gradient checkpointing),
# Qwen2 under ZeRO-3 on two processes, and GPT-2 (no gate, a composite GELU, the model's own dropout)
MEASURED = (2, 4, 5, 6)


@pytest.mark.trainer
@pytest.mark.parametrize("index", MEASURED)
def test_the_estimate_is_within_25_percent_of_measured_cpu_peaks(index: int, tmp_path: Path) -> None:
    bench = _bench()
    case = bench.CPU_CASES[index]
    train = bench.measure(tmp_path, case, False, index)
    ratio = train["estimatedMemoryBytes"] / train["peakMemoryBytes"]
    assert train["peakMemoryMeasuredBy"] == "profiler"
    assert abs(ratio - 1) <= TOLERANCE, f"{bench.label(case)}: estimate / measured = {ratio:.2f} ({train})"


def test_the_preflight_advises_a_larger_micro_batch_when_the_card_is_half_empty() -> None:
    from kubetune_api.preflight import roomier

    shape = shape_of(LLAMA_8B)
    h200 = 141 * 10**9
    accumulating = spec(micro=1, seq=4096, dropout=0.0)
    accumulating = accumulating.model_copy(
        update={"training": accumulating.training.model_copy(update={"gradientAccumulationSteps": 8})}
    )
    advice = roomier(shape, accumulating, h200, estimate(shape, accumulating, gpu=True).total)
    assert advice is not None and "(the same global batch)" in advice
    micro = int(advice.split("microBatchSize: ")[1].split()[0])
    assert micro in (2, 4, 8) and f"gradientAccumulationSteps: {8 // micro}" in advice
    single = spec(micro=1, seq=4096)
    assert (
        roomier(shape, single, h200, estimate(shape, single, gpu=True).total) is None
    )  # no accumulation to trade: the training would change


def test_the_chunked_loss_leaves_one_chunk_of_logits_in_the_estimate() -> None:
    shape = shape_of(LLAMA_8B)
    whole = estimate(shape, spec(micro=1, seq=4096).model_copy(deep=True))
    body = spec(micro=1, seq=4096).model_dump(mode="json")
    body["training"]["chunkedLoss"] = False
    plain = estimate(shape, FineTuneJobSpec.model_validate(body))
    assert whole.parts["logits"] == 2092 * 128_256 * 12  # the default: chunked for a 128K vocabulary
    assert plain.parts["logits"] == 4096 * 128_256 * 12
