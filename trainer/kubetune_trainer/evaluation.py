"""`kubetune eval MANIFEST`: a job's evaluation.tasks on their own, on this machine, without training: the base model
and an adapter (the job's written one, or any other with --adapter) answer the same held-out items, so two adapters
can be compared on the same tasks. The model, the data and the adapter are fetched as a worker fetches them (the
same checks), the held-out split prepared as training prepares it (or the preflight's, from storage)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from kubetune_api import layout
from kubetune_api._types import quantity_value
from kubetune_api.conditions import Reason
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.metrics import TaskResult
from kubetune_trainer import adapters
from kubetune_trainer.data import prepared
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.inputs import cache_dir, fetch_inputs, fetch_task_items
from kubetune_trainer.storage import Store
from kubetune_trainer.tasks import table


def evaluate(
    spec: FineTuneJobSpec, adapter: str | None, base_only: bool, work: Path
) -> tuple[dict[str, TaskResult], list[dict[str, Any]]]:
    """The tasks' scores (base model and adapter) and the samples, one process, on a GPU when the job asks for
    GPUs and one is here, else on the CPU."""
    import torch
    import torch.distributed as dist

    from kubetune_trainer.model import load_model, load_tokenizer
    from kubetune_trainer.recipe import answers

    if not spec.evaluation.tasks:
        raise TrainerFailure(Reason.INVALID_SPEC, "the manifest has no evaluation.tasks: nothing to evaluate")
    store = Store(spec.storage)
    room = int(quantity_value(spec.workers.cacheSize))
    model_source, train, validation, entry = fetch_inputs(spec, store, cache_dir())
    try:
        ready_dir = prepared.for_worker(spec, model_source, train, validation, work, store, room)
        tokenizer = load_tokenizer(model_source, spec.model)
        heldout = prepared.load(ready_dir, len(tokenizer), spec.dataset.maxSeqLength).validation.table
        device = torch.device("cuda" if spec.workers.gpusPerWorker and torch.cuda.is_available() else "cpu")
        module = load_model(model_source, spec.model, device)
        if not base_only:
            from peft import PeftModel

            uri = adapter or layout.adapter_uri(spec.output.uri)
            where = adapters.fetch(store, uri, work / "adapter", room)
            module = PeftModel.from_pretrained(module, str(where))
        module.to(device).eval()
        if not dist.is_initialized():  # the scores are summed across ranks: here a group of one
            dist.init_process_group("gloo", init_method=f"file://{work / 'group'}", rank=0, world_size=1)
        sides = ("base",) if base_only else answers.SIDES
        own = answers.own_items(spec, tokenizer, fetch_task_items(spec, store, cache_dir()))
        return answers.run(spec, module, tokenizer, heldout, device, sides=sides, own=own)
    finally:
        if entry is not None:
            entry.release()


def main(spec: FineTuneJobSpec, adapter: str | None, base_only: bool, out: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="kubetune-eval-") as scratch:
        results, samples = evaluate(spec, adapter, base_only, Path(scratch))
    print("\n".join(table.lines(results)))
    if out is not None:
        body = {"tasks": {k: v.model_dump(exclude_none=True) for k, v in results.items()}, "samples": samples}
        out.write_text(json.dumps(body, indent=1, ensure_ascii=False))
    return 0
