"""Object storage for the trainer, one API over every URI scheme: each scheme is a backend (storage_s3.py,
storage_local.py) chosen by the URI, so nothing above this module asks which storage it talks to.

Adding a scheme (gs://, az://) is one module implementing storage_base.Backend and one line in BACKENDS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubetune_api.conditions import Reason
from kubetune_api.storage import StorageSpec
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage.base import MAX_OBJECTS, Backend, Fetch, Object, Objects, file_digest, human_bytes, safe_target
from kubetune_trainer.storage.local import LocalBackend
from kubetune_trainer.storage.s3 import S3Backend

BACKENDS: dict[str, Callable[[StorageSpec], Backend]] = {"s3": S3Backend, "file": LocalBackend}

__all__ = ["MAX_OBJECTS", "Object", "Store", "file_digest", "human_bytes", "join", "safe_target", "scheme"]


def scheme(uri: str) -> str:
    """s3 for s3://..., file for a path or file://...; any other scheme is named so it can be refused."""
    head, sep, _ = uri.partition("://")
    return head if sep else "file"


def join(base: str, *parts: str) -> str:
    """Join a URI or path prefix with relative parts using '/'."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


@dataclass
class Store:
    """Reads and writes objects under any supported URI. Credentials come from the environment only."""

    spec: StorageSpec
    _backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, uri: str) -> Backend:
        name = scheme(uri)
        if name not in BACKENDS:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"{uri}: no storage backend for {name}:// (have: {', '.join(BACKENDS)})")
        if name not in self._backends:
            self._backends[name] = BACKENDS[name](self.spec)
        return self._backends[name]

    def local_path(self, uri: str) -> Path | None:
        """The object's own file when it is on this machine (a local path): read it there, stage nothing."""
        return self.backend(uri).local_path(uri)

    def exists(self, uri: str) -> bool:
        return self.backend(uri).exists(uri)

    def read_text(self, uri: str, missing: Reason = Reason.TRAINER_ERROR, what: str = "object") -> str:
        return self.backend(uri).read_text(uri, missing, what)

    def size_of(self, uri: str, missing: Reason, what: str) -> int:
        return self.backend(uri).stat(uri, missing, what).size

    def list(self, prefix_uri: str, limit: int = MAX_OBJECTS) -> Objects:
        """(relative key, size, etag) of every object under a prefix, page by page, at most `limit` of them."""
        return self.backend(prefix_uri).list(prefix_uri, limit)

    def download_file(self, uri: str, dest: Path, missing: Reason, what: str) -> Path:
        """One object as a local file: the file itself where it is local, else fetched and verified into dest."""
        backend = self.backend(uri)
        local = backend.local_path(uri)
        if local is not None:
            if not local.is_file():
                raise TrainerFailure(missing, f"{what} not found: {uri}")
            return local
        found = backend.stat(uri, missing, what)
        backend.fetch([Fetch(uri, dest, found.size, found.etag)], missing, what)
        return dest

    def download_prefix(
        self,
        uri: str,
        dest: Path,
        missing: Reason,
        what: str,
        max_bytes: int | None = None,
        too_large: Reason = Reason.TRAINER_ERROR,
        keep: Callable[[str], bool] | None = None,
    ) -> Path:
        """Mirror a prefix into dest, concurrently and verified (sizes and checksums, storage_s3.py); reused when
        already complete. Every key is checked before anything is fetched (safe_target), and so is the total
        against max_bytes. A local prefix is read where it is."""
        backend = self.backend(uri)
        local = backend.local_path(uri)
        if local is not None:
            if not local.is_dir():
                raise TrainerFailure(missing, f"{what} not found: {uri}")
            return local
        objects = self.listing(uri, missing, what, keep)
        dest.mkdir(parents=True, exist_ok=True)
        targets = [safe_target(dest, o.relative, join(uri, o.relative)) for o in objects]
        if max_bytes is not None:
            check_room(objects, uri, what, max_bytes, too_large)
        marker = dest / ".kubetune-complete"
        if marker.is_file() and marker.read_text() == fingerprint(objects):
            return dest
        items = [Fetch(join(uri, o.relative), t, o.size, o.etag) for o, t in zip(objects, targets, strict=True)]
        backend.fetch(items, missing, what)
        marker.write_text(fingerprint(objects))
        return dest

    def listing(self, uri: str, missing: Reason, what: str, keep: Callable[[str], bool] | None = None) -> Objects:
        """The objects of a prefix worth fetching (no folder placeholders; `keep` filters by key); none is an error."""
        objects = [o for o in self.list(uri) if not (o.relative.endswith("/") and o.size == 0)]
        if keep is not None:
            objects = [o for o in objects if keep(o.relative)]
        if not objects:
            raise TrainerFailure(missing, f"{what} not found: nothing under {uri}")
        return objects

    # writing

    def upload_file(self, path: Path, uri: str) -> None:
        self.backend(uri).upload_file(path, uri)

    def upload_dir(self, directory: Path, uri: str) -> None:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            self.upload_file(path, join(uri, str(path.relative_to(directory))))

    def write_text(self, uri: str, text: str) -> None:
        self.backend(uri).write_text(uri, text)

    def delete(self, uri: str) -> None:
        self.backend(uri).delete(uri)

    def delete_prefix(self, uri: str) -> None:
        self.backend(uri).delete_prefix(uri)


def check_room(objects: Objects, uri: str, what: str, max_bytes: int, too_large: Reason) -> None:
    """Refuse, from the listing and before a byte is fetched, a prefix larger than the room the worker has."""
    total = sum(o.size for o in objects)
    if total > max_bytes:
        raise TrainerFailure(
            too_large,
            f"{what} at {uri} is {human_bytes(total)} ({len(objects)} objects), more than the worker's cache holds "
            f"({human_bytes(max_bytes)}): raise workers.cacheSize (within the platform policy) or use a smaller {what}",
        )


def fingerprint(objects: Objects) -> str:
    """What a prefix holds (keys, sizes, ETags): equal fingerprints, equal content."""
    return hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()
