"""One training process. Started by the launcher as
`python -m torch.distributed.run --nnodes N --node-rank R --nproc-per-node P ... -m kubetune_trainer.train`.

Reads the config, loads data and model, trains the LoRA adapter through a DeepSpeed engine, evaluates the base
model and the adapter on held-out data, checkpoints and resumes, and (rank 0 alone) writes the outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_api.contract import RankFailure, WorkerEnv
from kubetune_api.job import FineTuneJobSpec

from . import checkpoint, curves, data, evaluate, spec_io
from .errors import TrainerFailure
from .model import PACKING_FAMILIES, add_lora, load_model, load_tokenizer, model_type
from .rank_env import RankEnv
from .report import Progress
from .storage import Store, file_digest, is_s3, join


@dataclass
class Watch:
    """The held-out evaluations so far, as early stopping and best-adapter selection see them."""

    best_step: int = 0
    best_loss: float = math.inf
    reference: float = math.inf  # the loss of the last evaluation that improved by more than minDelta
    stale: int = 0  # evaluations since then
    snapshot_step: int | None = None  # the step whose adapter is kept in adapter-best/

    def see(self, step: int, loss: float, min_delta: float) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if loss < self.reference - min_delta:
            self.reference, self.stale = loss, 0
        else:
            self.stale += 1
        if loss < self.best_loss:
            self.best_step, self.best_loss = step, loss
            return True
        return False


@dataclass
class Run:
    """Everything one process needs while training."""

    spec: FineTuneJobSpec
    worker: WorkerEnv
    paths: RankEnv
    rank: int
    world: int
    local_rank: int
    device: Any = None
    store: Store | None = None
    tokenizer: Any = None
    engine: Any = None
    train_rows: list[data.Row] = field(default_factory=list)
    eval_batches: list[list[data.Row]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: int = 0
    total_steps: int = 0
    base: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)  # rank 0: training loss and learning rate per logged step
    watch: Watch = field(default_factory=lambda: Watch())
    zero3_config: Any = None  # keeps transformers' HfDeepSpeedConfig alive so from_pretrained partitions weights

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# set-up


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _all_sum(run: Run, values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=run.device)
    dist.all_reduce(tensor)
    return [float(x) for x in tensor.cpu()]


def _broadcast(run: Run, value: Any) -> Any:
    """Rank 0's JSON-able value on every rank, sent as bytes in a tensor: nothing pickled crosses the wire."""
    import torch
    import torch.distributed as dist

    payload = json.dumps(value).encode() if run.is_main else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=run.device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=run.device)
    if run.is_main:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode())


