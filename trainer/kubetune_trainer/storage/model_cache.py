"""A base-model cache that can outlive the pod: a node-level directory (hostPath or PVC, chosen in the chart; an
emptyDir by default) shared by every trainer pod and job on the node.

An entry is keyed by what the model prefix holds (every key, size and ETag), so a gang restart and a second job
on the same model find it, and a changed model is a new entry. Several pods at once are safe: an entry is
written by one pod under an exclusive file lock into `<key>.partial/` (resumable: an interrupted download keeps
its finished parts) and renamed into place when complete; readers hold a shared lock while they train, so
eviction (least recently used first, down to the configured size) never removes an entry in use. Nothing in the
cache is trusted: each use re-checks every file against the listing just made with the job's own credentials
(size, and the MD5 or multipart ETag), and a file that does not match is fetched again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_api.contract import (
    ENV_MODEL_CACHE,
    ENV_MODEL_CACHE_MAX_BYTES,
    ENV_MODEL_CACHE_USAGE,
    ENV_STALL,
    stall_seconds,
)
from kubetune_api.events import Notice, emit
from kubetune_api.metrics import Fetch as Fetched
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage import Store, check_room, fingerprint, human_bytes, join
from kubetune_trainer.storage.base import CHUNK_MIB, Fetch, Object, is_md5, md5, safe_target

COMPLETE = ".kubetune-entry.json"
PARTIAL_MAX_AGE = 24 * 3600  # seconds an unfinished download (`<key>.partial/`) nobody resumes is kept


def unlisted(directory: Path, objects: list[Object]) -> list[Path]:
    """Files (and links) in an entry that the listing does not name: never loaded, whoever planted them (an
    adapter_config.json or chat_template.jinja beside a model would change what loads)."""
    listed = {o.relative for o in objects} | {COMPLETE}
    found = []
    for parent, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if (Path(parent) / d).is_symlink()]:
            path = Path(parent) / name
            if path.relative_to(directory).as_posix() not in listed:
                found.append(path)
    return found


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@dataclass
class Entry:
    """A model directory in the cache, held (shared lock) until release()."""

    path: Path
    from_cache: int  # bytes found in the cache and verified
    from_storage: int  # bytes fetched from storage
    verify_seconds: float
    fetch_seconds: float
    lock_fd: int

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # closing drops the lock
            self.lock_fd = -1
        if ".private-" in self.path.name:  # a copy made because the shared entry was damaged and in use
            shutil.rmtree(self.path, ignore_errors=True)

    def fetched(self, uri: str) -> Fetched:
        return Fetched(
            uri=uri,
            fromCache=self.from_cache,
            fromStorage=self.from_storage,
            verifySeconds=round(self.verify_seconds, 3),
            fetchSeconds=round(self.fetch_seconds, 3),
        )


def multipart_matches(path: Path, size: int, etag: str) -> bool | None:
    """Whether a file has a multipart upload's ETag (MD5 of the parts' MD5s, '-N'), trying the part sizes uploaders
    use that give N parts; None when no such part size exists (the ETag cannot be checked this way)."""
    digest, _, count = etag.partition("-")
    if not count.isdigit() or int(count) < 1:
        return None
    parts = int(count)
    mib = 1 << 20
    candidates = {math.ceil(size / parts / mib) * mib, math.ceil(size / parts)}
    candidates |= {n * mib for n in (5, 8, 15, 16, 32, 50, 64, 100, 128, 256, 512)}
    sizes = sorted(c for c in candidates if c > 0 and math.ceil(size / c) == parts)
    if not sizes:
        return None
    states: dict[int, tuple[Any, list[bytes], int]] = {
        c: (md5(), [], 0) for c in sizes
    }  # running part digest, finished part digests, bytes in this part
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK_MIB * mib):
            for part_size in sizes:
                current, done, filled = states[part_size]
                view = memoryview(chunk)
                while view:
                    take = min(len(view), part_size - filled)
                    current.update(view[:take])
                    view, filled = view[take:], filled + take
                    if filled == part_size:
                        done.append(current.digest())
                        current, filled = md5(), 0
                states[part_size] = (current, done, filled)
    for part_size in sizes:
        current, done, filled = states[part_size]
        if filled:
            done.append(current.digest())
        combined = md5()
        for part in done:
            combined.update(part)
        if combined.hexdigest() == digest and len(done) == parts:
            return True
    return False


def matches(path: Path, obj: Object) -> bool:
    """The cached file is the listed object: its size, and its ETag where one can be checked."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size != obj.size:
        return False
    if is_md5(obj.etag):
        digest = md5()
        with path.open("rb", buffering=0) as handle:
            while chunk := handle.read(CHUNK_MIB << 20):
                digest.update(chunk)
        return digest.hexdigest() == obj.etag
    return multipart_matches(path, obj.size, obj.etag) is not False  # an ETag of no known form: size only


USAGE_LIMIT = 1 << 60  # bytes a usage record may claim; anything else in one is ignored


