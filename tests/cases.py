"""Tables of cases shared by the layers that must agree (pydantic, the CRD, the API server)."""

from __future__ import annotations

from typing import Any

from .conftest import ROOT

CRD_FILE = ROOT / "crds" / "finetunejob.yaml"
INVALID_CASES: list[tuple[dict[str, Any], str]] = [
    ({"spec.lora.r": -1}, "spec.lora.r"),
    ({"spec.lora.r": 2048}, "spec.lora.r"),
    ({"spec.lora.r": "16"}, "spec.lora.r"),
    ({"spec.lora.dropout": 1.0}, "spec.lora.dropout"),
    ({"spec.lora.targetModules": []}, "spec.lora.targetModules"),
    ({"spec.lora.targetModules": ["all-linear", "q_proj"]}, "spec.lora.targetModules"),
    ({"spec.lorra": {}}, "spec.lorra"),
    ({"spec.model.uri": "http://example.com/model"}, "spec.model.uri"),
    ({"spec.dataset.train": "s3://data/train.csv"}, "spec.dataset.train"),
    ({"spec.dataset.validation": "s3://data/v.jsonl", "spec.dataset.validationSplit": 0.1}, "spec.dataset.validationSplit"),
    ({"spec.dataset.validationSplit": 0.9}, "spec.dataset.validationSplit"),
    ({"spec.dataset.format": "orca"}, "spec.dataset.format"),
    ({"spec.deepspeed.zeroStage": 4}, "spec.deepspeed.zeroStage"),
    ({"spec.deepspeed.offload": "all"}, "spec.deepspeed.offload"),
    ({"spec.training.learningRate": 0}, "spec.training.learningRate"),
    ({"spec.training.globalBatchSize": 7}, "spec.training.globalBatchSize"),
    ({"spec.training.warmupSteps": 10, "spec.training.maxSteps": 5}, "spec.training.warmupSteps"),
    ({"spec.workers.gpusPerWorker": 8, "spec.workers.processesPerWorker": 4}, "spec.workers.processesPerWorker"),
    ({"spec.workers.resources": {"limits": {"nvidia.com/gpu": 2}}}, "spec.workers.resources.limits"),
    ({"spec.workers.resources": {"requests": {"cpu": 0.5}}}, "spec.workers.resources.requests.cpu"),
    ({"spec.workers.resources": {"requests": {"memory": "lots"}}}, "spec.workers.resources.requests.memory"),
    ({"spec.workers.tolerations": [{"effect": "Sometimes"}]}, "spec.workers.tolerations[0].effect"),
    ({"spec.workers.env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "spec.workers.env"),
    ({"spec.storage.endpoint": "s3.example.com"}, "spec.storage.endpoint"),
    ({"spec.storage.credentialsSecret": "Bad_Name"}, "spec.storage.credentialsSecret"),
    ({"spec.runPolicy.backoffLimit": -1}, "spec.runPolicy.backoffLimit"),
    ({"spec.output": None}, "spec.output"),
    ({"spec.lora.r": 24, "spec.output.serving": {"vllm": {"maxLoraRank": 64}}}, "spec.lora.r"),
    ({"spec.lora.r": 32, "spec.output.serving": {"vllm": {}}}, "spec.lora.r"),
    ({"spec.lora.r": 128, "spec.output.serving": {"kserve": {}}}, "spec.lora.r"),
    ({"spec.output.serving": {"vllm": {"maxLoraRank": 24}}}, "spec.output.serving.vllm.maxLoraRank"),
    ({"spec.lora.bias": "all", "spec.output.serving": {"kserve": {}}}, "spec.lora.bias"),
    ({"spec.lora.targetModules": ["q_proj", "lm_head"], "spec.output.serving": {"vllm": {}}}, "spec.lora.targetModules"),
    ({"spec.lora.targetModules": ["layers.*.q_proj"], "spec.output.serving": {"kserve": {}}}, "spec.lora.targetModules"),
    ({"spec.output.serving": {"tgi": {}}}, "spec.output.serving.tgi"),
    ({"metadata.name": "a" * 53}, "metadata.name"),
    ({"metadata.name": "9lives"}, "metadata.name"),
    ({"kind": "PyTorchJob"}, "kind"),
    ({"apiVersion": "kubetune.dev/v1"}, "apiVersion"),
]


# apiVersion and kind are the API server's routing, not its schema, so those cases are pydantic's alone.
SCHEMA_CASES = [changes for changes, path in INVALID_CASES if path not in ("kind", "apiVersion")]
