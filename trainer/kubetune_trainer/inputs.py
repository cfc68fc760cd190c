"""What a pod fetches before any work: the base model (through the node's cache), the datasets and a starting
adapter, each checked against workers.cacheSize from the listing before a byte is fetched. The trainer pod's
launcher and the preflight pod both fetch through here."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from kubetune_api._types import quantity_value
from kubetune_api.conditions import Reason
from kubetune_api.contract import ENV_CACHE
from kubetune_api.job import FineTuneJobSpec
from kubetune_trainer import adapters
from kubetune_trainer.data.reading import is_data_file
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.model import check_hub_model
from kubetune_trainer.storage import Store, human_bytes
from kubetune_trainer.storage.model_cache import Entry, ModelCache, fetch_model


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path(tempfile.gettempdir()) / "kubetune-cache")


def _local_name(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _data_size(store: Store, uri: str) -> int:
    if not uri.endswith("/"):
        return store.size_of(uri, Reason.DATASET_MISSING, "dataset")
    shards = [size for relative, size, _ in store.list(uri) if is_data_file(relative)]
    if not shards:
        raise TrainerFailure(
            Reason.DATASET_MISSING, f"dataset not found: no .jsonl, .json or .parquet files (optionally .gz or .zst) under {uri}"
        )
    return sum(shards)


def dataset_uris(spec: FineTuneJobSpec) -> list[str]:
    """Every data URI the job reads: the datasets and the tasks' own items."""
    items = [t.items for t in spec.evaluation.tasks if t.items is not None]
    return [u for u in (spec.dataset.train, spec.dataset.validation, *items) if u is not None]


def fetch_task_items(spec: FineTuneJobSpec, store: Store, cache: Path) -> Path | None:
    """The tasks' own items (spec.evaluation.tasks[].items) on this machine, each at <dir>/<task name>/ (a file, or
    the shards of a prefix); None when no task has its own."""
    tasks = [t for t in spec.evaluation.tasks if t.items is not None]
    if not tasks:
        return None
    root = cache / "task-items" / _local_name(" ".join(str(t.items) for t in tasks))
    for task in tasks:
        assert task.items is not None
        fetch_one(store, task.items, root / task.name, f"task {task.name} items")
    return root.resolve()


def fetch_one(store: Store, uri: str, local: Path, what: str) -> Path:
    """A data file or a prefix of shards, downloaded and verified under `local`."""
    if uri.endswith("/"):
        return store.download_prefix(uri, local, Reason.DATASET_MISSING, what, keep=is_data_file).resolve()
    return store.download_file(uri, local / Path(uri).name, Reason.DATASET_MISSING, what).resolve()


def data_bytes(spec: FineTuneJobSpec, store: Store) -> int:
    """The remote datasets' size, from the listing, checked against workers.cacheSize before a byte is fetched."""
    room = int(quantity_value(spec.workers.cacheSize))
    data_uris = [u for u in dataset_uris(spec) if store.local_path(u) is None]
    size = sum(_data_size(store, u) for u in data_uris)
    if size > room:
        raise TrainerFailure(
            Reason.DATASET_TOO_LARGE,
            f"the datasets are {human_bytes(size)}, more than the worker's cache holds "
            f"(workers.cacheSize {spec.workers.cacheSize} = {human_bytes(room)}): raise workers.cacheSize",
        )
    return size


def fetch_data(spec: FineTuneJobSpec, store: Store, cache: Path) -> tuple[Path, Path | None]:
    """The training and validation files (or shard directories) on this machine, downloaded and verified."""
    validation = spec.dataset.validation
    train = fetch_one(store, spec.dataset.train, cache / "data" / _local_name(spec.dataset.train), "dataset")
    if validation is None:
        return train, None
    return train, fetch_one(store, validation, cache / "data" / _local_name(validation), "dataset")


def fetch_adapter(spec: FineTuneJobSpec, store: Store, cache: Path) -> Path | None:
    """The starting adapter (model.adapter), its two allow-listed files on this machine; None without one."""
    uri = spec.model.adapter
    if uri is None:
        return None
    room = int(quantity_value(spec.workers.cacheSize))
    return adapters.fetch(store, uri, cache / "adapters" / _local_name(uri), room).resolve()


def fetch_inputs(spec: FineTuneJobSpec, store: Store, cache: Path) -> tuple[str, Path, Path | None, Entry | None]:
    """Model directory (or hub id) and local dataset files, downloaded and verified once per worker; the model
    through the node's model cache (its entry is held until released). Sizes are checked against
    workers.cacheSize from the listing, before a byte is fetched."""
    uri = spec.model.uri
    room = int(quantity_value(spec.workers.cacheSize))
    size = data_bytes(spec, store)
    entry: Entry | None = None
    if "://" in uri and store.local_path(uri) is None:
        entry = fetch_model(store, uri, ModelCache.from_environ(cache / "models"), room - size)
        model = str(entry.path)
    elif uri.startswith(("/", "./", "../")):
        if not Path(uri).is_dir():
            raise TrainerFailure(Reason.MODEL_MISSING, f"base model not found: {uri} is not a directory")
        model = str(Path(uri).resolve())
    else:
        check_hub_model(spec.model)  # in seconds: a folder meant, a name that exists nowhere, no network
        model = uri  # a hub id: transformers fetches and caches it
    train, validation = fetch_data(spec, store, cache)
    return model, train, validation, entry
