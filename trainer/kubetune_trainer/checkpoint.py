"""Checkpoints under output.uri/checkpoints/step-NNNNNN/: written by every rank, marked COMPLETE last, pruned, resumed."""

from __future__ import annotations

import json
import re
from typing import Any

from .storage import Store, join

COMPLETE = "COMPLETE"
TAG = re.compile(r"^step-(\d{6,})$")


def tag(step: int) -> str:
    return f"step-{step:06d}"


def root(output_uri: str) -> str:
    return join(output_uri, "checkpoints")


def complete_tags(store: Store, output_uri: str) -> list[str]:
    """Complete checkpoints, oldest first. A checkpoint without COMPLETE (a rank died while writing) is ignored."""
    tags = set()
    for relative, _, _ in store.list(root(output_uri)):
        parts = relative.split("/")
        if len(parts) == 2 and parts[1] == COMPLETE and TAG.match(parts[0]):
            tags.add(parts[0])
    return sorted(tags, key=lambda t: int(TAG.match(t).group(1)))  # type: ignore[union-attr]


def all_tags(store: Store, output_uri: str) -> list[str]:
    return sorted({r.split("/")[0] for r, _, _ in store.list(root(output_uri)) if TAG.match(r.split("/")[0])})


def mark_complete(store: Store, output_uri: str, step: int, info: dict[str, Any]) -> None:
    store.write_text(join(root(output_uri), tag(step), COMPLETE), json.dumps(info))


def read_info(store: Store, output_uri: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(store.read_text(join(root(output_uri), name, COMPLETE)))
    return data


def prune(store: Store, output_uri: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the newest complete one."""
    complete = complete_tags(store, output_uri)
    if not complete:
        return []
    newest = int(TAG.match(complete[-1]).group(1))  # type: ignore[union-attr]
    doomed = set(complete[:-keep])
    doomed |= {t for t in all_tags(store, output_uri) if t not in complete and int(TAG.match(t).group(1)) < newest}  # type: ignore[union-attr]
    for name in sorted(doomed):
        store.delete_prefix(join(root(output_uri), name))
    return sorted(doomed)
