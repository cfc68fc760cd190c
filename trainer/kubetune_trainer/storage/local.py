"""Local paths (and file://): `kubetune run` on a laptop, or a shared filesystem mounted into the pods."""

from __future__ import annotations

import shutil
from pathlib import Path

from kubetune_api.conditions import Reason
from kubetune_api.storage import StorageSpec
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage.base import Fetches, Object, Objects, bounded


def _path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


class LocalBackend:
    """Objects are files; a prefix is a directory. Nothing is copied to read it: `local_path` is the file itself."""

    def __init__(self, spec: StorageSpec) -> None:
        self.spec = spec

    def local_path(self, uri: str) -> Path | None:
        return _path(uri)

    def exists(self, uri: str) -> bool:
        return _path(uri).exists()

    def read_text(self, uri: str, missing: Reason, what: str) -> str:
        path = _path(uri)
        if not path.is_file():
            raise TrainerFailure(missing, f"{what} not found: {uri}")
        return path.read_text()

    def stat(self, uri: str, missing: Reason, what: str) -> Object:
        path = _path(uri)
        if not path.is_file():
            raise TrainerFailure(missing, f"{what} not found: {uri}")
        return Object(path.name, path.stat().st_size, "")

    def list(self, uri: str, limit: int) -> Objects:
        root = _path(uri)
        if not root.is_dir():
            return []
        return bounded(
            [Object(str(p.relative_to(root)), p.stat().st_size, "") for p in sorted(root.rglob("*")) if p.is_file()], uri, limit
        )

    def fetch(self, items: Fetches, missing: Reason, what: str) -> int:
        for item in items:
            if not _path(item.uri).is_file():
                raise TrainerFailure(missing, f"{what} not found: {item.uri}")
            shutil.copyfile(_path(item.uri), item.target)
        return sum(item.size for item in items)

    def upload_file(self, path: Path, uri: str) -> None:
        target = _path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != path.resolve():
            shutil.copyfile(path, target)

    def write_text(self, uri: str, text: str) -> None:
        _path(uri).parent.mkdir(parents=True, exist_ok=True)
        _path(uri).write_text(text)

    def delete(self, uri: str) -> None:
        _path(uri).unlink(missing_ok=True)

    def delete_prefix(self, uri: str) -> None:
        shutil.rmtree(_path(uri), ignore_errors=True)
