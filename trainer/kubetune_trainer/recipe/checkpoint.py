"""Checkpoints under output.uri/checkpoints/step-NNNNNN/: written by every rank, uploaded in the background, marked
COMPLETE last, pruned, resumed; the best adapter beside them. The protocol is `Checkpoints`, one per rank.

What storage holds is untrusted: a checkpoint is resumed only when its COMPLETE record names this job (the spec's
training digest and, in a cluster, the FineTuneJob's uid), and its files are read as tensors and plain data only
(`safe_loading`: every torch.load is weights_only, with DeepSpeed's few state classes allow-listed), never unpickled.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import pickle
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api import events, layout, records
from kubetune_api.conditions import Reason
from kubetune_api.job import FineTuneJobSpec, digest_forms, sections_dump
from kubetune_api.records import BestRecord, CheckpointRecord, Identity, RngState
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.recipe import choices
from kubetune_trainer.recipe.rank import Rank, barrier, broadcast
from kubetune_trainer.spec_io import dump_spec
from kubetune_trainer.storage import Store, join

# What decides the weights a run produces; workers and runPolicy may change between attempts (a resume on another
# world size reloads the weights alone), storage holds only where to reach the bucket.
IDENTITY_SECTIONS = ("model", "method", "dataset", "lora", "training", "deepspeed", "output")
# The only classes (beyond tensors, numbers, strings and containers) that DeepSpeed's checkpoints may hold.
SAFE_GLOBALS = (
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)

COMPLETE = "COMPLETE"
TAG = choices.TAG


tag = layout.checkpoint_tag


def root(output_uri: str) -> str:
    return join(output_uri, layout.CHECKPOINTS)


def complete_tags(store: Store, output_uri: str) -> list[str]:
    """Complete checkpoints, oldest first. A checkpoint without COMPLETE (a rank died while writing) is ignored."""
    tags = set()
    for relative, _, _ in store.list(root(output_uri)):
        parts = relative.split("/")
        if len(parts) == 2 and parts[1] == COMPLETE and TAG.match(parts[0]):
            tags.add(parts[0])
    return sorted(tags, key=choices.step_of)


def all_tags(store: Store, output_uri: str) -> list[str]:
    return sorted({r.split("/")[0] for r, _, _ in store.list(root(output_uri)) if TAG.match(r.split("/")[0])})


def mark_complete(store: Store, output_uri: str, record: CheckpointRecord) -> None:
    store.write_text(join(root(output_uri), tag(record.step), COMPLETE), record.model_dump_json())


def read_info(store: Store, output_uri: str, name: str) -> CheckpointRecord:
    uri = join(root(output_uri), name, COMPLETE)
    record = records.read(CheckpointRecord, store.read_text(uri))
    if record is None:
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, f"{uri} is not a checkpoint record kubetune wrote")
    return record


def _spec_digest(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


def identity(spec: FineTuneJobSpec, job_uid: str) -> Identity:
    """What a checkpoint records about the job that wrote it. Empty fields are left out of the digest, so a field a
    later version adds (empty unless set) does not keep an upgraded trainer from resuming its checkpoints."""
    sections = sections_dump(spec, IDENTITY_SECTIONS)
    return Identity(specDigest=_spec_digest(sections), jobUid=job_uid)


def spec_digests(spec: FineTuneJobSpec) -> set[str]:
    """The digests a checkpoint of this spec may carry: identity's, and those of the forms earlier versions wrote
    (before empty fields were left out; before a default changed: job.digest_forms)."""
    return {_spec_digest(form) for form in digest_forms(spec, IDENTITY_SECTIONS)}


def check_identity(record: Identity, mine: Identity, where: str, digests: set[str]) -> None:
    """Refuse a checkpoint that another job, or another spec, wrote: resuming it would continue someone else's run."""
    refusal = record.refusal(mine, digests, where)
    if refusal is not None:
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, refusal)


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Within this block every torch.load is forced to weights_only mode (tensors and plain data, plus the four
    allow-listed DeepSpeed classes): DeepSpeed's engines ask torch.load for full unpickling, which would run any
    pickle a writer of the bucket left there; that request is overridden here, never honoured."""
    import importlib

    import torch

    allowed: list[Any] = []
    for dotted in SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(getattr(importlib.import_module(module), name))
    # the name builtins.getattr in a checkpoint means enum_member over these classes, and nothing else
    enums: tuple[type[enum.Enum], ...] = tuple(c for c in allowed if isinstance(c, type) and issubclass(c, enum.Enum))
    allowed.append((functools.partial(enum_member, enums), "builtins.getattr"))
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return original(*args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise TrainerFailure(
                Reason.CHECKPOINT_MISMATCH,
                f"a checkpoint file holds objects other than tensors and DeepSpeed's state: refusing to load it ({refused(exc)})",
            ) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def enum_member(enums: tuple[type[enum.Enum], ...], owner: Any, name: Any) -> enum.Enum:
    """What `getattr(owner, name)` may mean in a checkpoint: a member of an allow-listed Enum by its name. Python
    3.11.0 to 3.11.4 (Debian bookworm's python3 among them) pickle an Enum member as getattr(TheEnum, "NAME"), later
    ones as TheEnum(value); DeepSpeed's checkpoints hold ZeroStageEnum, so a checkpoint written by one Python must
    resume under another. Any other getattr, which could reach any attribute of an allowed object, is refused."""
    if owner in enums and isinstance(name, str) and name in owner.__members__:
        return owner.__members__[name]  # type: ignore[no-any-return]
    raise pickle.UnpicklingError(
        f"Unsupported global: GLOBAL getattr({getattr(owner, '__name__', type(owner).__name__)}, {name!r})"
    )


def refused(exc: Exception) -> str:
    """What torch's weights-only unpickler refused, in one bounded line: the global it met (torch's own words,
    "Unsupported global: GLOBAL module.name"), else the message's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = next((line for line in lines if "Unsupported global" in line or "Unsupported operand" in line), None)
    text = named or (lines[0] if lines else type(exc).__name__)
    return text.split("WeightsUnpickler error: ", 1)[-1].split(" was not an allowed global", 1)[0][:300]