def prepare_data(run: Run) -> None:
    spec = run.spec.dataset
    train_name = Path(spec.train).name
    train_records = data.read_records(run.paths.train_file, train_name)
    train_at: list[int] | None = None
    if run.paths.validation_file is not None:
        val_name, val_at = Path(spec.validation or "validation").name, None
        val_records = data.read_records(run.paths.validation_file, val_name)
    else:  # a split of one file: errors still give each record's place in that file
        val_name = train_name
        train_at, val_at = data.split_positions(len(train_records), run.spec.validation_split, run.spec.training.seed)
        train_records, val_records = [train_records[i] for i in train_at], [train_records[i] for i in val_at]
    for name, records in (("training", train_records), ("held-out", val_records)):
        if not records:
            raise TrainerFailure(Reason.EMPTY_DATASET, f"the {name} set has no records")
    train_samples, train_counts = data.tokenize(train_records, spec, run.tokenizer, train_name, train_at)
    val_samples, val_counts = data.tokenize(val_records, spec, run.tokenizer, val_name, val_at)
    for name, samples, counts in (("training", train_samples, train_counts), ("held-out", val_samples, val_counts)):
        if not samples:
            raise TrainerFailure(
                Reason.EMPTY_DATASET,
                f"the {name} set has no usable samples: {counts.records} records, {counts.dropped} dropped as too long, "
                f"{counts.empty} with nothing to learn",
            )
    packing = spec.packing
    family = model_type(run.paths.model_source, run.spec.model)
    if packing and family not in PACKING_FAMILIES:
        packing = False  # a packed sample would attend to the one before it: correctness first, then speed
        if run.is_main:
            print(
                json.dumps(
                    {
                        "event": "notice",
                        "message": f"dataset.packing turned off: {family} models do not keep packed samples apart "
                        "(their attention mask ignores restarted positions); each sample gets a row of its own",
                    }
                ),
                flush=True,
            )
    run.train_rows = data.rows(train_samples, spec.maxSeqLength, packing)
    val_rows = data.rows(val_samples, spec.maxSeqLength, packing)
    run.eval_batches = evaluate.shard_rows(val_rows, run.world, run.rank, run.spec.training.microBatchSize)
    run.counts = {
        "train": train_counts.as_dict(),
        "validation": val_counts.as_dict(),
        "trainSequences": len(run.train_rows),
        "packing": packing,
        "modelType": family,
    }
    if run.is_main:  # what became of the records, before any step: truncations and drops are no surprise later
        line = {"event": "data", "overlength": spec.overlength_policy, **run.counts}
        if run.paths.progress == "json":
            print(json.dumps(line), flush=True)
        else:
            c = train_counts
            print(
                f"data: {c.records} training records -> {c.samples} samples ({c.kept_end} cut from the start, "
                f"{c.truncated} cut from the end, {c.dropped} dropped, {c.empty} with nothing to learn; "
                f"overlength: {spec.overlength_policy}), {len(run.train_rows)} sequences, packing {'on' if packing else 'off'}",
                file=sys.stderr,
                flush=True,
            )


def deepspeed_config(run: Run, on_gpu: bool) -> dict[str, Any]:
    """The mounted DeepSpeed JSON (or the same derivation), with the batch size of the world actually running."""
    import torch

    from kubetune_api.ds_config import deepspeed_config as derive

    path = run.worker.deepspeed_path
    config = json.loads(path.read_text()) if path.is_file() else derive(run.spec, run.world, on_gpu)
    t = run.spec.training
    config["train_batch_size"] = t.microBatchSize * t.gradientAccumulationSteps * run.world
    if not on_gpu:
        config.pop("bf16", None)
        config.pop("fp16", None)
        config["optimizer"]["params"]["torch_adam"] = True
        config["zero_force_ds_cpu_optimizer"] = False
    elif config.get("bf16", {}).get("enabled") and not torch.cuda.is_bf16_supported():
        config.pop("bf16")
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def build_engine(run: Run) -> None:
    import deepspeed
    from transformers import get_scheduler

    on_gpu = run.device.type == "cuda"
    t = run.spec.training
    config = deepspeed_config(run, on_gpu)
    unit = run.world * t.microBatchSize * t.gradientAccumulationSteps
    run.steps_per_epoch = max(1, math.ceil(len(run.train_rows) / unit))
    run.total_steps = t.maxSteps or t.epochs * run.steps_per_epoch
    warmup = t.warmupSteps if t.warmupSteps is not None else math.ceil(t.warmupRatio * run.total_steps)
    if run.spec.deepspeed.zeroStage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        run.zero3_config = HfDeepSpeedConfig(config)
    model = load_model(run.paths.model_source, run.spec.model, on_gpu)
    if t.gradientCheckpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = add_lora(model, run.spec.lora, t.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t.scheduler]

    def scheduler(optimizer: Any) -> Any:
        return get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=run.total_steps)

    run.engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config, lr_scheduler=scheduler)


# evaluation, checkpoints, outputs


def run_eval(run: Run, adapter: bool) -> dict[str, float]:
    engine = run.engine
    engine.eval()

    def forward(inputs: dict[str, Any]) -> Any:
        return engine(**inputs, use_cache=False).logits

    context = contextlib.nullcontext() if adapter else engine.module.disable_adapter()
    with context:
        sums = evaluate.eval_sums(forward, run.eval_batches, run.tokenizer.pad_token_id, run.device)
    engine.train()
    return evaluate.metrics(_all_sum(run, sums))


def _staging(run: Run) -> Path:
    return run.paths.work_dir / "checkpoints" if is_s3(run.spec.output.uri) else Path(checkpoint.root(run.spec.output.uri))


