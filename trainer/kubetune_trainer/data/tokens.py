"""Tokenized data as arrays: every sample's ids end to end (int32), a loss mask beside them, and sample offsets;
packed rows as an index over samples. No Python object per token anywhere on the training path: a row is a few
slices, a batch is made from them in numpy. The arrays are what `prepared.py` writes and memory-maps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

IGNORE = -100  # label of a token that takes no loss (PyTorch's cross-entropy default)


@dataclass(frozen=True)
class Sample:
    """One tokenized record: labels are IGNORE where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    system_folded: bool = False  # the template refuses a system role: it was put at the start of the first user turn


@dataclass(frozen=True)
class Row:
    """One sequence of a batch: one sample, or several packed, with positions restarting at each sample."""

    input_ids: Any  # a 1-D integer array (or list)
    labels: Any
    position_ids: Any


@dataclass(frozen=True)
class TokenTable(Sequence[Sample]):
    """Samples as three arrays: sample i is ids[offsets[i]:offsets[i+1]], taking loss where mask is set."""

    ids: np.ndarray  # int32
    mask: np.ndarray  # bool
    offsets: np.ndarray  # int64, len(samples) + 1, from 0 to len(ids)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Sample]: ...
    def __getitem__(self, i: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        ids, labels = self.slice(i)
        return Sample(ids.tolist(), labels.tolist())

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i's ids and labels (int64)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ids = self.ids[a:b].astype(np.int64)
        return ids, np.where(self.mask[a:b], ids, IGNORE)

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> TokenTable:
        if isinstance(samples, TokenTable):
            return samples
        builder = TableBuilder()
        for sample in samples:
            builder.add(sample.input_ids, sample.labels)
        return builder.table()


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Boundaries (int64, one more than lengths, from 0) of items laid end to end."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class TableBuilder:
    """Collects samples into arrays, a chunk at a time."""

    CHUNK = 4096

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._lengths: list[int] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        self._pending.append((np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
        self._lengths.append(len(self._pending[-1][0]))
        if len(self._pending) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate([i for i, _ in self._pending])
        labels = np.concatenate([label for _, label in self._pending])
        self._pending = []
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
            raise ValueError("token ids must fit in int32")
        # a label is either its token (loss) or IGNORE: the mask says which, and nothing else is kept
        if not np.all((labels == ids) | (labels == IGNORE)):
            raise ValueError("a label differs from its token")
        self._ids.append(ids.astype(np.int32))
        self._mask.append(labels != IGNORE)

    def table(self) -> TokenTable:
        self._flush()
        offsets = offsets_of(np.asarray(self._lengths, dtype=np.int64))
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int32)
        mask = np.concatenate(self._mask) if self._mask else np.zeros(0, dtype=bool)
        return TokenTable(ids, mask, offsets)


@dataclass(frozen=True)
class Rows(Sequence[Row]):
    """Rows over a TokenTable: row r is the samples members[offsets[r]:offsets[r+1]] end to end."""

    table: TokenTable
    members: np.ndarray  # int64 sample indices, row by row
    offsets: np.ndarray  # int64, len(rows) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, r: int) -> Row: ...
    @overload
    def __getitem__(self, r: slice) -> Sequence[Row]: ...
    def __getitem__(self, r: int | slice) -> Row | Sequence[Row]:
        if isinstance(r, slice):
            return [self[k] for k in range(*r.indices(len(self)))]
        if not -len(self) <= r < len(self):
            raise IndexError(r)
        r %= len(self)
        parts = [self.table.slice(int(i)) for i in self.members[self.offsets[r] : self.offsets[r + 1]]]
        ids = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        positions = np.concatenate([np.arange(len(p[0]), dtype=np.int64) for p in parts])
        return Row(ids, labels, positions)

    def __iter__(self) -> Iterator[Row]:
        return (self[r] for r in range(len(self)))

    def lengths(self) -> np.ndarray:
        """Tokens per row."""
        per_sample = self.table.lengths()[self.members]
        sums = np.zeros(len(per_sample) + 1, dtype=np.int64)
        np.cumsum(per_sample, out=sums[1:])
        out: np.ndarray = sums[self.offsets[1:]] - sums[self.offsets[:-1]]
        return out