def prune(store: Store, output_uri: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the newest complete one."""
    complete = complete_tags(store, output_uri)
    dropped = choices.doomed(complete, all_tags(store, output_uri), keep) if complete else []
    for name in dropped:
        store.delete_prefix(join(root(output_uri), name))
    return dropped


# the best adapter so far, kept beside the checkpoints (an adapter is small) so a gang restart does not lose it

BEST = "best"


def save_best(store: Store, output_uri: str, adapter_dir: Path, record: BestRecord) -> None:
    """Upload under best/step-N/ first, then the BEST record naming it, then drop older ones: a crash in between
    leaves the previous record pointing at complete files."""
    where = join(root(output_uri), BEST)
    name = record.tag
    store.upload_dir(adapter_dir, join(where, name))
    store.write_text(join(where, "BEST"), record.model_dump_json())
    for old in {r.split("/")[0] for r, _, _ in store.list(where)} - {name, "BEST"}:
        if TAG.match(old):
            store.delete_prefix(join(where, old))


def load_best(store: Store, output_uri: str, target: Path, step: int, mine: Identity, digests: set[str]) -> bool:
    """Fetch the kept best adapter into target when its record is this job's and names `step`; False otherwise."""
    where = join(root(output_uri), BEST)
    if not store.exists(join(where, "BEST")):
        return False
    record = records.read(BestRecord, store.read_text(join(where, "BEST")))
    if record is None or not record.names(step) or record.refusal(mine, digests, "the best adapter") is not None:
        return False
    source = join(where, tag(step))
    shutil.rmtree(target, ignore_errors=True)
    here = store.local_path(source)
    if here is None:
        store.download_prefix(source, target, Reason.TRAINER_ERROR, "best adapter")
    else:
        shutil.copytree(here, target)
    return True


# RNG state, as JSON (Python's) and safetensors (torch's): resuming reads no pickle


def save_rng(directory: Path, rank: int) -> None:
    import torch
    from safetensors.torch import save_file

    version, state, gauss = random.getstate()
    (directory / f"rng-rank{rank}.json").write_text(RngState(version=version, state=list(state), gauss=gauss).model_dump_json())
    save_file({"torch": torch.get_rng_state()}, str(directory / f"rng-rank{rank}.safetensors"))


def load_rng(directory: Path, rank: int) -> None:
    import torch
    from safetensors.torch import load_file

    python, tensors = directory / f"rng-rank{rank}.json", directory / f"rng-rank{rank}.safetensors"
    if not (python.is_file() and tensors.is_file()):
        return
    saved = records.read(RngState, python.read_text())
    if saved is None:
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, f"{python.name} is not an RNG state kubetune wrote")
    try:
        random.setstate((saved.version, tuple(saved.state), saved.gauss))
    except (TypeError, ValueError) as exc:  # a version or an index random refuses
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, f"{python.name} is not an RNG state kubetune wrote: {exc}") from exc
    rng = load_file(str(tensors)).get("torch")
    if rng is None or rng.dtype != torch.uint8:
        raise TrainerFailure(Reason.CHECKPOINT_MISMATCH, f"{tensors.name} is not an RNG state kubetune wrote")
    torch.set_rng_state(rng)


