"""The preflight: everything that can be checked on a CPU, with the job's own credentials, before a GPU is held.

Output writable (a probe object written and deleted; a finished output without overwrite), model reachable (its
config and tokenizer, not its weights), every record of the datasets in the shape its format needs, the token
count with the model's tokenizer (hence the steps), memory per GPU against the GPU type's, and the GPU-hours.

In a pod (the operator's preflight Job): `python -m kubetune_trainer.preflight`; the report is the termination
message. On a laptop: `kubetune preflight MANIFEST`, the same function.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_api import events, grace
from kubetune_api.conditions import Reason
from kubetune_api.contract import ENV_GPU, ENV_GPU_TYPE, ENV_GRACE, ENV_WORK_DIR, WorkerEnv
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.memory import Shape, estimate, gib, shape_from_dir, shape_of
from kubetune_api.preflight import (
    HEADROOM,
    GpuType,
    Report,
    evaluations,
    fit,
    hours,
    roomier,
    task_tokens,
    training_flops,
    wont_fit_message,
)
from kubetune_trainer import adapters
from kubetune_trainer.data import batching, prepared
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.inputs import data_bytes, fetch_data
from kubetune_trainer.model import load_tokenizer
from kubetune_trainer.recipe import outputs
from kubetune_trainer.spec_io import load_spec
from kubetune_trainer.storage import Store, join

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
PROBE = ".kubetune-preflight-"


def _failure(exc: BaseException) -> TrainerFailure:
    if isinstance(exc, TrainerFailure):
        return exc
    return TrainerFailure(Reason.TRAINER_ERROR, f"{type(exc).__name__}: {str(exc)[:300]}")


def check_output(spec: FineTuneJobSpec, store: Store) -> str:
    """A probe object written and deleted where the adapter will go; a finished output needs overwrite."""
    outputs.finished(spec, store)
    probe = join(spec.output.uri, PROBE + uuid.uuid4().hex[:12])
    store.write_text(probe, "kubetune preflight: this object is deleted at once\n")
    store.delete(probe)
    return f"{spec.output.uri} is writable (a probe object was written and deleted)"


def fetch_model_config(spec: FineTuneJobSpec, store: Store, work: Path) -> tuple[Path | str, Shape]:
    """The model's config and tokenizer files (never its weights) and its Shape. A directory here is read in place
    (its safetensors headers give exact tensor sizes); from object storage the config gives them."""
    uri = spec.model.uri
    if uri.startswith(("/", "./", "../")):
        if not Path(uri).is_dir():
            raise TrainerFailure(Reason.MODEL_MISSING, f"base model not found: {uri} is not a directory")
        return Path(uri).resolve(), shape_from_dir(Path(uri))
    if "://" in uri:
        local = work / "model"
        store.download_prefix(uri, local, Reason.MODEL_MISSING, "model", keep=lambda name: not name.endswith(WEIGHTS))
        if not (local / "config.json").is_file():
            raise TrainerFailure(Reason.MODEL_MISSING, f"no config.json under {uri}")
        return local, shape_of(json.loads((local / "config.json").read_text()))
    from transformers import AutoConfig  # a hub id: whatever this machine's hub cache or network gives

    from kubetune_trainer.model import check_hub_model

    check_hub_model(spec.model)

    try:
        config = AutoConfig.from_pretrained(uri, revision=spec.model.revision, trust_remote_code=spec.model.trustRemoteCode)
    except (OSError, ValueError) as exc:
        raise TrainerFailure(Reason.MODEL_MISSING, f"no model config for {uri}: {str(exc)[:200]}") from exc
    return uri, shape_of(config.to_dict())


def count_steps(
    spec: FineTuneJobSpec,
    tokenizer: Any,
    family: str,
    train: Path,
    validation: Path | None,
    store: Store | None = None,
    model_source: Path | str | None = None,
) -> dict[str, Any]:
    """Every record read, tokenized and packed exactly as the worker's launcher prepares them (prepared.py: record
    number and field on a bad one), hence the trainer's own step count. With a store, the prepared dataset is left
    beside the job's outputs, so the training pods start from it instead of preparing it again."""
    with tempfile.TemporaryDirectory(prefix="kubetune-preflight-") as scratch:
        out = Path(scratch) / "prepared"
        made = prepared.made_from(spec, str(model_source or ""), train, validation)
        meta = prepared.prepare(spec, tokenizer, family, train, validation, out, made_from=made)
        ready = prepared.load(out, len(tokenizer), spec.dataset.maxSeqLength, pairs=spec.method.type == "dpo")
        lengths = ready.train.lengths()
        plan = batching.step_plan(len(ready.train), spec.training, spec.workers.world_size)
        contents = None
        if store is not None:  # best effort: an output the job cannot write is the output check's to report
            with contextlib.suppress(Exception):  # boto3 raises its own S3UploadFailedError here
                contents = prepared.contents_digest(out)  # recorded in the report: the workers train on nothing else
                prepared.publish(store, out, prepared.uri_for(spec, made))
    return {
        "records": meta.records,
        "tokens": int(lengths.sum()),
        "evalTokens": meta.counts.validation.tokens,
        "evalSamples": meta.counts.validation.samples,
        "stepsPerEpoch": plan.steps_per_epoch,
        "totalSteps": plan.total_steps,
        "longest": int(lengths.max()),
        "packing": meta.packing,
        "pairs": meta.counts.train.pairs + meta.counts.validation.pairs,
        "preparedSha256": contents,
    }


