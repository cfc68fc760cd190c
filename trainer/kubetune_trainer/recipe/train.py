"""One training process. Started by the launcher as
`python -m torch.distributed.run --nnodes N --node-rank R --nproc-per-node P ... -m kubetune_trainer.recipe.train`.

A recipe in the manner of torchtune's: the set-up steps return what they build (`setup_data`, `setup_engine`),
and `Recipe.train` is a loop over small steps (`step`, `log_window`, `maybe_eval`, `maybe_checkpoint`). Rank 0
alone writes the outputs (outputs.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api import events
from kubetune_api.conditions import Reason
from kubetune_api.contract import RankFailure, TrackingOutcome, WorkerEnv, drop_tracking_credentials
from kubetune_api.ds_config import deepspeed_config
from kubetune_api.job import FineTuneJobSpec, chunked_loss, loss_chunk_tokens
from kubetune_api.metrics import (
    AdapterChoice,
    Curves,
    DataReport,
    EarlyStop,
    Evaluated,
    Evaluation,
    Fetch,
    Metrics,
    TaskResult,
    TrainStats,
)
from kubetune_api.records import Kernels
from kubetune_trainer import adapters, attention, rank_env, spec_io, terminal
from kubetune_trainer.data import batching, prepared
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.model import add_lora, load_model, load_tokenizer, model_type
from kubetune_trainer.rank_env import RankEnv
from kubetune_trainer.recipe import answers, checkpoint, choices, evaluate, merge, meter, objectives, outputs, tracking
from kubetune_trainer.recipe.preemption import Preempted, Stop
from kubetune_trainer.recipe.profile import StepProfile
from kubetune_trainer.recipe.rank import Rank, all_max, all_sum, barrier, broadcast, setup_rank
from kubetune_trainer.recipe.report import Progress, Silent
from kubetune_trainer.storage import Store


@dataclass(frozen=True)
class Data:
    train_rows: Sequence[batching.Row]  # every row (memory-mapped); each rank takes its share per epoch
    eval_batches: list[list[batching.Row]]  # this rank's share of the held-out set
    counts: DataReport  # the whole dataset's
    plan: batching.StepPlan  # batching.step_plan: the preflight's count too
    heldout: Sequence[Any] = ()  # the held-out samples, in order (spec.evaluation.tasks take their items from them)


@dataclass(frozen=True)
class Engine:
    engine: Any
    adjusted: dict[str, Any]  # what was changed from the spec to make the model train (manifest.json)
    keep_alive: Any = None  # transformers' HfDeepSpeedConfig: from_pretrained partitions weights while it lives
    config: dict[str, Any] = field(default_factory=dict)  # the DeepSpeed config that runs (manifest.json)


@dataclass
class Record:
    """What the run has measured; saved in every checkpoint and restored on resume."""

    base: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # held-out evaluations of the adapter
    curve: list[dict[str, Any]] = field(default_factory=list)  # training loss and learning rate per logged step

    def state(self) -> dict[str, Any]:
        return {"base": self.base, "history": self.history, "curve": self.curve}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Record:
        return cls(state.get("base", {}), state.get("history", []), state.get("curve", []))


@dataclass
class Window:
    """Training loss and tokens since the last logged step."""

    loss: Any = 0.0  # a tensor on the device while steps run: read once per window, not once per step
    steps: int = 0
    tokens: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_step: int = 0


# set-up


def setup_data(me: Rank, tokenizer: Any) -> Data:
    """The worker's prepared dataset (made by the launcher before any rank started: prepared.py), memory-mapped
    and checked; every rank sees every row and takes its share each epoch (batching.global_micro_batches)."""
    spec = me.spec.dataset
    try:
        # checked element by element by the launcher (made there, or downloaded and checked): shapes only here
        pairs = me.spec.method.type == "dpo"
        ready = prepared.load(me.paths.prepared_dir, len(tokenizer), spec.maxSeqLength, full=False, pairs=pairs)
    except prepared.PreparedInvalid as exc:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"the prepared dataset is not usable: {exc}") from exc
    train_rows, val_rows = ready.train, ready.validation
    meta = ready.meta
    if meta.packingOff:
        me.notice(
            f"dataset.packing turned off: {meta.packingOff} models do not keep packed samples apart (their attention "
            "mask ignores restarted positions); each sample gets a row of its own"
        )
    micro = me.spec.training.microBatchSize
    plan = batching.step_plan(len(train_rows), me.spec.training, me.world)
    what = DataReport(
        train=meta.counts.train,
        validation=meta.counts.validation,
        trainSequences=len(train_rows),
        packing=meta.packing,
        modelType=model_type(me.paths.model_source, me.spec.model),
    )
    if me.is_main:  # what became of the records, before any step: truncations and drops are no surprise later
        if me.paths.progress == "json":
            events.emit(events.DataLine(overlength=spec.overlength_policy, **what.model_dump()))
        else:
            c = what.train
            print(
                f"data: {c.records} training records -> {c.samples} samples ({c.kept_end} cut from the start, "
                f"{c.truncated} cut from the end, {c.dropped} dropped, {c.empty} with nothing to learn; "
                f"overlength: {spec.overlength_policy}), {what.trainSequences} sequences, packing {'on' if what.packing else 'off'}",
                file=sys.stdout,
                flush=True,
            )
    mine = [val_rows[r] for r in range(me.rank, len(val_rows), me.world)]
    eval_count = math.ceil(math.ceil(len(val_rows) / me.world) / micro)
    eval_batches = evaluate.local_batches(mine, micro, eval_count)
    return Data(train_rows, eval_batches, what, plan, val_rows.table)


def setup_engine(me: Rank, plan: batching.StepPlan) -> Engine:
    import deepspeed
    import torch
    from transformers import get_scheduler

    on_gpu = me.device.type == "cuda"
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    t = me.spec.training
    keep_alive = None
    if me.spec.deepspeed.zeroStage == 3:  # the model is built partitioned: the config's ZeRO part is all this reads
        from transformers.integrations import HfDeepSpeedConfig

        # the ZeRO part does not depend on the adapter's size, which is known only once the model is built
        keep_alive = HfDeepSpeedConfig(deepspeed_config(me.spec, me.world, on_gpu, bf16=bf16))
    model = load_model(me.paths.model_source, me.spec.model, me.device)
    if t.gradientCheckpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model, adjusted = add_lora(model, me.spec.lora, t.seed)
    if me.paths.adapter_dir is not None:  # continue from an adapter; for DPO it is the reference too
        adapters.start_from(model, me.paths.adapter_dir, reference=me.spec.method.type == "dpo")
    for name, change in adjusted.items():
        me.notice(f"{name} {change['asked']} -> {change['used']}: {change['why']} (recorded in manifest.json)")
    if me.spec.output.merged:  # before any step: a merge that cannot happen fails now, not after training
        merge.weight_files(outputs.model_directory(me.paths.model_source, me.spec))
    if me.spec.output.merged and getattr(model.peft_config["default"], "target_parameters", None):
        raise TrainerFailure(
            Reason.CANNOT_MERGE,
            "output.merged cannot fold adapters on this model's fused expert parameters "
            f"({', '.join(sorted(model.peft_config['default'].target_parameters))}): list the attention layers in "
            "lora.targetModules (q_proj, k_proj, v_proj, o_proj) or set output.merged: false",
        )
    params = [p for p in model.parameters() if p.requires_grad]
    config = deepspeed_config(me.spec, me.world, on_gpu, bf16=bf16, trainable=sum(p.numel() for p in params))
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t.scheduler]

    def scheduler(optimizer: Any) -> Any:
        return get_scheduler(schedule, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps)

    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config, lr_scheduler=scheduler)
    return Engine(engine, adjusted, keep_alive, config)


def loss_chunk(me: Rank, module: Any) -> int:
    """Tokens per chunk of the training loss (training.chunkedLoss), 0 for the whole micro-batch at once."""
    import inspect

    vocab = int(module.config.vocab_size)
    if not chunked_loss(me.spec, vocab):
        return 0
    forward = inspect.signature(module.get_base_model().forward).parameters
    if "logits_to_keep" not in forward or module.get_output_embeddings() is None:
        me.notice(f"training.chunkedLoss: {module.config.model_type} models cannot leave out their logits; whole-batch loss")
        return 0
    return loss_chunk_tokens(vocab)


# the recipe


class Recipe:
    """Trains one LoRA adapter: built from what the set-up steps returned; `train` runs the loop."""

    def __init__(
        self,
        me: Rank,
        store: Store,
        tokenizer: Any,
        batches: Data,
        built: Engine,
        clock: Clock | None = None,
        memory: meter.Meter | None = None,
        stop: Stop | None = None,
    ) -> None:
        self.me, self.store, self.tokenizer, self.data, self.built = me, store, tokenizer, batches, built
        self.stop = stop or Stop()
        self.clock = clock or Clock(False)
        self.meter = memory or meter.Meter(me.device)
        self.engine = built.engine
        self.t = me.spec.training
        self.record = Record()
        self.watch = choices.Watch()
        self.window = Window()
        self.trained_tokens = 0.0
        self.varlen = self.engine.module.config._attn_implementation == attention.VARLEN
        self.loss_chunk = loss_chunk(me, self.engine.module)
        dpo = me.spec.method.dpo_settings if me.spec.method.type == "dpo" else None
        self.objective = objectives.objective(dpo, objectives.Model(self.engine, me.device, self.varlen), self.loss_chunk)
        self.tracker = tracking.start(me.spec, me.worker) if me.is_main else None
        main, paths = me.is_main, me.paths
        # where the run's events go: rank 0's progress lines, bar and tracker; nowhere on the other ranks
        self.events: Progress | Silent = (
            Progress(batches.plan.total_steps, style=paths.progress, tracker=self.tracker) if main else Silent()
        )
        self._epoch: tuple[int, Sequence[list[batching.Row]]] = (-1, [])
        profiled = paths.profile_steps if main else 0  # the benchmarks' step-time split
        self.profile = StepProfile(me.device, profiled, paths.work_dir / "profile.json") if profiled else StepProfile.disabled()
        self.checkpoints = checkpoint.Checkpoints(me, store, paths.sync_checkpoints)
        self.task_items = answers.own_items(me.spec, tokenizer, paths.items_dir)  # read now: a bad record fails before step 1

    # evaluation

    def evaluate(self, adapter: bool) -> dict[str, float]:
        """The objective's held-out metrics with the adapter, or without it (the base model), in eval mode."""
        self.engine.eval()
        try:
            return self.objective.evaluate(self.data.eval_batches, self.tokenizer.pad_token_id, adapter)
        finally:
            self.engine.train()

    def observe(self, step: int, result: dict[str, float]) -> bool:
        stopping = self.t.earlyStopping
        return self.watch.see(step, float(result["evalLoss"]), stopping.minDelta if stopping else 0.0)

    # one optimizer step

    def micro_batches(self, step: int) -> list[list[batching.Row]]:
        epoch, offset = divmod(step, self.data.plan.steps_per_epoch)
        if self._epoch[0] != epoch:
            t = self.t
            self._epoch = (
                epoch,
                batching.global_micro_batches(
                    self.data.train_rows,
                    micro=t.microBatchSize,
                    world=self.me.world,
                    rank=self.me.rank,
                    multiple=t.gradientAccumulationSteps,
                    seed=t.seed + epoch if self.me.spec.dataset.shuffle else None,
                ),
            )
        accumulate = self.t.gradientAccumulationSteps
        return list(self._epoch[1][offset * accumulate : (offset + 1) * accumulate])

    def step(self, step: int) -> None:
        """One optimizer step. Nothing here waits for the device: the loss stays a device tensor until the window
        is logged (log_window) or a checkpoint is written (finite), where it is read once."""
        batches = self.micro_batches(step)
        step_tokens = 0
        section = self.profile.section
        for batch in batches:
            with section("data"):
                collated = batching.collate(batch, self.tokenizer.pad_token_id)
                inputs = {k: v.to(self.me.device, non_blocking=True) for k, v in collated.items()}
                if self.varlen:  # the samples' bounds, from the host's positions
                    inputs.update(attention.bounds(collated["position_ids"], self.me.device))
                labels = inputs.pop("labels")
            with section("forward"):
                loss = self.objective.loss(inputs, labels)
            with section("backward"):
                self.engine.backward(loss)
            with section("optimizer"):
                self.engine.step()
            self.window.loss = self.window.loss + loss.detach().float() / len(batches)
            step_tokens += batching.useful_tokens(batch)
        self.window.steps += 1
        self.window.tokens += step_tokens
        self.window.last_step = step + 1

    def finite(self) -> float:
        """The window's mean training loss, read from the device; a NaN or infinite loss ends the run here (the
        steps since the last read are named: a non-finite loss stays non-finite once summed)."""
        w = self.window
        loss = float(w.loss) / max(w.steps, 1)
        if not math.isfinite(loss):
            first = w.last_step - w.steps + 1
            where = f"at step {w.last_step}" if w.steps == 1 else f"in steps {first}-{w.last_step}"
            raise TrainerFailure(Reason.NAN_LOSS, f"training loss became {loss} {where}; lower training.learningRate")
        return loss

    def log_window(self, done: int) -> float | None:
        """Every logEverySteps (and at the end): one all-reduce for the window's loss and tokens, not one per step."""
        if done % self.t.logEverySteps and done != self.data.plan.total_steps:
            return None
        w = self.window
        # the checkpoint upload's progress rides on the all-reduce made anyway: COMPLETE once every part is in storage
        loss_sum, tokens, uploaded = all_sum(self.me.device, [self.finite(), w.tokens, self.checkpoints.part_done()])
        self.checkpoints.complete_if(uploaded == self.me.world)
        loss = loss_sum / self.me.world
        self.trained_tokens += tokens
        now = time.monotonic()
        lr = float(self.engine.get_lr()[0])
        per_second = tokens / max(now - w.started, 1e-9)
        self.events.step(done, done / self.data.plan.steps_per_epoch, loss, lr, per_second, self.checkpoints.complete_step)
        if self.me.is_main:  # the curve is rank 0's record (metrics.json)
            self.record.curve.append({"step": done, "loss": round(loss, 6), "learningRate": lr})
        self.window = Window(started=now)
        return loss

    def maybe_eval(self, done: int) -> EarlyStop | None:
        """Evaluate every evalEverySteps; keep the best adapter; returns why the run stops early, if it does."""
        t = self.t
        if not t.evalEverySteps or done % t.evalEverySteps or done == self.data.plan.total_steps:
            return None
        result = self.evaluate(adapter=True)
        self.record.history.append({"step": done, **result})
        self.events.emit(events.Eval(step=done, model="adapter", **result))
        if self.observe(done, result) and self.me.spec.output.adapter == "best":
            self.keep_best(done, result)
        stopped = choices.early_stop(self.watch, t.earlyStopping, done)
        if stopped is not None:
            self.events.emit(events.EarlyStopping(**stopped.model_dump()))
        return stopped

    # the loop

    def train(self) -> Metrics | None:
        start = self.resume()
        self.meter.mark()
        self.clock.lap("resume")
        if not self.record.base:
            self.record.base = self.evaluate(adapter=False)
            self.events.emit(events.Eval(step=0, model="base", **self.record.base))
            self.clock.lap("evaluate the base model")
        for seen in self.record.history:  # a resumed run picks up where its evaluations left off
            self.observe(int(seen["step"]), seen)
        self.restore_best()
        self.events.start(start)
        started, done, loss, stopped = time.monotonic(), start, math.nan, None
        self.engine.train()
        for step in range(start, self.data.plan.total_steps):
            if self.stop.agreed(self.me.host, self.me.world):  # SIGTERM on any rank: checkpoint this step boundary, then end
                self.preempt(step, start)
            self.profile.begin(step, start)
            self.profile.step_started()
            self.step(step)
            self.profile.step_ended()
            done = step + 1
            if done - start == 2 and self.me.device.type != "cuda":  # the profiler's count: two steps are enough
                self.meter.stop()
            logged = self.log_window(done)
            loss = loss if logged is None else logged
            stopped = self.maybe_eval(done)
            if stopped:
                break
            self.maybe_checkpoint(done)
        elapsed = time.monotonic() - started
        peak = self.meter.stop()
        self.checkpoints.settle()
        self.events.close()
        self.clock.lap("training steps")
        if stopped:  # the evaluation that stopped the run is the last one: no second pass over the held-out set
            last = {k: v for k, v in self.record.history[-1].items() if k != "step"}
        else:
            last = self.evaluate(adapter=True)
            self.record.history.append({"step": done, **last})
            self.observe(done, last)
        self.clock.lap("final evaluation")
        adapter_dir, chosen = self.choose_adapter(done, last)
        scored: tuple[dict[str, TaskResult] | None, list[dict[str, Any]]] = (None, [])
        if self.me.spec.evaluation.tasks:
            if chosen["step"] != done:  # the best adapter is written: the tasks judge it, not the last step's
                self.load_adapter(adapter_dir)
            me = self.me
            module, heldout = self.engine.module, self.data.heldout
            scored = answers.run(
                me.spec, module, self.tokenizer, heldout, me.device, me.rank, me.world, self.zero3, own=self.task_items
            )
            self.clock.lap("task evaluation")
        stats = TrainStats(
            steps=done,
            epochs=done / self.data.plan.steps_per_epoch,
            loss=loss,
            usefulTokensPerSecond=round(self.trained_tokens / elapsed, 1) if elapsed > 0 and self.trained_tokens else None,
            worldSize=self.me.world,
            earlyStopping=stopped,
            **self.memory_record(peak),
        )
        if not self.me.is_main:
            return None
        metrics = self.write_outputs(adapter_dir, chosen, last, stats, *scored)
        self.clock.lap("save and upload the outputs")
        return metrics

    def memory_record(self, peak: int | None) -> dict[str, Any]:
        """The largest peak of any rank against the preflight's estimate (same arithmetic), for metrics.json."""
        from kubetune_api.memory import estimate, shape_from_dir

        measured = all_max(self.me.device, [float(peak if peak is not None else -1)])[0]
        out: dict[str, Any] = {}
        if measured >= 0:
            out["peakMemoryBytes"] = int(measured)
            out["peakMemoryMeasuredBy"] = "torch.cuda.max_memory_allocated" if self.me.device.type == "cuda" else "profiler"
        with contextlib.suppress(Exception):  # a model without config.json or safetensors: no estimate, no failure
            shape = shape_from_dir(outputs.model_directory(self.me.paths.model_source, self.me.spec))
            guess = estimate(shape, self.me.spec, self.me.world, self.me.device.type == "cuda")
            out["estimatedMemoryBytes"] = guess.total
            out["estimatedMemoryParts"] = guess.parts
        return out

    # adapters

    def save_adapter(self, name: str = "adapter") -> Path:
        import deepspeed

        target = self.me.paths.work_dir / name
        module = self.engine.module
        gather = (
            deepspeed.zero.GatheredParameters([p for p in module.parameters() if p.requires_grad], modifier_rank=None)
            if self.zero3
            else contextlib.nullcontext()
        )
        with gather:
            if self.me.is_main:
                shutil.rmtree(target, ignore_errors=True)
                module.save_pretrained(str(target), selected_adapters=["default"])  # never the DPO reference
                (target / "kubetune-config.yaml").write_text(spec_io.dump_spec(self.me.spec))
        barrier()
        return target

    @property
    def zero3(self) -> bool:
        return self.me.spec.deepspeed.zeroStage == 3

    def load_adapter(self, directory: Path) -> None:
        """The adapter's weights from rank 0's directory into the model on every rank (the written best adapter,
        for the tasks to judge): under ZeRO-3 through gathered parameters, else broadcast from rank 0."""
        import deepspeed
        import torch.distributed as dist

        module = self.engine.module
        trainable = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=0) if self.zero3 else contextlib.nullcontext():
            if self.me.is_main:
                from peft import set_peft_model_state_dict
                from safetensors.torch import load_file

                set_peft_model_state_dict(module, load_file(str(directory / adapters.WEIGHTS)), "default")
            if not self.zero3:
                for param in trainable:
                    dist.broadcast(param.data, src=0)

    def keep_best(self, step: int, result: dict[str, float]) -> None:
        """The new best adapter, here and (small) beside the checkpoints, so a gang restart still has it."""
        local = self.save_adapter("adapter-best")  # every rank: under ZeRO-3 the weights are gathered
        self.watch.snapshot_step = step
        self.checkpoints.keep_best(local, step, result)

    def restore_best(self) -> None:
        """After a resume: fetch the best adapter kept before the restart, when it is the one the history names."""
        if self.me.spec.output.adapter != "best" or not self.watch.best_step or not self.me.is_main:
            return
        if self.checkpoints.restore_best(self.me.paths.work_dir / "adapter-best", self.watch.best_step):
            self.watch.snapshot_step = self.watch.best_step

    def choose_adapter(self, last_step: int, last: dict[str, float]) -> tuple[Path, dict[str, Any]]:
        """The adapter to write and its evaluation: the best one kept (output.adapter: best), else the last."""
        watch, wanted = self.watch, self.me.spec.output.adapter
        wanted_best = choices.wants_best(wanted, watch, last_step)
        kept = broadcast(self.me, watch.snapshot_step == watch.best_step) if wanted_best else False  # every rank agrees
        choice = choices.adapter_choice(wanted, watch, last_step, kept)
        if choice == "best":
            best = next(h for h in self.record.history if h["step"] == watch.best_step)
            return self.me.paths.work_dir / "adapter-best", {**best, "choice": "best"}
        return self.save_adapter(), {"step": last_step, **last, "choice": choice}

    # checkpoints (the protocol is checkpoint.Checkpoints')

    def save_checkpoint(self, step: int) -> None:
        self.finite()  # never a checkpoint of weights a NaN loss has reached
        state = {"step": step, **self.record.state(), "worldSize": self.me.world}
        self.checkpoints.save(self.engine, step, state)

    def maybe_checkpoint(self, done: int) -> None:
        every = self.t.checkpointEverySteps
        if every and done % every == 0 and done != self.data.plan.total_steps:
            self.save_checkpoint(done)

    def preempt(self, step: int, start: int) -> None:
        """A checkpoint at this step boundary (unless one stands for it already), COMPLETE before the rank ends."""
        written = None
        if step > start and self.checkpoints.saved_step != step:
            self.save_checkpoint(step)
            written = checkpoint.tag(step)
        self.checkpoints.settle()  # an upload still in flight (a periodic one) completes too
        raise Preempted(step, written)

    def resume(self) -> int:
        """The step to continue from: the newest complete checkpoint this job wrote, its record restored."""
        found = self.checkpoints.resume(self.engine)
        if found is None:
            return 0
        step, state = found
        self.record = Record.restore(state)
        return step

    # outputs (rank 0)

    def write_outputs(
        self,
        adapter_dir: Path,
        chosen: dict[str, Any],
        last: dict[str, float],
        stats: TrainStats,
        task_results: dict[str, TaskResult] | None = None,
        samples: Sequence[dict[str, Any]] = (),
    ) -> Metrics:
        record = self.record
        fetched = self.me.paths.work_dir / rank_env.FETCH_FILE  # the launcher's: base model bytes from cache and storage
        metrics = Metrics(
            base=Evaluation(**record.base),
            final=Evaluation(**{k: v for k, v in chosen.items() if k not in ("step", "choice")}),  # the written adapter's
            adapter=AdapterChoice(choice=chosen["choice"], step=chosen["step"]),
            best=next((Evaluated(**h) for h in record.history if h["step"] == self.watch.best_step), None),
            last=Evaluation(**last),
            history=[Evaluated(**h) for h in record.history],
            curves=Curves.model_validate(
                {"train": record.curve, "eval": [{"step": h["step"], "evalLoss": h["evalLoss"]} for h in record.history]}
            ),
            train=stats,
            data=self.data.counts,
            fetch=Fetch.model_validate_json(fetched.read_text()) if fetched.is_file() else None,
            tasks=task_results,
        )
        me = self.me
        kernels = Kernels(attention=str(self.engine.module.config._attn_implementation), lossChunkTokens=self.loss_chunk)
        about = outputs.manifest(me.spec, me.paths, me.worker, me.world, self.built.adjusted, self.built.config, kernels)
        if self.tracker is not None:
            metrics.tracking = TrackingOutcome(experiment=self.tracker.experiment, runId=self.tracker.started())
        written = outputs.write(self.store, me.spec, me.paths, adapter_dir, metrics, about, self.tokenizer, samples)
        if self.tracker is not None:  # _SUCCESS is written: the final metrics, and the version that points at it
            written.tracking = tracking.finished(self.tracker, me.spec, me.worker, written, about)
        return written