def save_checkpoint(run: Run, step: int) -> None:

    assert run.store is not None
    local = _staging(run)
    name = checkpoint.tag(step)
    state = {"step": step, "base": run.base, "history": run.history, "curve": run.curve, "worldSize": run.world}
    run.engine.save_checkpoint(str(local), tag=name, client_state={"kubetune": state}, exclude_frozen_parameters=True)
    _save_rng(local / name, run.rank)
    if run.is_main:
        (local / name / "kubetune-config.yaml").write_text(spec_io.dump_spec(run.spec))
    _barrier()
    if is_s3(run.spec.output.uri) and run.local_rank == 0:
        run.store.upload_dir(local / name, join(checkpoint.root(run.spec.output.uri), name))
    _barrier()
    if run.is_main:
        checkpoint.mark_complete(
            run.store,
            run.spec.output.uri,
            step,
            {"step": step, "worldSize": run.world, **checkpoint.identity(run.spec, run.worker.job_uid)},
        )
        checkpoint.prune(run.store, run.spec.output.uri, run.spec.training.keepCheckpoints)
        print(
            json.dumps({"event": "checkpoint", "step": step, "uri": join(checkpoint.root(run.spec.output.uri), name)}), flush=True
        )
    if is_s3(run.spec.output.uri) and run.local_rank == 0:
        import shutil

        shutil.rmtree(local / name, ignore_errors=True)


def _save_rng(directory: Path, rank: int) -> None:
    """RNG state as JSON (Python's) and safetensors (torch's), so resuming reads no pickle."""
    import torch
    from safetensors.torch import save_file

    version, state, gauss = random.getstate()
    (directory / f"rng-rank{rank}.json").write_text(json.dumps({"version": version, "state": list(state), "gauss": gauss}))
    save_file({"torch": torch.get_rng_state()}, str(directory / f"rng-rank{rank}.safetensors"))


def _load_rng(directory: Path, rank: int) -> None:
    import torch
    from safetensors.torch import load_file

    python, tensors = directory / f"rng-rank{rank}.json", directory / f"rng-rank{rank}.safetensors"
    if not (python.is_file() and tensors.is_file()):
        return
    saved = json.loads(python.read_text())
    state = saved.get("state") if isinstance(saved, dict) else None
    if not (isinstance(state, list) and len(state) == 625 and all(isinstance(x, int) for x in state)):
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, f"{python.name} is not an RNG state kubetune wrote")
    random.setstate((int(saved["version"]), tuple(state), saved.get("gauss")))
    rng = load_file(str(tensors)).get("torch")
    if rng is None or rng.dtype != torch.uint8:
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, f"{tensors.name} is not an RNG state kubetune wrote")
    torch.set_rng_state(rng)


def resume(run: Run) -> int:
    """Load the newest complete checkpoint this job wrote, if any; returns the step to continue from. A checkpoint
    another job or spec wrote fails the run (CheckpointMismatch) rather than being continued or silently ignored."""
    assert run.store is not None
    newest = checkpoint.complete_tags(run.store, run.spec.output.uri)[-1:] if run.is_main else None
    name = _broadcast(run, newest)
    if not name:
        return 0
    name = name[0]
    info = checkpoint.read_info(run.store, run.spec.output.uri, name)
    checkpoint.check_identity(
        info, checkpoint.identity(run.spec, run.worker.job_uid), join(checkpoint.root(run.spec.output.uri), name)
    )
    local = run.paths.work_dir / "resume" if is_s3(run.spec.output.uri) else _staging(run)
    if is_s3(run.spec.output.uri) and run.local_rank == 0:
        run.store.download_prefix(
            join(checkpoint.root(run.spec.output.uri), name), local / name, Reason.TRAINER_ERROR, "checkpoint"
        )
    _barrier()
    same_world = info.get("worldSize") == run.world
    with checkpoint.safe_loading():
        _, client = run.engine.load_checkpoint(
            str(local), tag=name, load_module_strict=False, load_optimizer_states=same_world, load_lr_scheduler_states=same_world
        )
    state = (client or {}).get("kubetune", {})
    run.base, run.history, run.curve = state.get("base", {}), state.get("history", []), state.get("curve", [])
    if same_world:
        _load_rng(local / name, run.rank)
    step = int(state.get("step", info["step"]))
    if run.is_main:
        print(json.dumps({"event": "resumed", "step": step, "checkpoint": name, "optimizerRestored": same_world}), flush=True)
    return step