class ModelCache:
    """A namespace's part of the node's model cache. With `usage` (the node's shared record directory: each
    namespace's cache writes its own total there), max_bytes bounds the node, not the namespace: entries of this
    namespace are evicted until its own total, every other namespace's recorded one and what comes fit."""

    def __init__(self, root: Path, max_bytes: int = 0, usage: Path | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.usage = usage

    @classmethod
    def from_environ(cls, default: Path) -> ModelCache:
        usage = os.environ.get(ENV_MODEL_CACHE_USAGE)
        return cls(
            Path(os.environ.get(ENV_MODEL_CACHE) or default),
            int(os.environ.get(ENV_MODEL_CACHE_MAX_BYTES) or 0),
            Path(usage) if usage else None,
        )

    def _others(self) -> int:
        """Bytes the other namespaces' caches on this node recorded (0 without a shared record directory)."""
        if self.usage is None:
            return 0
        total = 0
        for record in self.usage.glob("*.bytes"):
            if record.stem == self.root.name:
                continue
            with contextlib.suppress(OSError, ValueError):
                text = record.read_text()[:32]
                total += min(max(int(text), 0), USAGE_LIMIT)
        return total

    def _record(self, total: int) -> None:
        """This namespace's total, for the other namespaces' caches on the node (written whole: a rename)."""
        if self.usage is None:
            return
        with contextlib.suppress(OSError):
            self.usage.mkdir(parents=True, exist_ok=True)
            staged = self.usage / f".{self.root.name}.{os.getpid()}"
            staged.write_text(str(total))
            staged.replace(self.usage / f"{self.root.name}.bytes")

    def _lock(self, key: str) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def fetch(self, store: Store, uri: str, objects: list[Object], what: str = "base model") -> Entry:
        """The model's directory in the cache, verified, fetching from storage only what is missing or wrong."""
        self.evict_stale_partials()
        key = fingerprint(objects)
        entry = self.root / key
        fd = self._lock(key)
        try:
            while True:
                self._wait_shared(fd, key)  # readers share; a writer holds it alone
                if (entry / COMPLETE).is_file():
                    bad, cached, verify_seconds = self._verify(entry, uri, objects)
                    if not bad and not unlisted(entry, objects):
                        (self.root / f"{key}.used").touch()
                        return Entry(entry, cached, 0, verify_seconds, 0.0, fd)
                    try:  # damaged (a file changed or went missing): repair it in place when nobody trains on it
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        private = self.root / f"{key}.private-{os.getpid()}"  # in use: a copy of our own
                        return self._fill(store, uri, objects, private, what, fd, private=True)
                    return self._fill(store, uri, objects, entry, what, fd, known=(bad, cached, verify_seconds))
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not self._writer(fd, entry):
                    continue  # another pod finished it meanwhile: verify and share it
                staging = self.root / f"{key}.partial"  # kept across pods: an interrupted download resumes
                return self._fill(store, uri, objects, staging, what, fd, rename_to=entry)
        except BaseException:
            os.close(fd)
            raise

    def _written(self, key: str) -> tuple[int, int]:
        """What the entry's writer has written so far (bytes, newest change), for a waiter to see it progress."""
        size = newest = 0
        for directory in (self.root / key, self.root / f"{key}.partial"):
            for path in directory.rglob("*") if directory.is_dir() else []:
                with contextlib.suppress(OSError):
                    info = path.stat()
                    size, newest = size + info.st_size, max(newest, info.st_mtime_ns)
        return size, newest

    def _watch(self, key: str) -> Callable[[], None]:
        """A check to call while waiting on the entry's writer: it fails once the writer has written nothing for
        stall_seconds()."""
        written, since = self._written(key), time.monotonic()

        def check() -> None:
            nonlocal written, since
            now, seen = time.monotonic(), self._written(key)
            if seen != written:
                written, since = seen, now
            elif now - since > stall_seconds():
                raise TrainerFailure(
                    Reason.TRAINER_ERROR,
                    f"fetching the base model stalled: another process on this node is writing its cache entry {key} "
                    f"and wrote nothing in {stall_seconds():g} s ({ENV_STALL})",
                )

        return check

    def _wait_shared(self, fd: int, key: str) -> None:
        """The entry's shared lock, waited for while a writer holds it alone and its download makes progress."""
        progressing = self._watch(key)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                progressing()
                time.sleep(0.2)

    def _writer(self, fd: int, entry: Path) -> bool:
        """Take the entry's lock alone to write it (True), or see it completed by the pod writing it (False).
        Never a blocking wait for the exclusive lock: the writer keeps a shared lock once done, for as long as it
        trains, and a second worker of the same job queued behind that would wait forever; a writer that makes no
        progress for stall_seconds() fails the wait."""
        progressing = self._watch(entry.name)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if (entry / COMPLETE).is_file():
                    return False
                progressing()
                time.sleep(0.2)
                continue
            if (entry / COMPLETE).is_file():
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            return True

    def _verify(self, directory: Path, uri: str, objects: list[Object]) -> tuple[list[Fetch], int, float]:
        """The objects whose file here does not match the listing (to fetch), the bytes that do, and the time taken."""
        started = time.monotonic()
        targets = [safe_target(directory, o.relative, join(uri, o.relative)) for o in objects]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            good = list(pool.map(matches, targets, objects))
        bad = [Fetch(join(uri, o.relative), t, o.size, o.etag) for o, t, ok in zip(objects, targets, good, strict=True) if not ok]
        cached = sum(o.size for o, ok in zip(objects, good, strict=True) if ok)
        return bad, cached, time.monotonic() - started

    def _fill(
        self,
        store: Store,
        uri: str,
        objects: list[Object],
        directory: Path,
        what: str,
        fd: int,
        rename_to: Path | None = None,
        private: bool = False,
        known: tuple[list[Fetch], int, float] | None = None,
    ) -> Entry:
        """Fetch into `directory` what it lacks (holding the lock exclusively unless private), mark it complete,
        move it into place, and hold the entry shared. `known`: the verification of `directory` just made."""
        directory.mkdir(parents=True, exist_ok=True)
        remove(unlisted(directory, objects))  # only what the listing names is ever in an entry
        bad, cached, verify_seconds = known if known is not None else self._verify(directory, uri, objects)
        self.make_room(sum(f.size for f in bad), keep=directory.name.split(".")[0])
        started = time.monotonic()
        moved = store.backend(uri).fetch(bad, Reason.MODEL_MISSING, what) if bad else 0
        (directory / COMPLETE).write_text(
            json.dumps({"uri": uri, "bytes": sum(o.size for o in objects), "objects": len(objects)})
        )
        final = directory
        if rename_to is not None:
            shutil.rmtree(rename_to, ignore_errors=True)
            directory.rename(rename_to)
            final = rename_to
        key = final.name.split(".")[0]
        (self.root / f"{key}.used").touch()
        if not private:  # held alone until now, so this downgrade never waits
            fcntl.flock(fd, fcntl.LOCK_SH)  # in use until released: eviction passes it by
        return Entry(final, cached, moved, verify_seconds, time.monotonic() - started, fd)

    def evict_stale_partials(self, max_age: float = PARTIAL_MAX_AGE) -> list[str]:
        """Remove unfinished downloads untouched for max_age seconds whose lock is free (no pod is writing them)."""
        evicted = []
        for partial in self.root.glob("*.partial") if self.root.is_dir() else []:
            try:
                if time.time() - partial.stat().st_mtime < max_age:
                    continue
            except OSError:
                continue
            key = partial.name.removesuffix(".partial")
            fd = self._lock(key)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a pod is writing it
            try:
                shutil.rmtree(partial, ignore_errors=True)
                evicted.append(key)
            finally:
                os.close(fd)
        return evicted

    def entries(self) -> list[tuple[float, str, int]]:
        """(last used, key, bytes) of the complete entries."""
        out = []
        for marker in self.root.glob(f"*/{COMPLETE}"):
            key = marker.parent.name
            if key.endswith(".partial"):
                continue
            try:
                size = int(json.loads(marker.read_text()).get("bytes", 0))
            except (ValueError, OSError):
                size = 0
            used = self.root / f"{key}.used"
            out.append((used.stat().st_mtime if used.exists() else 0.0, key, size))
        return sorted(out)

    def make_room(self, need: int, keep: str) -> list[str]:
        """Evict least recently used entries not in use until `need` more bytes fit under max_bytes."""
        if not self.max_bytes:
            return []
        entries = self.entries()
        others = self._others()
        total = others + sum(size for _, _, size in entries)
        evicted = []
        for _, key, size in entries:
            if total + need <= self.max_bytes:
                break
            if key == keep:
                continue
            fd = self._lock(key)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a pod is training on it
            try:
                shutil.rmtree(self.root / key, ignore_errors=True)
                (self.root / f"{key}.used").unlink(missing_ok=True)
                total -= size
                evicted.append(key)
            finally:
                os.close(fd)
        self._record(total - others + need)
        if total + need > self.max_bytes:
            where = f" (other namespaces' {human_bytes(others)} on this node included)" if others else ""
            emit(
                Notice(
                    message=f"the model cache holds {human_bytes(total)} in use{where}; {human_bytes(need)} more goes "
                    f"beyond its bound of {human_bytes(self.max_bytes)} until those jobs end"
                )
            )
        if evicted:
            emit(Notice(message=f"model cache: evicted {len(evicted)} least recently used entries"))
        return evicted


def fetch_model(store: Store, uri: str, cache: ModelCache, max_bytes: int) -> Entry:
    """List the model prefix (with the job's credentials), check its size, then take it from the cache."""
    objects = store.listing(uri, Reason.MODEL_MISSING, "base model")
    check_room(objects, uri, "base model", max_bytes, Reason.MODEL_TOO_LARGE)
    return cache.fetch(store, uri, objects)
