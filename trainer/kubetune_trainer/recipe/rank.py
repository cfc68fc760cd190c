"""This process in the gang: who it is (`Rank`, from torchrun's environment, its device and process group set up by
`setup_rank`) and the collectives the recipe makes. Nothing pickled crosses the wire: `broadcast` sends JSON bytes."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

from kubetune_api import events
from kubetune_api.contract import WorkerEnv
from kubetune_api.job import FineTuneJobSpec
from kubetune_trainer.rank_env import RankEnv


@dataclass(frozen=True)
class Rank:
    """Who this process is and what it reads: known before anything is built."""

    spec: FineTuneJobSpec
    worker: WorkerEnv
    paths: RankEnv
    rank: int
    world: int
    local_rank: int
    device: Any
    host: Any = None  # host_group's: the gloo group for per-step flags (None: the default group, or one rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def notice(self, message: str) -> None:
        if self.is_main:
            events.emit(events.Notice(message=message))


def setup_rank(spec: FineTuneJobSpec, worker: WorkerEnv, paths: RankEnv) -> Rank:
    import deepspeed
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available() and spec.workers.gpusPerWorker > 0
    if on_gpu:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    random.seed(spec.training.seed)
    torch.manual_seed(spec.training.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Rank(
        spec=spec,
        worker=worker,
        paths=paths,
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_rank=local_rank,
        device=device,
        host=host_group(device, world),
    )


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def all_max(device: Any, values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(x) for x in tensor.cpu()]


def host_group(device: Any, world: int) -> Any:
    """A gloo group beside NCCL for the flags every step reads (a SIGTERM's agreement): an all-reduce of a CPU
    tensor leaves the GPU's queue running. On the CPU the default group is gloo already. Every rank calls this."""
    import torch.distributed as dist

    if device.type != "cuda" or world == 1:
        return None
    return dist.new_group(backend="gloo")


def host_max(group: Any, value: float) -> float:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return float(tensor[0])


def all_sum(device: Any, values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(x) for x in tensor.cpu()]


def broadcast(me: Rank, value: Any) -> Any:
    """Rank 0's JSON-able value on every rank, sent as bytes in a tensor: nothing pickled crosses the wire."""
    import torch
    import torch.distributed as dist

    payload = json.dumps(value).encode() if me.is_main else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=me.device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=me.device)
    if me.is_main:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode())