def _stage(report: Report, name: Any, work: Callable[[], str]) -> tuple[Report, bool]:
    """Run one check; its failure is recorded and, if it is the first, becomes the report's reason."""
    try:
        return report.with_check(name, True, work()), True
    except Exception as exc:
        failure = _failure(exc)
        report = report.with_check(name, False, f"{failure.reason.value}: {failure.message}")
        return (report.failed(failure.reason, failure.message) if report.passed else report), False


def run(spec: FineTuneJobSpec, store: Store, work: Path, gpu_name: str | None, gpu: GpuType | None) -> Report:
    """Every check, each recorded; the first failure is the report's reason. Nothing here needs a GPU."""
    report = Report(passed=True)
    report, _ = _stage(report, "output", lambda: check_output(spec, store))
    found: dict[str, Any] = {}

    def model() -> str:
        found["source"], found["shape"] = fetch_model_config(spec, store, work)
        shape = found["shape"]
        found["tokenizer"] = load_tokenizer(str(found["source"]), spec.model)
        return f"{spec.model.uri}: {shape.family}, {shape.params / 1e9:.2f}B parameters, vocabulary {shape.vocab}"

    report, model_ok = _stage(report, "model", model)

    def datasets() -> str:
        data_bytes(spec, store)
        found["files"] = fetch_data(spec, store, work)
        return "reachable: " + ", ".join(u for u in (spec.dataset.train, spec.dataset.validation) if u)

    report, data_ok = _stage(report, "dataset", datasets)
    if spec.model.adapter is not None:

        def adapter() -> str:
            directory = adapters.fetch(store, spec.model.adapter or "", work / "adapter", 1 << 40)
            adapters.refuse(adapters.settings_problems(adapters.read_config(directory), spec.lora))
            return f"{spec.model.adapter}: a LoRA adapter with this job's settings (r {spec.lora.r}, alpha {spec.lora.alpha})"

        report, _ = _stage(report, "adapter", adapter)
    if model_ok and data_ok:

        def records() -> str:
            train, validation = found["files"]
            found["counts"] = count_steps(
                spec, found["tokenizer"], found["shape"].family, train, validation, store=store, model_source=found["source"]
            )
            c = found["counts"]
            pairs = f" ({c['pairs']} preference pairs)" if c.get("pairs") else ""
            return f"{c['records']} records in the shape {spec.dataset.format} needs{pairs}; {c['tokens']} tokens per epoch"

        report, _ = _stage(report, "records", records)
    counts = found.get("counts")
    if counts:
        keys = ("records", "tokens", "stepsPerEpoch", "totalSteps", "preparedSha256")
        report = report.model_copy(update={k: counts[k] for k in keys})
    if model_ok:
        report = memory_and_hours(report, spec, found["shape"], counts, gpu_name, gpu)
    return report


