"""What the launcher passes to each training process (inside one pod; not part of the operator contract)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubetune_api.contract import ENV_WORK_DIR

MODEL_DIR = "KUBETUNE_MODEL_SOURCE"  # local directory (or hub id) of the base model
TRAIN_FILE = "KUBETUNE_TRAIN_FILE"  # local copy of dataset.train
VALIDATION_FILE = "KUBETUNE_VALIDATION_FILE"  # local copy of dataset.validation, if any
WORK_DIR = ENV_WORK_DIR  # node-local scratch (the pod's, from the operator): checkpoint staging, adapter before upload
RESULT_DIR = "KUBETUNE_RESULT_DIR"  # where ranks leave failure-<rank>.json and rank 0 leaves summary.json
PROGRESS_STYLE = "KUBETUNE_PROGRESS"  # json (pods) or bar (a person at a terminal)
PREPARED_DIR = "KUBETUNE_PREPARED_DIR"  # the worker's prepared dataset (prepared.py), made before the ranks start
ADAPTER_DIR = "KUBETUNE_ADAPTER_DIR"  # the starting adapter's files (model.adapter), fetched by the launcher
ITEMS_DIR = "KUBETUNE_TASK_ITEMS_DIR"  # the tasks' own items (spec.evaluation.tasks[].items), <dir>/<task name>/
PROCESS_START = "KUBETUNE_PROCESS_START"  # when the launcher started the ranks (epoch seconds): start-up cost
# the benchmarks' run options (never a job's): checkpoints uploaded in the loop, the baseline of bench/data_bench.py;
# the step-time split of N steps (recipe/profile.py, bench/gpu_bench.py). Set on the command, inherited by the ranks.
SYNC_CHECKPOINTS = "KUBETUNE_SYNC_CHECKPOINTS"  # "1": on
PROFILE_STEPS = "KUBETUNE_PROFILE_STEPS"  # N: profile N steps after two warm-up steps

FETCH_FILE = "fetch.json"  # in WORK_DIR: the launcher's metrics.Fetch (where the base model's bytes came from)
METRICS_FILE = "summary.json"  # in RESULT_DIR: rank 0's metrics.Metrics, what it wrote to metrics.json


FAILURE_FILES = "failure-*.json"  # in RESULT_DIR: each failed rank's contract.RankFailure


def failure_file(rank: int) -> str:
    return FAILURE_FILES.replace("*", str(rank))


@dataclass(frozen=True)
class RankEnv:
    model_source: str
    train_file: Path
    validation_file: Path | None
    work_dir: Path
    result_dir: Path
    progress: str
    prepared_dir: Path
    adapter_dir: Path | None = None
    sync_checkpoints: bool = False
    profile_steps: int = 0
    items_dir: Path | None = None

    @classmethod
    def from_environ(cls) -> RankEnv:
        validation = os.environ.get(VALIDATION_FILE)
        return cls(
            model_source=os.environ[MODEL_DIR],
            train_file=Path(os.environ[TRAIN_FILE]),
            validation_file=Path(validation) if validation else None,
            work_dir=Path(os.environ[WORK_DIR]),
            result_dir=Path(os.environ[RESULT_DIR]),
            progress=os.environ.get(PROGRESS_STYLE, "json"),
            prepared_dir=Path(os.environ[PREPARED_DIR]),
            adapter_dir=Path(os.environ[ADAPTER_DIR]) if os.environ.get(ADAPTER_DIR) else None,
            items_dir=Path(os.environ[ITEMS_DIR]) if os.environ.get(ITEMS_DIR) else None,
            sync_checkpoints=os.environ.get(SYNC_CHECKPOINTS) == "1",
            profile_steps=max(0, int(os.environ.get(PROFILE_STEPS) or 0)),
        )

    def to_environ(self) -> dict[str, str]:
        env = {
            MODEL_DIR: self.model_source,
            TRAIN_FILE: str(self.train_file),
            WORK_DIR: str(self.work_dir),
            RESULT_DIR: str(self.result_dir),
            PROGRESS_STYLE: self.progress,
            PREPARED_DIR: str(self.prepared_dir),
        }
        if self.validation_file is not None:
            env[VALIDATION_FILE] = str(self.validation_file)
        if self.adapter_dir is not None:
            env[ADAPTER_DIR] = str(self.adapter_dir)
        if self.items_dir is not None:
            env[ITEMS_DIR] = str(self.items_dir)
        if self.sync_checkpoints:
            env[SYNC_CHECKPOINTS] = "1"
        if self.profile_steps:
            env[PROFILE_STEPS] = str(self.profile_steps)
        return env