class Clock:
    """Rank 0's timing events: where the fixed cost of a run goes (bench/data_bench.py prints them)."""

    def __init__(self, main: bool) -> None:
        self.main, self.last = main, time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        if self.main:
            events.emit(events.Timing(phase=phase, seconds=round(now - self.last, 3)))
        self.last = now


def train(spec: FineTuneJobSpec, worker: WorkerEnv, paths: RankEnv) -> Metrics | None:
    stop = Stop().install()  # first: a SIGTERM while the rank sets up is noted, and acted on at the first step
    if paths.progress == "bar":  # a person at a terminal: words, not JSON, and the libraries' prints in the log
        terminal.install(quiet_libraries=True)
    started = float(os.environ.get(rank_env.PROCESS_START, "0")) or None
    clock = Clock(os.environ.get("RANK", "0") == "0")
    if started is not None:  # from the launcher's clock: interpreter start and imports
        clock.last = time.monotonic() - (time.time() - started)
        clock.lap("process start and imports")
    me = setup_rank(spec, worker, paths)
    clock.lap("distributed init")
    store = Store(spec.storage)
    tokenizer = load_tokenizer(paths.model_source, spec.model)
    batches = setup_data(me, tokenizer)
    clock.lap("read and tokenize data")
    memory = meter.Meter(me.device)
    memory.start()
    built = setup_engine(me, batches.plan)
    clock.lap("load model, DeepSpeed init")
    recipe = Recipe(me, store, tokenizer, batches, built, clock, memory, stop)
    try:
        metrics = recipe.train()
        if terminal.active is not None and me.is_main:
            terminal.active.write(terminal.active.table())
        return metrics
    except BaseException as exc:
        if recipe.tracker is not None:  # the run says how this attempt ended; a resumed one sets it running again
            recipe.tracker.finish("KILLED" if getattr(exc, "reason", None) == Reason.PREEMPTED else "FAILED")
            recipe.tracker.close(seconds=5.0)
        raise


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
    # DeepSpeed's autotuner imports the mlflow library whenever it is installed (1.5 s of every rank's start where it
    # is, as in the test environment); kubetune never uses it (recipe/tracking.py speaks MLflow's REST API itself)
    sys.modules.setdefault("mlflow", None)  # type: ignore[arg-type]
    paths = RankEnv.from_environ()
    worker = WorkerEnv.from_environ()
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # only rank 0 tracks: the others drop MLflow's credentials before any model or library code runs
        drop_tracking_credentials(os.environ)
    try:
        metrics = train(spec_io.load_spec(worker.config_path), worker, paths)
        if metrics is not None:  # rank 0's
            (paths.result_dir / rank_env.METRICS_FILE).write_text(metrics.to_json())
        return 0
    except BaseException as exc:  # every failure leaves its reason for the launcher, then the traceback for the logs
        reason, message = _classify(exc)
        paths.result_dir.mkdir(parents=True, exist_ok=True)
        (paths.result_dir / rank_env.failure_file(rank)).write_text(
            RankFailure(
                rank=rank, reason=reason.value, message=message, step=getattr(exc, "step", None) or None
            ).model_dump_json()
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
    from kubetune_trainer import quick_exit

    quick_exit.run(main)
