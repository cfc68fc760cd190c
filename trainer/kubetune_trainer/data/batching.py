"""Token sequences to what a rank trains on: rows (packed or one sample each), each rank's micro-batches per epoch,
the step plan the trainer and the preflight share, and the collated tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubetune_api.training import TrainingSpec
from kubetune_trainer.data.packing import best_fit_decreasing, one_per_row
from kubetune_trainer.data.tokens import IGNORE as IGNORE
from kubetune_trainer.data.tokens import Row as Row
from kubetune_trainer.data.tokens import Rows as Rows
from kubetune_trainer.data.tokens import Sample, TokenTable


def pack(samples: Sequence[Sample], max_len: int) -> Rows:
    """Best-fit-decreasing packing into rows of at most max_len tokens (packing.py); positions restart per sample."""
    table = TokenTable.of(samples)
    return Rows(table, *best_fit_decreasing(table.lengths(), max_len))


def rows(samples: Sequence[Sample], max_len: int, packing: bool) -> Rows:
    if packing:
        return pack(samples, max_len)
    table = TokenTable.of(samples)
    return Rows(table, *one_per_row(len(table)))


class EpochBatches(Sequence[list[Row]]):
    """A rank's micro-batches of one epoch, made when asked for: a row's tokens are read (from the memory-mapped
    prepared dataset) only for the step that trains on it, never all at the start of an epoch."""

    def __init__(self, rows: Sequence[Row], mine: np.ndarray, micro: int) -> None:
        self.rows, self.mine, self.micro = rows, mine, micro

    def __len__(self) -> int:
        return -(-len(self.mine) // self.micro)

    def _batch(self, k: int) -> list[Row]:
        return [self.rows[int(i)] for i in self.mine[k * self.micro : (k + 1) * self.micro]]

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self._batch(i) for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self._batch(k % len(self))


def global_micro_batches(
    rows: Sequence[Row], *, micro: int, world: int, rank: int, multiple: int, seed: int | None
) -> EpochBatches:
    """This rank's micro-batches of an epoch: every row of the dataset shuffled (seeded, the same order on every
    rank; None keeps order), wrapped to a multiple of world x micro x `multiple`, and dealt round-robin."""
    order = np.arange(len(rows))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(rows))
    unit = world * micro * multiple
    order = np.resize(order, len(order) + (-len(order) % unit))  # wraps around from the start
    return EpochBatches(rows, order[rank::world], micro)


def micro_batches_per_epoch(rows: int, *, micro: int, world: int, multiple: int) -> int:
    """Micro-batches each rank runs per epoch (global_micro_batches' count)."""
    unit = world * micro * multiple
    return math.ceil(rows / unit) * multiple if rows else 0


def steps_per_epoch(rows: int, *, micro: int, world: int, accumulate: int) -> int:
    """Optimizer steps per epoch over `rows` for `world` ranks."""
    return max(1, micro_batches_per_epoch(rows, micro=micro, world=world, multiple=accumulate) // accumulate)


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run takes: the trainer's plan and the preflight's count, from one function."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def step_plan(rows: int, training: TrainingSpec, world: int) -> StepPlan:
    """The plan for `rows` training rows dealt to `world` ranks (every rank sees every row and takes its share)."""
    t = training
    per_epoch = steps_per_epoch(rows, micro=t.microBatchSize, world=world, accumulate=t.gradientAccumulationSteps)
    total = t.maxSteps or t.epochs * per_epoch
    warmup = t.warmupSteps if t.warmupSteps is not None else math.ceil(t.warmupRatio * total)
    return StepPlan(per_epoch, total, warmup)


def collate(batch: Sequence[Row], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest row; padding is its own position run with no loss, so nothing attends across it."""
    import torch

    width = max(len(r.input_ids) for r in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    labels = np.full((len(batch), width), IGNORE, dtype=np.int64)
    positions = np.tile(np.arange(width, dtype=np.int64), (len(batch), 1))
    for k, r in enumerate(batch):
        n = len(r.input_ids)
        ids[k, :n], labels[k, :n], positions[k, :n] = r.input_ids, r.labels, r.position_ids
        positions[k, n:] -= n  # the padding's own run, from 0
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "position_ids": torch.from_numpy(positions)}


def useful_tokens(batch: list[Row]) -> int:
    return sum(len(r.input_ids) for r in batch)
