"""What every storage backend shares: the objects it lists and fetches, the protocol it implements, and the
checks applied to anything that comes from storage (keys, sizes, digests)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure

MAX_OBJECTS = 100_000  # objects under one prefix: a model or checkpoint has tens, a hostile bucket could have billions
CHUNK_MIB = 8
HASH_CHUNK = CHUNK_MIB << 20  # bytes read at a time while hashing: memory stays flat whatever the file's size


class Object(NamedTuple):
    """One object under a prefix: its key relative to the prefix, size and ETag ('' where there is none)."""

    relative: str
    size: int
    etag: str


@dataclass(frozen=True)
class Fetch:
    """One object to bring to a local file, with what the listing said it is (checked after the transfer)."""

    uri: str
    target: Path
    size: int
    etag: str


Objects = list[Object]
Fetches = list[Fetch]


class Backend(Protocol):
    """One URI scheme. A new scheme (gs://, az://) is a module implementing this and one line in storage.BACKENDS."""

    def local_path(self, uri: str) -> Path | None: ...  # the object's own file, when it is on this machine already

    def exists(self, uri: str) -> bool: ...

    def read_text(self, uri: str, missing: Reason, what: str) -> str: ...

    def stat(self, uri: str, missing: Reason, what: str) -> Object: ...  # one object: its name, size and ETag

    def list(self, uri: str, limit: int) -> Objects: ...

    def fetch(self, items: Fetches, missing: Reason, what: str) -> int: ...  # verified; returns bytes moved

    def upload_file(self, path: Path, uri: str) -> None: ...

    def write_text(self, uri: str, text: str) -> None: ...

    def delete(self, uri: str) -> None: ...

    def delete_prefix(self, uri: str) -> None: ...


def bounded(found: list[Object], uri: str, limit: int) -> Objects:
    if len(found) > limit:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"more than {limit} objects under {uri}: refusing to list them all")
    return found


def safe_target(dest: Path, relative: str, uri: str) -> Path:
    """Where an object with this key (relative to its prefix) goes under dest. Object keys are untrusted input: a
    key whose parts are empty, '.' or '..', that is absolute, holds a control character or a backslash, or that
    resolves outside dest (through a link already there) is refused, so nothing from storage lands elsewhere."""
    parts = relative.split("/")
    bad = (
        not relative
        or relative.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(ch) < 32 or ch in "\\\x7f" for ch in relative)
    )
    target = dest if bad else dest.joinpath(*parts)  # a bad key (a NUL byte, say) is never resolved
    resolved, root = target.resolve(), dest.resolve()
    if bad or resolved == root or not resolved.is_relative_to(root):
        raise TrainerFailure(
            Reason.UNSAFE_OBJECT_KEY,
            f"refusing object {uri}: its key has an empty, '.', '..' or absolute part, a control character or a "
            f"backslash, or leads outside {dest.name}/ (got {relative!r}); nothing was written",
        )
    return target


def is_md5(etag: str) -> bool:
    """A single-part upload's ETag is the MD5 of the object; a multipart one ends in -N and is not."""
    return len(etag) == 32 and "-" not in etag


def md5() -> hashlib._Hash:
    return hashlib.new("md5", usedforsecurity=False)


def file_digest(path: Path, algorithm: str) -> str:
    """A file's digest, read in chunks: memory stays flat however large the file."""
    digest = md5() if algorithm == "md5" else hashlib.new(algorithm)
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def verify(path: Path, size: int, etag: str, uri: str, digest: str | None = None) -> None:
    """The file is what the listing said: its size, and its MD5 where the ETag is one (digest: computed while it
    streamed; else the file is read once more)."""
    actual = path.stat().st_size
    if actual != size:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"download of {uri} is {actual} bytes, expected {size}")
    if is_md5(etag):
        got = digest if digest is not None else file_digest(path, "md5")
        if got != etag:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"download of {uri} is corrupt: md5 {got}, expected {etag}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