# the protocol, as one rank runs it


@dataclass
class Upload:
    """A checkpoint on its way to storage, in a background thread, while training goes on. COMPLETE is written
    only once every worker's upload has finished (learned through the window all-reduce that is made anyway)."""

    step: int
    started: float
    stall: float  # seconds the loop stopped to write the checkpoint locally
    thread: threading.Thread | None = None  # this worker's upload (local rank 0 of a remote output), else None
    error: list[BaseException] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def check(self) -> None:
        if self.error:
            raise self.error[0]


class Checkpoints:
    """One rank's side of the checkpoint protocol: every rank writes its part here, local rank 0 uploads the
    worker's in the background while training goes on, rank 0 marks it COMPLETE once every worker's part is in
    storage (learned through the all-reduce the loop makes anyway), then prunes; the best adapter is kept beside
    them; a restarted gang resumes from the newest complete one this job wrote."""

    def __init__(self, me: Rank, store: Store, synchronous: bool = False) -> None:
        self.me, self.store, self.uri = me, store, me.spec.output.uri
        self.synchronous = synchronous  # upload inside the loop (the benchmark's baseline)
        self.upload: Upload | None = None
        self.saved_step: int | None = None  # the step of the newest checkpoint this rank wrote
        self.complete_step: int | None = None  # the newest marked COMPLETE (or resumed from): rank 0's progress says it

    def staging(self) -> tuple[Path, bool]:
        """Where checkpoints are written on this machine, and whether they must then be uploaded."""
        here = self.store.local_path(root(self.uri))
        return (here, False) if here is not None else (self.me.paths.work_dir / "checkpoints", True)

    def save(self, engine: Any, step: int, state: dict[str, Any]) -> None:
        """Write the checkpoint here (every rank), then upload it in the background: training goes on meanwhile."""
        self.settle()  # one upload in flight at a time
        me = self.me
        started = time.monotonic()
        (local, remote), name = self.staging(), tag(step)
        engine.save_checkpoint(str(local), tag=name, client_state={"kubetune": state}, exclude_frozen_parameters=True)
        save_rng(local / name, me.rank)
        if me.is_main:
            (local / name / "kubetune-config.yaml").write_text(dump_spec(me.spec))
        barrier()
        upload = Upload(step, started, 0.0)
        if remote and me.local_rank == 0:

            def send() -> None:
                try:
                    self.store.upload_dir(local / name, join(root(self.uri), name))
                    shutil.rmtree(local / name, ignore_errors=True)
                except BaseException as exc:  # raised in the training loop by check()
                    upload.error.append(exc)

            upload.thread = threading.Thread(target=send, name=f"kubetune-upload-{name}", daemon=True)
            upload.thread.start()
        upload.stall = time.monotonic() - started
        self.upload, self.saved_step = upload, step
        if self.synchronous or not remote:  # written where it belongs already: complete at once
            self.settle()

    def part_done(self) -> float:
        """1.0 when this rank has no upload in flight (what the loop's all-reduce sums); a failed upload fails the
        rank now, and COMPLETE is never written for it."""
        upload = self.upload
        if upload is not None and upload.done:
            upload.check()
        return float(upload is None or upload.done)

    def complete_if(self, every_part_done: bool) -> None:
        if self.upload is not None and every_part_done:
            self.complete()

    def settle(self) -> None:
        """Wait for the checkpoint upload in flight, on every worker, and mark it COMPLETE."""
        if self.upload is None:
            return
        if self.upload.thread is not None:
            # bounded by the upload's own requests: every S3 call has connect and read timeouts and a retry limit
            # (storage/s3.py), a local copy ends with its file; a failure is raised by complete()
            self.upload.thread.join()
        barrier()
        self.complete()

    def complete(self) -> None:
        upload, me = self.upload, self.me
        if upload is None:
            return
        upload.check()
        self.upload = None
        if not me.is_main:
            return
        step = upload.step
        self.complete_step = step
        mine = identity(me.spec, me.worker.job_uid)
        mark_complete(self.store, self.uri, CheckpointRecord(step=step, worldSize=me.world, **mine.model_dump()))
        prune(self.store, self.uri, me.spec.training.keepCheckpoints)
        now = time.monotonic()
        events.emit(
            events.Checkpoint(
                step=step,
                uri=join(root(self.uri), tag(step)),
                # the loop stopped this long (with uploads in the loop, until the upload ended too)
                stallSeconds=round(now - upload.started if self.synchronous else upload.stall, 3),
                completeAfterSeconds=round(now - upload.started, 3),
            )
        )

    def resume(self, engine: Any) -> tuple[int, dict[str, Any]] | None:
        """Load the newest complete checkpoint this job wrote into the engine, if there is one: its step and the
        recipe's state. A checkpoint another job or spec wrote fails the run (CheckpointMismatch) rather than being
        continued or silently ignored."""
        me = self.me
        newest = complete_tags(self.store, self.uri)[-1:] if me.is_main else None
        found = broadcast(me, newest)
        if not found:
            return None
        name = found[0]
        info = read_info(self.store, self.uri, name)
        check_identity(info, identity(me.spec, me.worker.job_uid), join(root(self.uri), name), spec_digests(me.spec))
        local, remote = self.staging()
        local = me.paths.work_dir / "resume" if remote else local
        if remote and me.local_rank == 0:
            self.store.download_prefix(join(root(self.uri), name), local / name, Reason.TRAINER_ERROR, "checkpoint")
        barrier()
        same_world = info.worldSize == me.world
        with safe_loading():
            _, client = engine.load_checkpoint(
                str(local),
                tag=name,
                load_module_strict=False,
                load_optimizer_states=same_world,
                load_lr_scheduler_states=same_world,
            )
        state = (client or {}).get("kubetune", {})
        if same_world:
            load_rng(local / name, me.rank)
        step = int(state.get("step", info.step))
        self.complete_step = step
        if me.is_main:
            events.emit(events.Resumed(step=step, checkpoint=name, optimizerRestored=same_world))
        return step, state

    def keep_best(self, adapter_dir: Path, step: int, result: dict[str, float]) -> None:
        """The new best adapter (small), beside the checkpoints: a gang restart still has it. Rank 0 writes it."""
        if self.me.is_main:
            mine = identity(self.me.spec, self.me.worker.job_uid)
            record = BestRecord(step=step, tag=tag(step), evalLoss=result.get("evalLoss"), **mine.model_dump())
            save_best(self.store, self.uri, adapter_dir, record)

    def restore_best(self, target: Path, step: int) -> bool:
        """The best adapter kept before a restart, when it is the one this job's history names (rank 0)."""
        mine = identity(self.me.spec, self.me.worker.job_uid)
        return load_best(self.store, self.uri, target, step, mine, spec_digests(self.me.spec))
