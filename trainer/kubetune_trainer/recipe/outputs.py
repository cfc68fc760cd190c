"""What rank 0 leaves in output.uri when training ends: adapter/, curves.svg, metrics.json, manifest.json, merged/
(with output.merged) and _SUCCESS last, unless the adapter misses the quality gate."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune_api import events, layout, serving
from kubetune_api.conditions import Reason
from kubetune_api.contract import WorkerEnv
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.metrics import Evaluation, Metrics, QualityGate, TaskResult
from kubetune_api.records import Adjustment, BaseModelFiles, Digested, Kernels, MergedFiles, RunManifest
from kubetune_trainer.data.reading import data_digest
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.rank_env import RankEnv
from kubetune_trainer.recipe import curves, merge
from kubetune_trainer.storage import Store, join


def model_digest(source: str) -> str | None:
    root = Path(source)
    if not root.is_dir():
        return None
    listing = [
        (str(p.relative_to(root)), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def manifest(
    spec: FineTuneJobSpec,
    paths: RankEnv,
    worker: WorkerEnv,
    world: int,
    adjusted: dict[str, Any],
    ds_config: dict[str, Any],
    kernels: Kernels | None = None,
) -> RunManifest:
    import deepspeed
    import peft
    import torch
    import transformers

    spec_json = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    datasets = {"train": Digested(uri=spec.dataset.train, sha256=data_digest(paths.train_file))}
    if paths.validation_file is not None:
        datasets["validation"] = Digested(uri=spec.dataset.validation or "", sha256=data_digest(paths.validation_file))
    start = None
    if paths.adapter_dir is not None and spec.model.adapter:  # lineage: the adapter this one continued, byte for byte
        start = Digested(uri=spec.model.adapter, sha256=data_digest(paths.adapter_dir / "adapter_model.safetensors"))
    return RunManifest(
        job=worker.job_name,
        restarts=worker.restarts,
        specSha256=hashlib.sha256(spec_json.encode()).hexdigest(),
        spec=spec.model_dump(mode="json"),
        adjusted={name: Adjustment.model_validate(change) for name, change in adjusted.items()},
        baseModel=BaseModelFiles(uri=spec.model.uri, revision=spec.model.revision, filesSha256=model_digest(paths.model_source)),
        datasets=datasets,
        startAdapter=start,
        worldSize=world,
        deepspeed=ds_config,  # what ran (kubetune_api.ds_config with this run's world, GPU and adapter size)
        kernels=kernels,
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "deepspeed": deepspeed.__version__,
        },
        completedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def quality_gate(
    spec: FineTuneJobSpec, base: Evaluation, final: Evaluation, tasks: dict[str, TaskResult] | None = None
) -> QualityGate | None:
    """output.minImprovement (held-out loss against the base model's), for DPO output.minPreferenceAccuracy, and
    output.minTaskScore (each named task's first grader, the adapter's score)."""
    gate, floor, least = spec.output.minImprovement, spec.output.minPreferenceAccuracy, spec.output.minTaskScore
    if gate is None and floor is None and not least:
        return None
    reached = {name: (tasks or {})[name].headline().adapter.score if name in (tasks or {}) else None for name in least or {}}
    tasks_pass = all(reached[name] is not None and reached[name] >= floor_ for name, floor_ in (least or {}).items())  # type: ignore[operator]
    base_loss, loss = base.evalLoss, final.evalLoss
    improvement = (base_loss - loss) / base_loss if base_loss and loss is not None else None
    accuracy = final.preferenceAccuracy
    passed = (gate is None or bool(improvement and improvement >= gate)) and (
        floor is None or (accuracy is not None and accuracy >= floor)
    )
    return QualityGate(
        minImprovement=gate,
        improvement=improvement,
        minPreferenceAccuracy=floor,
        preferenceAccuracy=accuracy if floor is not None else None,
        minTaskScore=dict(least) if least else None,
        taskScore=reached if least else None,
        passed=passed and tasks_pass,
    )


def gate_message(gate: QualityGate, base: Evaluation, final: Evaluation) -> str:
    """Why the adapter missed the quality gate, in the gate's own terms."""
    said = []
    if gate.minImprovement is not None and not (gate.improvement and gate.improvement >= gate.minImprovement):
        said.append(
            f"the adapter's held-out loss {final.evalLoss or float('nan'):.4f} is {gate.improvement or 0.0:.1%} below the "
            f"base model's {base.evalLoss or float('nan'):.4f}; output.minImprovement asks for {gate.minImprovement:.1%}"
        )
    if gate.minPreferenceAccuracy is not None and not (
        gate.preferenceAccuracy is not None and gate.preferenceAccuracy >= gate.minPreferenceAccuracy
    ):
        said.append(
            f"the adapter's held-out preference accuracy is {gate.preferenceAccuracy or 0.0:.3f} (before training "
            f"{base.preferenceAccuracy or 0.0:.3f}); output.minPreferenceAccuracy asks for {gate.minPreferenceAccuracy}"
        )
    for name, least in (gate.minTaskScore or {}).items():
        got = (gate.taskScore or {}).get(name)
        if got is None or got < least:
            shown = "no score" if got is None else f"{got:.3f}"
            said.append(f"the adapter's score on task {name} is {shown}; output.minTaskScore asks for {least}")
    return "; ".join(said)


def serving_problems(spec: FineTuneJobSpec, adapter_dir: Path) -> list[str]:
    """What output.serving's servers could not load in the adapter written here (empty: servable, or no targets)."""
    if spec.output.serving is None or not spec.output.serving.targets():
        return []
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors: list[str] = []
    for path in sorted(adapter_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            tensors += list(weights.keys())
    return serving.adapter_problems(config, tensors, spec.output.serving)


def model_directory(source: str, spec: FineTuneJobSpec) -> Path:
    """The base model's files on this machine: the downloaded prefix, a local folder, or the hub cache's snapshot."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=spec.model.revision, local_files_only=True))


def finished(spec: FineTuneJobSpec, store: Store) -> bool:
    """Whether output.uri holds a finished run (_SUCCESS): one that output.overwrite does not let a run replace is
    OutputExists, for the preflight and the launcher alike."""
    if not store.exists(layout.under(spec.output.uri, layout.SUCCESS)):
        return False
    if not spec.output.overwrite:
        raise TrainerFailure(
            Reason.OUTPUT_EXISTS,
            f"{spec.output.uri} already holds a finished adapter (_SUCCESS); set output.overwrite or choose another uri",
        )
    return True


def write_merged(store: Store, spec: FineTuneJobSpec, source: str, adapter_dir: Path, work: Path, tokenizer: Any) -> MergedFiles:
    """merged/: each file uploaded as soon as it is written and then deleted here, so the local disk holds one shard."""
    target_uri = layout.under(spec.output.uri, layout.MERGED)
    local = work / "merged"
    shutil.rmtree(local, ignore_errors=True)

    def publish(path: Path) -> None:
        store.upload_file(path, join(target_uri, path.name))
        path.unlink()

    written = merge.merge(model_directory(source, spec), adapter_dir, local, publish, tokenizer.save_pretrained)
    return MergedFiles(uri=target_uri, **written)


def write(
    store: Store,
    spec: FineTuneJobSpec,
    paths: RankEnv,
    adapter_dir: Path,
    metrics: Metrics,
    manifest_data: RunManifest,
    tokenizer: Any,
    samples: Sequence[dict[str, Any]] = (),
) -> Metrics:
    """Upload everything; _SUCCESS last. Below output.minImprovement, or with an adapter output.serving's servers
    cannot load, everything but merged/ and _SUCCESS is written (for inspection) and the run fails with
    BelowThreshold or NotServable."""
    out = spec.output.uri
    picture = paths.work_dir / layout.CURVES
    picture.write_text(curves.svg(metrics.curves))
    store.upload_file(picture, layout.under(out, layout.CURVES))
    gate = metrics.qualityGate = quality_gate(spec, metrics.base, metrics.final, metrics.tasks)
    store.upload_dir(adapter_dir, layout.adapter_uri(out))
    if metrics.tasks is not None:  # the items people read: what each model answered, and how it was graded
        store.write_text(layout.under(out, layout.SAMPLES), "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    if gate is not None and not gate.passed:
        _write_records(store, out, metrics, manifest_data)  # for inspection
        raise TrainerFailure(
            Reason.BELOW_THRESHOLD,
            f"{gate_message(gate, metrics.base, metrics.final)}. The adapter and metrics.json are in {out} for "
            "inspection; _SUCCESS was not written",
        )
    unservable = serving_problems(spec, adapter_dir)
    if unservable:
        _write_records(store, out, metrics, manifest_data)  # for inspection
        raise TrainerFailure(
            Reason.NOT_SERVABLE,
            f"output.serving cannot load the written adapter: {'; '.join(unservable)}. The adapter and metrics.json "
            f"are in {out} for inspection; _SUCCESS was not written",
        )
    if spec.output.merged:
        merged = write_merged(store, spec, paths.model_source, adapter_dir, paths.work_dir, tokenizer)
        manifest_data = manifest_data.model_copy(update={"merged": merged})
        events.emit(events.Merged(**merged.model_dump()))
    _write_records(store, out, metrics, manifest_data)
    store.write_text(layout.under(out, layout.SUCCESS), "")
    return metrics


def _write_records(store: Store, out: str, metrics: Metrics, manifest_data: RunManifest) -> None:
    """metrics.json and manifest.json: before _SUCCESS, or in its place when the run fails at the end."""
    store.write_text(layout.under(out, layout.METRICS), metrics.to_json())
    store.write_text(layout.under(out, layout.MANIFEST), manifest_data.model_dump_json(indent=2, exclude_none=True))
