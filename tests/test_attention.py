"""The varlen attention (kubetune_trainer.attention) against transformers' sdpa with its block-diagonal mask, for
every family that dispatches through transformers' attention interface and packs: the same logits and the same
LoRA-free gradients over packed rows with a padding run, on the CPU path the tests can run (each sample through
sdpa in turn). The CUDA kernel's equality is the GPU benchmark's recorded check (bench/gpu_bench.py)."""

from __future__ import annotations

import pytest
import torch

from kubetune_api.model import ModelSpec
from kubetune_trainer import attention
from kubetune_trainer.data import batching
from kubetune_trainer.model import PACKING_FAMILIES, attention_kernel, load_model

from .model_helpers import tiny


def packed_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    rows = []
    for lengths in ((7, 9, 4), (13, 3)):  # the second row is padded to the first's 20 tokens
        ids = torch.randint(1, 300, (sum(lengths),), generator=generator).tolist()
        positions = [p for n in lengths for p in range(n)]
        rows.append(batching.Row(ids, ids, positions))
    return batching.collate(rows, pad_id=0)


def families() -> list[str]:
    out = []
    for family in sorted(PACKING_FAMILIES):
        model = tiny(family)
        if attention.unsupported(model.config, type(model)) is None:
            out.append(family)
    return out


@pytest.mark.parametrize("family", families())
def test_varlen_attention_equals_sdpa_over_packed_rows(family: str) -> None:
    attention.register()
    batch = packed_batch()
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    results = []
    for kernel in ("sdpa", attention.VARLEN):
        torch.manual_seed(0)
        model = tiny(family)
        model.set_attn_implementation(kernel)
        extra = attention.bounds(batch["position_ids"], "cpu") if kernel == attention.VARLEN else {}
        logits = model(**inputs, **extra, use_cache=False).logits
        logits.float().logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (want, want_grads), (got, got_grads) = results
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), f"{family}: logits differ by {(got - want).abs().max():.3g}"
    assert want_grads.keys() == got_grads.keys()
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5, rtol=1e-3), f"{family}: {name}'s gradient differs"


def test_families_that_cannot_use_varlen_say_why() -> None:
    gemma2 = tiny("gemma2")
    assert "attn_logit_softcapping" in (attention.unsupported(gemma2.config, type(gemma2)) or "")
    assert len(families()) >= 10  # llama, mistral, qwen2, qwen3, gemma, phi3, olmo2, ...


def test_the_bounds_are_each_samples_and_the_padding_runs() -> None:
    found = attention.bounds(packed_batch()["position_ids"], "cpu")
    assert found["cu_seq_lens_q"].tolist() == [0, 7, 16, 20, 33, 36, 40]
    assert found["cu_seq_lens_q"].dtype == torch.int32 and found["max_length_q"] == 13


def test_auto_is_sdpa_on_the_cpu_and_an_explicit_varlen_runs_there(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    tiny("llama").save_pretrained(tmp_path / "llama")
    cpu = torch.device("cpu")
    assert attention_kernel(str(tmp_path / "llama"), ModelSpec(uri="./llama"), cpu) == "sdpa"
    model = load_model(str(tmp_path / "llama"), ModelSpec(uri="./llama", attnImplementation="varlen"), cpu)
    assert model.config._attn_implementation == attention.VARLEN
    assert "cannot run here" not in capsys.readouterr().out


def test_an_explicit_varlen_on_a_model_it_cannot_serve_says_so_and_runs_sdpa(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    tiny("gemma2").save_pretrained(tmp_path / "gemma2")
    model = load_model(str(tmp_path / "gemma2"), ModelSpec(uri="./gemma2", attnImplementation="varlen"), torch.device("cpu"))
    assert model.config._attn_implementation in ("sdpa", "eager")
    assert "model.attnImplementation varlen cannot run here (gemma2 caps its attention logits" in capsys.readouterr().out


@pytest.mark.parametrize("chunk", [1, 5, 7, 1000])
def test_the_chunked_loss_equals_the_whole_batch_loss_and_its_gradients(chunk: int) -> None:
    from kubetune_trainer.recipe import evaluate

    batch = packed_batch()
    labels = batch["labels"].clone()
    labels[0, :3] = batching.IGNORE  # a prompt that is not scored
    results = []
    for chunked in (False, True):
        model = tiny("llama")
        model.train()
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        if chunked:
            out = model(**inputs, output_hidden_states=True, logits_to_keep=torch.zeros(0, dtype=torch.long))
            assert out.logits.shape[1] == 0
            loss = evaluate.chunked_train_loss(out.hidden_states[-1], model.get_output_embeddings(), labels, chunk)
        else:
            loss = evaluate.train_loss(model(**inputs).logits, labels)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (want, want_grads), (got, got_grads) = results
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), (got, want)
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_the_chunked_loss_default_follows_the_vocabulary_method_and_stage() -> None:
    from kubetune_api.job import FineTuneJobSpec, chunked_loss, loss_chunk_tokens

    def spec(**extra: object) -> FineTuneJobSpec:
        return FineTuneJobSpec.model_validate(
            {"model": {"uri": "./m"}, "dataset": {"train": "./t.jsonl"}, "output": {"uri": "./out"}, **extra}
        )

    assert chunked_loss(spec(), 128_256) and not chunked_loss(spec(), 300)
    assert chunked_loss(spec(training={"chunkedLoss": True}), 300)
    assert not chunked_loss(spec(training={"chunkedLoss": False}), 128_256)
    assert not chunked_loss(spec(deepspeed={"zeroStage": 3}), 128_256)
    assert loss_chunk_tokens(128_256) == 2092


def test_on_a_gpu_auto_picks_varlen_unless_the_model_computes_in_float32(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    tiny("llama").save_pretrained(tmp_path / "llama")
    monkeypatch.setattr(attention, "kernel_available", lambda device: None)  # as on a GPU with the kernel
    gpu = torch.device("cuda")
    assert attention_kernel(str(tmp_path / "llama"), ModelSpec(uri="./llama"), gpu) == attention.VARLEN
    assert attention_kernel(str(tmp_path / "llama"), ModelSpec(uri="./llama", dtype="float32"), gpu) == "sdpa"
    assert capsys.readouterr().out == ""  # auto falls back silently
    explicit = ModelSpec(uri="./llama", dtype="float32", attnImplementation="varlen")
    assert attention_kernel(str(tmp_path / "llama"), explicit, gpu) == "sdpa"
    assert "FlashAttention computes in bfloat16 or float16, and model.dtype is float32" in capsys.readouterr().out