def save_adapter(run: Run, name: str = "adapter") -> Path:
    import deepspeed

    target = run.paths.work_dir / name
    module = run.engine.module
    gather = (
        deepspeed.zero.GatheredParameters([p for p in module.parameters() if p.requires_grad], modifier_rank=None)
        if run.spec.deepspeed.zeroStage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if run.is_main:
            module.save_pretrained(str(target))
            (target / "kubetune-config.yaml").write_text(spec_io.dump_spec(run.spec))
    _barrier()
    return target


def _model_digest(source: str) -> str | None:
    root = Path(source)
    if not root.is_dir():
        return None
    listing = [
        (str(p.relative_to(root)), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def manifest(run: Run) -> dict[str, Any]:
    import deepspeed
    import peft
    import torch
    import transformers

    spec_json = json.dumps(run.spec.model_dump(mode="json"), sort_keys=True)
    datasets = {"train": {"uri": run.spec.dataset.train, "sha256": file_digest(run.paths.train_file, "sha256")}}
    if run.paths.validation_file is not None:
        datasets["validation"] = {
            "uri": run.spec.dataset.validation or "",
            "sha256": file_digest(run.paths.validation_file, "sha256"),
        }
    return {
        "job": run.worker.job_name,
        "specSha256": hashlib.sha256(spec_json.encode()).hexdigest(),
        "spec": run.spec.model_dump(mode="json"),
        "baseModel": {
            "uri": run.spec.model.uri,
            "revision": run.spec.model.revision,
            "filesSha256": _model_digest(run.paths.model_source),
        },
        "datasets": datasets,
        "worldSize": run.world,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "deepspeed": deepspeed.__version__,
        },
        "completedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_outputs(
    run: Run, adapter_dir: Path, chosen: dict[str, Any], last: dict[str, float], train_stats: dict[str, Any]
) -> dict[str, Any]:
    """adapter/, metrics.json, manifest.json, then _SUCCESS, unless the adapter misses output.minImprovement: then
    everything but _SUCCESS is written (for inspection) and the run fails with BelowThreshold."""
    assert run.store is not None
    out = run.spec.output.uri
    final = {k: v for k, v in chosen.items() if k not in ("step", "choice")}
    metrics: dict[str, Any] = {
        "base": run.base,
        "final": final,  # what the written adapter scores
        "adapter": {"choice": chosen["choice"], "step": chosen["step"]},
        "best": next((h for h in run.history if h["step"] == run.watch.best_step), None),
        "last": last,
        "history": run.history,
        "curves": {"train": run.curve, "eval": [{"step": h["step"], "evalLoss": h["evalLoss"]} for h in run.history]},
        "train": train_stats,
        "data": run.counts,
    }
    picture = run.paths.work_dir / "curves.svg"
    picture.write_text(curves.svg(metrics["curves"]["train"], metrics["curves"]["eval"]))
    run.store.upload_file(picture, join(out, "curves.svg"))
    gate = run.spec.output.minImprovement
    base_loss, loss = run.base.get("evalLoss"), final.get("evalLoss")
    improvement = (base_loss - loss) / base_loss if base_loss and loss is not None else None
    if gate is not None:
        metrics["qualityGate"] = {
            "minImprovement": gate,
            "improvement": improvement,
            "passed": bool(improvement and improvement >= gate),
        }
    run.store.upload_dir(adapter_dir, join(out, "adapter"))
    run.store.write_text(join(out, "metrics.json"), json.dumps(metrics, indent=2))
    run.store.write_text(join(out, "manifest.json"), json.dumps(manifest(run), indent=2))
    if gate is not None and not metrics["qualityGate"]["passed"]:
        raise TrainerFailure(
            Reason.BELOW_THRESHOLD,
            f"the adapter's held-out loss {loss:.4f} is {0.0 if improvement is None else improvement:.1%} below the base "
            f"model's {base_loss:.4f}; output.minImprovement asks for {gate:.1%}. The adapter and metrics.json are in "
            f"{out} for inspection; _SUCCESS was not written",
        )
    run.store.write_text(join(out, "_SUCCESS"), "")
    return metrics


# the loop


def train(run: Run) -> dict[str, Any]:
    import deepspeed
    import torch

    on_gpu = torch.cuda.is_available() and run.spec.workers.gpusPerWorker > 0
    if on_gpu:
        torch.cuda.set_device(run.local_rank)
    run.device = torch.device("cuda", run.local_rank) if on_gpu else torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    _seed(run.spec.training.seed)
    run.store = Store(run.spec.storage)
    run.tokenizer = load_tokenizer(run.paths.model_source, run.spec.model)
    prepare_data(run)
    build_engine(run)
    t = run.spec.training
    start = resume(run)
    if not run.base:
        run.base = run_eval(run, adapter=False)
        if run.is_main:
            print(json.dumps({"event": "eval", "step": 0, "model": "base", **run.base}), flush=True)
    progress = Progress(run.total_steps, style=run.paths.progress) if run.is_main else None
    if progress:
        progress.start(start)
    epoch_batches: dict[int, list[list[data.Row]]] = {}
    window_loss, window_steps, window_tokens, window_start, loss = 0.0, 0, 0.0, time.monotonic(), float("nan")
    trained_tokens, trained_started = 0.0, time.monotonic()
    for seen in run.history:  # a resumed run picks up where its evaluations left off
        _observe(run, int(seen["step"]), seen)
    stopped: dict[str, Any] | None = None
    done = start
    run.engine.train()
    for step in range(start, run.total_steps):
        epoch, offset = divmod(step, run.steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {
                epoch: data.rank_micro_batches(
                    run.train_rows,
                    micro=t.microBatchSize,
                    world=run.world,
                    rank=run.rank,
                    multiple=t.gradientAccumulationSteps,
                    seed=t.seed + epoch if run.spec.dataset.shuffle else None,
                )
            }
        micro_batches = epoch_batches[epoch][offset * t.gradientAccumulationSteps : (offset + 1) * t.gradientAccumulationSteps]
        step_loss, step_tokens = 0.0, 0
        for batch in micro_batches:
            inputs = {k: v.to(run.device) for k, v in data.collate(batch, run.tokenizer.pad_token_id).items()}
            labels = inputs.pop("labels")
            micro_loss = evaluate.train_loss(run.engine(**inputs, use_cache=False).logits, labels)
            run.engine.backward(micro_loss)
            run.engine.step()
            step_loss += float(micro_loss.detach()) / len(micro_batches)
            step_tokens += data.useful_tokens(batch)
        if not math.isfinite(step_loss):
            raise TrainerFailure(
                Reason.NAN_LOSS, f"training loss became {step_loss} at step {step + 1}; lower training.learningRate"
            )
        window_loss += step_loss
        window_steps += 1
        window_tokens += step_tokens
        done = step + 1
        if done % t.logEverySteps == 0 or done == run.total_steps:
            # one all-reduce per logged step, not per step: the loop stays free of extra synchronisation
            loss_sum, tokens = _all_sum(run, [window_loss / window_steps, window_tokens])
            loss = loss_sum / run.world
            trained_tokens += tokens
            now = time.monotonic()
            if progress:
                lr = float(run.engine.get_lr()[0])
                progress.step(done, done / run.steps_per_epoch, loss, lr, tokens / max(now - window_start, 1e-9))
                run.curve.append({"step": done, "loss": round(loss, 6), "learningRate": lr})
            window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0.0, now
        if t.evalEverySteps and done % t.evalEverySteps == 0 and done != run.total_steps:
            result = run_eval(run, adapter=True)
            run.history.append({"step": done, **result})
            if progress:
                progress.emit({"event": "eval", "step": done, "model": "adapter", **result})
            if _observe(run, done, result) and run.spec.output.adapter == "best":
                save_adapter(run, "adapter-best")  # every rank: under ZeRO-3 the weights are gathered
                run.watch.snapshot_step = done
            if t.earlyStopping and run.watch.stale >= t.earlyStopping.patience:
                stopped = {
                    "stoppedAtStep": done,
                    "reason": f"held-out loss did not improve by more than {t.earlyStopping.minDelta} for "
                    f"{t.earlyStopping.patience} evaluations (best {run.watch.best_loss:.4f} at step {run.watch.best_step})",
                }
                if progress:
                    progress.emit({"event": "earlyStopping", **stopped})
                break
        if t.checkpointEverySteps and done % t.checkpointEverySteps == 0 and done != run.total_steps:
            save_checkpoint(run, done)
    elapsed = time.monotonic() - trained_started
    if progress:
        progress.close()
    last_step = done
    if stopped:  # the evaluation that stopped the run is the last one: no second pass over the held-out set
        last = {k: v for k, v in run.history[-1].items() if k != "step"}
    else:
        last = run_eval(run, adapter=True)
        run.history.append({"step": last_step, **last})
        _observe(run, last_step, last)
    adapter_dir, chosen = _choose_adapter(run, last_step, last)
    stats = {
        "steps": last_step,
        "epochs": last_step / run.steps_per_epoch,
        "loss": loss,
        "usefulTokensPerSecond": round(trained_tokens / elapsed, 1) if elapsed > 0 and trained_tokens else None,
        "worldSize": run.world,
        **({"earlyStopping": stopped} if stopped else {}),
    }
    if run.is_main:
        metrics = write_outputs(run, adapter_dir, chosen, last, stats)
        return metrics
    return {}


def _observe(run: Run, step: int, result: dict[str, float]) -> bool:
    stopping = run.spec.training.earlyStopping
    return run.watch.see(step, float(result["evalLoss"]), stopping.minDelta if stopping else 0.0)


def _choose_adapter(run: Run, last_step: int, last: dict[str, float]) -> tuple[Path, dict[str, Any]]:
    """The adapter to write and its evaluation: the best one kept (output.adapter: best), else the last."""
    want_best = run.spec.output.adapter == "best" and run.watch.best_step != last_step
    if want_best and run.watch.snapshot_step == run.watch.best_step:
        best = next(h for h in run.history if h["step"] == run.watch.best_step)
        return run.paths.work_dir / "adapter-best", {**best, "choice": "best"}
    why = "last" if not want_best else "last (the best adapter was evaluated before a restart and not kept)"
    return save_adapter(run), {"step": last_step, **last, "choice": why}


def _classify(exc: BaseException) -> tuple[Reason, str]:
    if isinstance(exc, TrainerFailure):
        return exc.reason, exc.message
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or "OutOfMemory" in name:
        return (
            Reason.OUT_OF_MEMORY,
            f"out of memory: {exc}; lower training.microBatchSize or dataset.maxSeqLength, or raise deepspeed.zeroStage",
        )
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else name
    return Reason.TRAINER_ERROR, f"{name}: {last}"[:2000]


def main() -> int:
    paths = RankEnv.from_environ()
    worker = WorkerEnv.from_environ()
    rank = int(os.environ.get("RANK", "0"))
    run = Run(
        spec=spec_io.load_spec(worker.config_path),
        worker=worker,
        paths=paths,
        rank=rank,
        world=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    try:
        metrics = train(run)
        if run.is_main:
            (paths.result_dir / "summary.json").write_text(json.dumps(metrics))
        return 0
    except BaseException as exc:  # every failure leaves its reason for the launcher, then the traceback for the logs
        reason, message = _classify(exc)
        paths.result_dir.mkdir(parents=True, exist_ok=True)
        (paths.result_dir / f"failure-{rank}.json").write_text(
            RankFailure(rank=rank, reason=reason.value, message=message).model_dump_json()
        )
        if not isinstance(exc, TrainerFailure):
            traceback.print_exc()
        print(f"kubetune: rank {rank} failed: {reason.value}: {message}", file=sys.stderr, flush=True)
        return 1
    finally:
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
