"""Running `kubetune run` against the test S3 server, and reading what it printed and wrote."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from kubetune_api import events
from kubetune_api.dataset import DatasetSpec
from kubetune_api.manifests import dump
from kubetune_trainer.data import batching, formats
from kubetune_trainer.recipe import evaluate

from .conftest import ROOT
from .s3server import S3Server


def manifest(name: str, s3: S3Server, spec: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "workers": {"replicas": 2, "gpusPerWorker": 0},
        "storage": {"endpoint": s3.endpoint, "region": "us-east-1", "addressingStyle": "path"},
    }
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": base}


EVENTS: TypeAdapter[events.Event] = TypeAdapter(Annotated[events.Event, Field(discriminator="event")])


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every structured line, each checked against its model (kubetune_api.events): a line that is not what its
        model says fails the test."""
        out = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                try:
                    found = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(found, dict) and "event" in found:
                    EVENTS.validate_python(found)
                    out.append(found)
        return out

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def summary(self) -> dict[str, Any]:
        return self.of("summary")[-1]


def command(body: dict[str, Any], tmp: Path, processes: int = 2) -> list[str]:
    path = tmp / f"{body['metadata']['name']}.yaml"
    path.write_text(dump(body))
    work = tmp / f"work-{body['metadata']['name']}"
    return [
        sys.executable,
        "-m",
        "kubetune_cli",
        "run",
        str(path),
        "--processes",
        str(processes),
        "--progress",
        "json",
        "--work-dir",
        str(work),
    ]


def store_for(s3: S3Server, monkeypatch: Any, bucket: str) -> Any:
    """The trainer's Store on the test S3 server, with the credentials in the environment as a pod has them."""
    from kubetune_api.storage import StorageSpec
    from kubetune_trainer.storage import Store

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    s3.bucket(bucket)
    return Store(StorageSpec(endpoint=s3.endpoint, region="us-east-1", addressingStyle="path"))


def environment(s3: S3Server, tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **s3.env, "KUBETUNE_CACHE": str(tmp / "cache"), **extra}


def start(body: dict[str, Any], s3: S3Server, tmp: Path) -> subprocess.Popen[str]:
    """`kubetune run` of a job in the background, its output piped (a test stops or signals it while it runs)."""
    return subprocess.Popen(
        command(body, tmp), env=environment(s3, tmp), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(body: dict[str, Any], s3: S3Server, tmp: Path, processes: int = 2, timeout: int = 600, **env: str) -> Outcome:
    result = subprocess.run(
        command(body, tmp, processes), env=environment(s3, tmp, **env), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


def downloaded_adapter(s3: S3Server, out: str, directory: Path) -> Path:
    """The adapter a run wrote under output.uri `out`, in a local directory."""
    directory.mkdir(exist_ok=True)
    for key in s3.keys(out + "adapter/"):
        (directory / key).write_bytes(s3.get(out + "adapter/" + key))
    return directory


def reloaded_eval_loss(
    s3: S3Server, out: str, tiny_model: Path, dataset: dict[str, Any], records: list[dict[str, Any]], tmp: Path
) -> float:
    """Load the adapter from S3 with plain PEFT and evaluate it on the held-out records, in one process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = downloaded_adapter(s3, out, tmp / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    spec = DatasetSpec.model_validate({"train": "./t.jsonl", **dataset})
    samples, _ = formats.tokenize(records, spec, tokenizer, "held-out")
    batches = evaluate.local_batches(batching.rows(samples, spec.maxSeqLength, spec.packing), 4)
    sums = evaluate.eval_sums(lambda inputs: model(**inputs, use_cache=False).logits, batches, tokenizer.pad_token_id, "cpu")
    return evaluate.metrics(sums)["evalLoss"]


def answers_with_plain_peft(
    s3: S3Server, out: str, tiny_model: Path, sample: dict[str, Any], max_new_tokens: int, tmp: Path
) -> dict[str, str]:
    """What the written adapter (and the base model, adapter disabled) answer to a samples.jsonl item's prompt, one
    prompt at a time, greedy, with plain PEFT in this process: the task evaluation judged that adapter, batched."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = downloaded_adapter(s3, out, tmp / "adapter-for-answers")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = torch.tensor([tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"]])
    said = {}
    for name in ("base", "adapter"):
        with torch.no_grad(), model.disable_adapter() if name == "base" else contextlib.nullcontext():
            out_ids = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out_ids[0, ids.shape[1] :].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        said[name] = tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]
    return said


def resumable(name: str, s3: S3Server, stored: dict[str, str], out: str, **training: Any) -> dict[str, Any]:
    """A small job on the stored tiny model and data whose runs are stopped and resumed (training settings given)."""
    return manifest(
        name,
        s3,
        {
            "model": {"uri": stored["model"]},
            "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128},
            "lora": {"r": 4, "alpha": 8},
            "training": {"microBatchSize": 4, "evalEverySteps": 0, **training},
            "output": {"uri": out},
        },
    )
