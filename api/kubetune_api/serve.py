"""`kubetune serve`: what serves a job's adapter over its base model. A KServe LLMInferenceService
(serving.kserve.io/v1alpha2: KServe's storage initializer fetches the base model; an init container of the same
image fetches the adapter into a volume vLLM loads it from, with --enable-lora, --max-lora-rank and --lora-modules
in the JSON form that names the base model), and the same vLLM arguments for people who run vLLM directly."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from . import layout
from ._types import is_s3
from .job import FineTuneJob
from .names import JOB_NAME_LABEL
from .serving import KSERVE_MAX_RANK, VLLM_DEFAULT_MAX_RANK

KSERVE_API_VERSION = "serving.kserve.io/v1alpha2"
STORAGE_INITIALIZER = "kserve/storage-initializer:v0.17.0"  # KServe's own, the version of the CRDs tested against
ADAPTERS = "/mnt/adapters"  # where the adapter volume is mounted in the vLLM container
MODELS = "/mnt/models"  # where KServe's storage initializer puts the base model


class NotServable(ValueError):
    """The job's base model or output is not somewhere a server can fetch it from."""


def base_model_uri(job: FineTuneJob) -> str:
    """The base model as KServe's storage initializer fetches it: s3:// as it is, a hub id as hf://org/name."""
    uri = job.spec.model.uri
    if is_s3(uri):
        return uri
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", uri):
        return f"hf://{uri}"
    raise NotServable(f"spec.model.uri: {uri} is a local path; a server fetches the base model from s3:// or the hub")


def base_model_name(job: FineTuneJob) -> str:
    """The name requests use for the base model: the last segment of its URI (llama-3.2-1b)."""
    return job.spec.model.uri.rstrip("/").rsplit("/", 1)[-1]


def adapter_name(job: FineTuneJob) -> str:
    """The name requests use for the adapter: the job's."""
    return str(job.metadata.get("name") or "adapter")


def adapter_uri(job: FineTuneJob) -> str:
    if not is_s3(job.spec.output.uri):
        raise NotServable(f"spec.output.uri: {job.spec.output.uri} is a local path; a server fetches the adapter from s3://")
    return layout.adapter_uri(job.spec.output.uri)


def max_rank(job: FineTuneJob, target: str) -> int:
    """The --max-lora-rank to give vLLM: the job's output.serving for that target, else the target's default."""
    serving = job.spec.output.serving
    named = getattr(serving, target, None) if serving is not None else None
    if named is not None:
        return int(named.maxLoraRank)
    return KSERVE_MAX_RANK if target == "kserve" else VLLM_DEFAULT_MAX_RANK


def vllm_arguments(job: FineTuneJob, adapter_path: str, rank: int) -> list[str]:
    """vLLM's LoRA arguments: the adapter under the job's name, over the base model's served name."""
    module = {"name": adapter_name(job), "path": adapter_path, "base_model_name": base_model_name(job)}
    return ["--enable-lora", "--max-lora-rank", str(rank), "--lora-modules", json.dumps(module)]


def _storage_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """How KServe's storage initializer reaches the job's storage: the endpoint and region as values, the credentials
    as references to the job's Secret (never their values)."""
    storage = job.spec.storage
    env: list[dict[str, Any]] = []
    if storage.endpoint:  # the variables KServe's storage initializer reads (kserve_storage.py)
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if not storage.verifyTls:
        env.append({"name": "S3_VERIFY_SSL", "value": "0"})
    if storage.addressingStyle == "virtual":
        env.append({"name": "S3_USER_VIRTUAL_BUCKET", "value": "true"})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    if storage.credentialsSecret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": storage.credentialsSecret, "key": key}}})
    return env


def llm_inference_service(job: FineTuneJob, namespace: str | None = None, service_account: str | None = None) -> dict[str, Any]:
    """The LLMInferenceService that serves the base model with this job's adapter."""
    name = adapter_name(job)
    local = f"{ADAPTERS}/{name}"
    metadata: dict[str, Any] = {"name": name}
    if namespace or job.metadata.get("namespace"):
        metadata["namespace"] = namespace or job.metadata["namespace"]
    metadata["labels"] = {JOB_NAME_LABEL: name}
    pod: dict[str, Any] = {
        "initContainers": [
            {
                "name": "adapter-initializer",
                "image": STORAGE_INITIALIZER,
                "args": [adapter_uri(job), local],
                "env": _storage_env(job),
                "volumeMounts": [{"name": "adapters", "mountPath": ADAPTERS}],
            }
        ],
        "containers": [
            {
                "name": "main",
                "args": vllm_arguments(job, local, max_rank(job, "kserve")),
                "volumeMounts": [{"name": "adapters", "mountPath": ADAPTERS, "readOnly": True}],
            }
        ],
        "volumes": [{"name": "adapters", "emptyDir": {}}],
    }
    if service_account:  # the platform's serving account, never the training one (which may write adapters)
        pod["serviceAccountName"] = service_account
    return {
        "apiVersion": KSERVE_API_VERSION,
        "kind": "LLMInferenceService",
        "metadata": metadata,
        "spec": {
            "model": {
                "uri": base_model_uri(job),
                "name": base_model_name(job),
                "lora": {"adapters": [{"name": name, "uri": adapter_uri(job)}]},
            },
            "template": pod,
        },
    }


def vllm_command(job: FineTuneJob) -> str:
    """`vllm serve` for people who run vLLM directly, after fetching the adapter (and an s3:// base model)."""
    base, name = base_model_uri(job), adapter_name(job)
    model = base.removeprefix("hf://") if base.startswith("hf://") else f"./{base_model_name(job)}"
    q = shlex.quote  # a key may hold $(...) or a quote: every word of a line people paste into a shell is quoted
    lines = [f"# fetch the adapter: aws s3 cp --recursive {q(adapter_uri(job))} {q('./' + name)}"]
    if is_s3(base):
        lines.append(f"# fetch the base model: aws s3 cp --recursive {q(base)} {q(model)}")
    argv = ["vllm", "serve", model, "--served-model-name", base_model_name(job)]
    argv += vllm_arguments(job, f"./{name}", max_rank(job, "vllm"))
    lines.append(" ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"
