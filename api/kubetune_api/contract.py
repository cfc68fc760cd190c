"""The operator-to-pod contract: the mounted config files and the environment, named once, read once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "trainer.yaml"  # the resolved FineTuneJob spec (every default filled), ConfigMap key and file name
DEEPSPEED_FILE = "deepspeed.json"  # the DeepSpeed config derived from it, ConfigMap key and file name
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

ENV_CONFIG = "KUBETUNE_CONFIG"  # path of CONFIG_FILE; DEEPSPEED_FILE sits beside it
ENV_JOB_NAME = "KUBETUNE_JOB_NAME"  # the FineTuneJob's name, for log lines and the manifest
ENV_NUM_WORKERS = "KUBETUNE_NUM_WORKERS"  # workers.replicas
ENV_PROCS_PER_WORKER = "KUBETUNE_PROCS_PER_WORKER"  # training processes in this pod
ENV_WORKER_RANK = "JOB_COMPLETION_INDEX"  # this pod's node rank: the Indexed Job completion index
ENV_MASTER_ADDR = "KUBETUNE_MASTER_ADDR"  # pod 0's stable DNS name, <job>-0.<service>
ENV_MASTER_PORT = "KUBETUNE_MASTER_PORT"  # rendezvous port on pod 0
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"  # where the final summary goes; TERMINATION_MESSAGE_PATH in pods
ENV_RESTART_COUNT = "KUBETUNE_RESTART_COUNT"  # gang restarts so far, for log lines and metrics

DEFAULT_MASTER_PORT = 29500
PROGRESS_EVENT = "progress"  # value of "event" in rank 0's structured progress lines
SUMMARY_EVENT = "summary"  # value of "event" in the final summary line and termination message


class ContractError(ValueError):
    """The pod's environment does not satisfy the contract."""


@dataclass(frozen=True)
class WorkerEnv:
    """What one trainer pod learns from its environment at start-up."""

    config_path: Path
    job_name: str
    num_workers: int
    procs_per_worker: int
    worker_rank: int
    master_addr: str
    master_port: int
    termination_log: Path | None

    @property
    def deepspeed_path(self) -> Path:
        return self.config_path.with_name(DEEPSPEED_FILE)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnv:
        env = os.environ if environ is None else environ

        def integer(name: str, default: int, minimum: int) -> int:
            raw = env.get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ContractError(f"{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise ContractError(f"{name} must be >= {minimum}, got {value}")
            return value

        config = env.get(ENV_CONFIG, f"{CONFIG_DIR}/{CONFIG_FILE}")
        num_workers = integer(ENV_NUM_WORKERS, 1, 1)
        rank = integer(ENV_WORKER_RANK, 0, 0)
        if rank >= num_workers:
            raise ContractError(f"{ENV_WORKER_RANK}={rank} must be below {ENV_NUM_WORKERS}={num_workers}")
        termination = env.get(ENV_TERMINATION_LOG)
        return cls(
            config_path=Path(config),
            job_name=env.get(ENV_JOB_NAME, "local"),
            num_workers=num_workers,
            procs_per_worker=integer(ENV_PROCS_PER_WORKER, 1, 1),
            worker_rank=rank,
            master_addr=env.get(ENV_MASTER_ADDR, "127.0.0.1"),
            master_port=integer(ENV_MASTER_PORT, DEFAULT_MASTER_PORT, 1),
            termination_log=Path(termination) if termination else None,
        )
