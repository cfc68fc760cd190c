"""Reading records as the trainer does, for tests that check what a file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_trainer.data import records as data


def read_records(path: Path, name: str) -> list[dict[str, Any]]:
    """Every record of one file (data.read_indexed: the trainer's reader, errors and all)."""
    return [record for _, record in data.read_indexed(path, name)[0]]