def memory_and_hours(
    report: Report, spec: FineTuneJobSpec, shape: Shape, counts: dict[str, Any] | None, gpu_name: str | None, gpu: GpuType | None
) -> Report:
    """Memory per GPU against the GPU type's (WontFit with the smallest change that fits), and the GPU-hours."""
    on_gpu = spec.workers.gpusPerWorker > 0
    rows = None  # the spec's row_tokens (a DPO row holds whole pairs: two sequences each)
    if counts and not counts["packing"] and counts["longest"] < spec.row_tokens:  # rows pad to the longest
        rows = max(16, counts["longest"])
    update: dict[str, Any] = {}
    if on_gpu and gpu is not None:
        mine, suggestion = fit(shape, spec, gpu.memory_bytes, rows)
        update.update(memoryPerGpuBytes=mine.total, gpuMemoryBytes=gpu.memory_bytes, gpuType=gpu_name, suggestion=suggestion)
        fits = mine.total <= HEADROOM * gpu.memory_bytes
        message = (
            f"about {gib(mine.total)} per GPU of {gib(gpu.memory_bytes)} ({gpu_name})"
            if fits
            else wont_fit_message(mine, gpu.memory_bytes, gpu_name or "GPU", suggestion)
        )
        report = report.model_copy(update=update).with_check("memory", fits, message)
        if not fits and report.passed:
            report = report.failed(Reason.WONT_FIT, message)
        room = roomier(shape, spec, gpu.memory_bytes, mine.total, rows) if fits else None
        if room:
            report = report.model_copy(update={"warnings": [*report.warnings, room]})
        if counts:
            epochs = counts["totalSteps"] / counts["stepsPerEpoch"]
            flops = training_flops(
                shape,
                spec,
                counts["tokens"] * epochs,
                counts["evalTokens"] * evaluations(spec, counts["totalSteps"]),
                task_tokens(spec, counts["evalSamples"], counts["evalTokens"]),
            )
            wall, gpu_hours = hours(flops, spec.workers.gpus, gpu)
            report = report.model_copy(
                update={
                    "estimatedHours": float(f"{wall:.4g}"),
                    "gpuHours": float(f"{gpu_hours:.4g}"),
                    "estimatedCost": float(f"{gpu_hours * gpu.pricePerHour:.4g}") if gpu.pricePerHour else None,
                }
            )
    else:
        mine = estimate(shape, spec, rows=rows)
        where = "per process on CPUs" if not on_gpu else f"per GPU (GPU type {gpu_name!r} is not in the platform's table)"
        report = report.model_copy(update={"memoryPerGpuBytes": mine.total}).with_check(
            "memory", True, f"about {gib(mine.total)} {where}"
        )
    return checkpoint_in_grace(report, spec, mine.trainable)


def checkpoint_in_grace(report: Report, spec: FineTuneJobSpec, trainable: int) -> Report:
    """The just-in-time checkpoint's size and time against the grace period the workers get (a warning, not a
    failure: the previous complete checkpoint still stands if it runs out)."""
    compute = 4 if spec.workers.gpusPerWorker == 0 or spec.model.dtype == "float32" else 2
    size = grace.checkpoint_bytes(trainable, compute)
    seconds = grace.checkpoint_seconds(size, spec.workers.replicas)
    given = spec.runPolicy.terminationGracePeriodSeconds or int(os.environ.get(ENV_GRACE) or 0)
    said = grace.warning(seconds, size, given) if given else None
    update: dict[str, Any] = {"checkpointBytes": size, "checkpointSeconds": round(seconds, 2)}
    if said:
        update["warnings"] = [*report.warnings, said]
    return report.model_copy(update=update)


def gpu_from_environ() -> tuple[str | None, GpuType | None]:
    """The GPU type the operator found for this job: KUBETUNE_GPU_TYPE (its name) and KUBETUNE_GPU (its entry)."""
    raw = os.environ.get(ENV_GPU)
    return os.environ.get(ENV_GPU_TYPE), GpuType.model_validate_json(raw) if raw else None


def main() -> int:
    """The preflight pod: the report is printed and left as the termination message; exit 0 when it passed."""
    worker = WorkerEnv.from_environ()
    try:
        spec = load_spec(worker.config_path)
    except TrainerFailure as exc:
        report = Report(passed=False, reason=exc.reason.value, message=exc.message)
    else:
        work = Path(os.environ.get(ENV_WORK_DIR) or tempfile.mkdtemp(prefix="kubetune-preflight-"))
        work.mkdir(parents=True, exist_ok=True)
        name, gpu = gpu_from_environ()
        report = run(spec, Store(spec.storage), work, name, gpu)
    text = report.to_json()
    events.write(text)
    if worker.termination_log is not None:
        worker.termination_log.parent.mkdir(parents=True, exist_ok=True)
        worker.termination_log.write_text(text)
    return 0 if report.passed else 1


if __name__ == "__main__":
    from kubetune_trainer import quick_exit
    from kubetune_trainer.streams import guarded

    quick_exit.run(lambda: guarded(main))
