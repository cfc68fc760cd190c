"""Reading records as the trainer does, for tests that check what a file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_trainer.data import reading


def read_records(path: Path, name: str) -> list[dict[str, Any]]:
    """Every record of one file (reading.read_indexed: the trainer's reader, errors and all)."""
    return [record for _, record in reading.read_indexed(path, name)[0]]
