"""Object storage for the trainer: s3:// through boto3 (transfer manager, retries) or a local path, one API."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_api.storage import StorageSpec

from .errors import TrainerFailure

_DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_MISSING = {"NoSuchKey", "404", "NoSuchBucket", "NotFound"}
MAX_OBJECTS = 100_000  # objects under one prefix: a model or checkpoint has tens, a hostile bucket could have billions
HASH_CHUNK = 8 << 20  # bytes read at a time while hashing: memory stays flat whatever the file's size


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


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join a URI or path prefix with relative parts using '/'."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


@dataclass
class Store:
    """Reads and writes objects under s3:// URIs or local paths. Credentials come from the environment only."""

    spec: StorageSpec
    _client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 8, "mode": "standard"},
                s3={"addressing_style": self.spec.addressingStyle},
                connect_timeout=10,
                read_timeout=120,
            )
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.spec.endpoint,
                region_name=self.spec.region or None,
                verify=self.spec.verifyTls,
                config=config,
            )
        return self._client

    def _fail(self, exc: Exception, uri: str, missing: Reason, what: str) -> TrainerFailure:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return TrainerFailure(
                Reason.ACCESS_DENIED, f"no credentials for {uri}: set storage.credentialsSecret or serviceAccountName"
            )
        if isinstance(exc, EndpointConnectionError):
            return TrainerFailure(Reason.TRAINER_ERROR, f"cannot reach the storage endpoint for {uri}: {exc}")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _DENIED:
                return TrainerFailure(
                    Reason.ACCESS_DENIED, f"access denied to {uri} ({code}): check the credentials and bucket policy"
                )
            if code in _MISSING:
                return TrainerFailure(missing, f"{what} not found: {uri}")
            return TrainerFailure(Reason.TRAINER_ERROR, f"storage error on {uri}: {code} {exc}")
        return TrainerFailure(Reason.TRAINER_ERROR, f"storage error on {uri}: {exc}")

    def _call(self, uri: str, missing: Reason, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, uri, missing, what) from exc

    # reading

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
                return False
            raise self._fail(exc, uri, Reason.TRAINER_ERROR, "object") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, uri, Reason.TRAINER_ERROR, "object") from exc

    def read_text(self, uri: str, missing: Reason = Reason.TRAINER_ERROR, what: str = "object") -> str:
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_file():
                raise TrainerFailure(missing, f"{what} not found: {uri}")
            return path.read_text()
        bucket, key = split_s3(uri)
        body = self._call(uri, missing, what, self.client.get_object, Bucket=bucket, Key=key)["Body"]
        return str(body.read().decode())

    def download_file(self, uri: str, dest: Path, missing: Reason, what: str) -> Path:
        """Fetch one object (multipart and retried by boto3's transfer manager)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not is_s3(uri):
            source = Path(uri)
            if not source.is_file():
                raise TrainerFailure(missing, f"{what} not found: {uri}")
            return source
        bucket, key = split_s3(uri)
        self._call(uri, missing, what, self.client.head_object, Bucket=bucket, Key=key)
        partial = dest.with_name(dest.name + ".partial")
        self._call(uri, missing, what, self.client.download_file, bucket, key, str(partial))
        partial.replace(dest)
        return dest

    def list(self, prefix_uri: str, limit: int = MAX_OBJECTS) -> list[tuple[str, int, str]]:
        """(relative key, size, etag) of every object under a prefix, page by page, at most `limit` of them."""
        if not is_s3(prefix_uri):
            root = Path(prefix_uri)
            if not root.is_dir():
                return []
            found = [(str(p.relative_to(root)), p.stat().st_size, "") for p in sorted(root.rglob("*")) if p.is_file()]
            return _bounded(found, prefix_uri, limit)
        bucket, key = split_s3(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        out: list[tuple[str, int, str]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(prefix_uri, Reason.TRAINER_ERROR, "prefix", paginator.paginate, Bucket=bucket, Prefix=prefix)
        iterator = iter(pages)
        while True:
            page = self._call(prefix_uri, Reason.TRAINER_ERROR, "prefix", next, iterator, None)
            if page is None:
                return out
            for item in page.get("Contents", []):
                out.append((item["Key"][len(prefix) :], int(item["Size"]), str(item.get("ETag", "")).strip('"')))
            _bounded(out, prefix_uri, limit)

    def size_of(self, uri: str, missing: Reason, what: str) -> int:
        """Bytes of one object or local file."""
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_file():
                raise TrainerFailure(missing, f"{what} not found: {uri}")
            return path.stat().st_size
        bucket, key = split_s3(uri)
        return int(self._call(uri, missing, what, self.client.head_object, Bucket=bucket, Key=key)["ContentLength"])

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
        """Mirror a prefix into dest, verified (sizes, and MD5 where the ETag is one); reused when already complete.
        Every key is checked before anything is fetched (safe_target), and so is the total against max_bytes."""
        if not is_s3(uri):
            source = Path(uri)
            if not source.is_dir():
                raise TrainerFailure(missing, f"{what} not found: {uri}")
            return source
        objects = [o for o in self.list(uri) if not (o[0].endswith("/") and o[1] == 0)]  # folder placeholders
        if keep is not None:
            objects = [o for o in objects if keep(o[0])]
        if not objects:
            raise TrainerFailure(missing, f"{what} not found: nothing under {uri}")
        dest.mkdir(parents=True, exist_ok=True)
        targets = [safe_target(dest, relative, join(uri, relative)) for relative, _, _ in objects]
        total = sum(size for _, size, _ in objects)
        if max_bytes is not None and total > max_bytes:
            raise TrainerFailure(
                too_large,
                f"{what} at {uri} is {human_bytes(total)} ({len(objects)} objects), more than the worker's cache holds "
                f"({human_bytes(max_bytes)}): raise workers.cacheSize (within the platform policy) or use a smaller {what}",
            )
        fingerprint = hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()
        marker = dest / ".kubetune-complete"
        if marker.is_file() and marker.read_text() == fingerprint:
            return dest
        for (relative, size, etag), target in zip(objects, targets, strict=True):
            self.download_file(join(uri, relative), target, missing, what)
            _verify(target, size, etag, join(uri, relative))
        marker.write_text(fingerprint)
        return dest

    # writing

    def upload_file(self, path: Path, uri: str) -> None:
        if not is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            if Path(uri).resolve() != path.resolve():
                shutil.copyfile(path, uri)
            return
        bucket, key = split_s3(uri)
        self._call(uri, Reason.TRAINER_ERROR, "object", self.client.upload_file, str(path), bucket, key)

    def upload_dir(self, directory: Path, uri: str) -> None:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            self.upload_file(path, join(uri, str(path.relative_to(directory))))

    def write_text(self, uri: str, text: str) -> None:
        if not is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).write_text(text)
            return
        bucket, key = split_s3(uri)
        self._call(uri, Reason.TRAINER_ERROR, "object", self.client.put_object, Bucket=bucket, Key=key, Body=text.encode())

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        self._call(uri, Reason.TRAINER_ERROR, "object", self.client.delete_object, Bucket=bucket, Key=key)

    def delete_prefix(self, uri: str) -> None:
        if not is_s3(uri):
            shutil.rmtree(uri, ignore_errors=True)
            return
        bucket, key = split_s3(uri)
        keys = [{"Key": join(key, relative)} for relative, _, _ in self.list(uri)]
        for start in range(0, len(keys), 1000):
            response = self._call(
                uri,
                Reason.TRAINER_ERROR,
                "prefix",
                self.client.delete_objects,
                Bucket=bucket,
                Delete={"Objects": keys[start : start + 1000]},
            )
            errors = response.get("Errors") or []  # DeleteObjects answers 200 and lists the keys it could not delete
            if errors:
                first = errors[0]
                raise self._fail(
                    _client_error(str(first.get("Code", "")), str(first.get("Message", ""))),
                    f"s3://{bucket}/{first.get('Key', '')}",
                    Reason.TRAINER_ERROR,
                    "object",
                )


def _bounded(found: list[tuple[str, int, str]], uri: str, limit: int) -> list[tuple[str, int, str]]:
    if len(found) > limit:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"more than {limit} objects under {uri}: refusing to list them all")
    return found


def _client_error(code: str, message: str) -> Exception:
    from botocore.exceptions import ClientError

    error: Exception = ClientError({"Error": {"Code": code, "Message": message}}, "DeleteObjects")
    return error


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def file_digest(path: Path, algorithm: str) -> str:
    """A file's digest, read in chunks: memory stays flat however large the file."""
    digest = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _verify(path: Path, size: int, etag: str, uri: str) -> None:
    actual = path.stat().st_size
    if actual != size:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"download of {uri} is {actual} bytes, expected {size}")
    if len(etag) == 32 and "-" not in etag:  # a single-part upload's ETag is its MD5
        digest = file_digest(path, "md5")
        if digest != etag:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"download of {uri} is corrupt: md5 {digest}, expected {etag}")
