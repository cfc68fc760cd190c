"""s3:// through boto3: AWS S3 and S3-compatible servers (MinIO, Ceph, SeaweedFS).

Downloads are concurrent: every object of a prefix, and every PART_BYTES range of a large object, is a task in
one bounded pool of ranged GETs written in place (os.pwrite) into a preallocated `.partial` file. A part that
completes is recorded in a `.partial.parts` file, so an interrupted download resumes with the parts it lacks
(each ranged GET carries If-Match on the listed ETag: an object replaced meanwhile fails rather than mixes). A
checksum is computed as the parts land, in order, overlapping the transfer: the object's full CRC32 where the
server keeps one (S3's additional checksums, which boto3 sends on upload; about 3x cheaper than MD5 here), else
the MD5 a single-part ETag is; the file is renamed into place only once its size and checksum match.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import threading
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_api.storage import StorageSpec
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage.base import MAX_OBJECTS, Fetch, Fetches, Object, Objects, bounded, is_md5, md5, verify

DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
MISSING = {"NoSuchKey", "404", "NoSuchBucket", "NotFound"}
PART_BYTES = int(os.environ.get("KUBETUNE_PART_BYTES", 32 << 20))  # ranged GET size for large objects
CONCURRENCY = int(os.environ.get("KUBETUNE_DOWNLOAD_CONCURRENCY", 16))  # ranged GETs in flight
CHUNK = 1 << 20  # bytes read from a response at a time


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def client_error(code: str, message: str, operation: str = "DeleteObjects") -> Exception:
    from botocore.exceptions import ClientError

    error: Exception = ClientError({"Error": {"Code": code, "Message": message}}, operation)
    return error


def _gf2_times(matrix: list[int], vector: int) -> int:
    out, row = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[row]
        vector >>= 1
        row += 1
    return out


@functools.cache
def _shift(length: int) -> tuple[int, ...]:
    """The GF(2) operator that advances a CRC32 over `length` zero bytes (zlib's crc32_combine, as a matrix)."""

    def advance(crc: int) -> int:
        odd = [0xEDB88320] + [1 << n for n in range(31)]
        even = [_gf2_times(odd, odd[n]) for n in range(32)]
        odd = [_gf2_times(even, even[n]) for n in range(32)]
        left = length
        while left:
            even = [_gf2_times(odd, odd[n]) for n in range(32)]
            if left & 1:
                crc = _gf2_times(even, crc)
            left >>= 1
            if not left:
                break
            odd = [_gf2_times(even, even[n]) for n in range(32)]
            if left & 1:
                crc = _gf2_times(odd, crc)
            left >>= 1
        return crc

    return tuple(advance(1 << n) for n in range(32))


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """CRC32 of A+B from CRC32(A), CRC32(B) and len(B): parts checked in parallel make the whole object's."""
    return (_gf2_times(list(_shift(second_length)), first) ^ second) if second_length else first


@dataclass
class Transfer:
    """One object on its way to disk: which parts are there, and their checksums. With the server's full-object
    CRC32, each part's CRC is computed by the thread that fetched it, as the bytes pass, and the parts' CRCs are
    combined at the end; else the MD5 of a single-part ETag is folded over the parts in order as they land."""

    item: Fetch
    parts: int
    done: set[int]
    fd: int
    crc32: str | None = None  # the server's full-object CRC32 (base64), when it keeps one
    part_crcs: dict[int, int] = field(default_factory=dict)
    hashed: int = 0  # parts folded into the MD5, in order
    digest: Any = field(default_factory=md5)
    lock: threading.Lock = field(default_factory=threading.Lock)
    state_lock: threading.Lock = field(default_factory=threading.Lock)

    def crc_of(self, part: int) -> int:
        """A part's CRC32: computed while it streamed, or (a part kept from an interrupted download) read back."""
        if part not in self.part_crcs:
            start, end = self.span(part)
            crc, offset = 0, start
            while offset <= end:
                chunk = os.pread(self.fd, min(CHUNK * 8, end + 1 - offset), offset)
                crc = zlib.crc32(chunk, crc)
                offset += len(chunk)
            self.part_crcs[part] = crc
        return self.part_crcs[part]

    def verify(self) -> None:
        item = self.item
        if self.crc32 is None:
            self.fold()  # parts kept from an interrupted download are hashed here
            verify(self.partial, item.size, item.etag, item.uri, self.digest.hexdigest() if is_md5(item.etag) else None)
            return
        crc = 0
        for part in range(self.parts):
            start, end = self.span(part)
            crc = crc32_combine(crc, self.crc_of(part), end + 1 - start)
        got = base64.b64encode(crc.to_bytes(4, "big")).decode()
        verify(self.partial, item.size, "", item.uri)
        if got != self.crc32:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"download of {item.uri} is corrupt: crc32 {got}, expected {self.crc32}")

    @property
    def partial(self) -> Path:
        return self.item.target.with_name(self.item.target.name + ".partial")

    @property
    def record(self) -> Path:
        return self.item.target.with_name(self.item.target.name + ".partial.parts")

    def span(self, part: int) -> tuple[int, int]:
        start = part * PART_BYTES
        return start, min(self.item.size, start + PART_BYTES) - 1

    def finished(self, part: int) -> None:
        with self.state_lock:
            self.done.add(part)
            self.record.write_text(
                json.dumps({"etag": self.item.etag, "size": self.item.size, "part": PART_BYTES, "done": sorted(self.done)})
            )
        self.fold()

    def fold(self) -> None:
        """MD5 the parts that are now contiguous from the start; one thread at a time, none waits for it."""
        if self.crc32 is not None or not is_md5(self.item.etag):
            return
        while self.lock.acquire(blocking=False):
            try:
                while self.hashed < self.parts and self.hashed in self.done:
                    start, end = self.span(self.hashed)
                    offset = start
                    while offset <= end:
                        chunk = os.pread(self.fd, min(CHUNK * 8, end + 1 - offset), offset)
                        self.digest.update(chunk)
                        offset += len(chunk)
                    self.hashed += 1
            finally:
                self.lock.release()
            with self.state_lock:
                if not (self.hashed < self.parts and self.hashed in self.done):
                    return


class S3Backend:
    def __init__(self, spec: StorageSpec) -> None:
        self.spec = spec
        self._client: Any = None

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
                max_pool_connections=CONCURRENCY + 4,
            )
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.spec.endpoint,
                region_name=self.spec.region or None,
                verify=self.spec.verifyTls,
                config=config,
            )
        return self._client

    def fail(self, exc: Exception, uri: str, missing: Reason, what: str) -> TrainerFailure:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return TrainerFailure(
                Reason.ACCESS_DENIED, f"no credentials for {uri}: set storage.credentialsSecret or serviceAccountName"
            )
        if isinstance(exc, EndpointConnectionError):
            return TrainerFailure(Reason.TRAINER_ERROR, f"cannot reach the storage endpoint for {uri}: {exc}")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in DENIED:
                return TrainerFailure(
                    Reason.ACCESS_DENIED, f"access denied to {uri} ({code}): check the credentials and bucket policy"
                )
            if code in MISSING:
                return TrainerFailure(missing, f"{what} not found: {uri}")
            if code in ("PreconditionFailed", "412"):
                return TrainerFailure(Reason.TRAINER_ERROR, f"{uri} changed while it was being downloaded; start the job again")
            return TrainerFailure(Reason.TRAINER_ERROR, f"storage error on {uri}: {code} {exc}")
        return TrainerFailure(Reason.TRAINER_ERROR, f"storage error on {uri}: {exc}")

    def call(self, uri: str, missing: Reason, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self.fail(exc, uri, missing, what) from exc

    def local_path(self, uri: str) -> Path | None:
        return None

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in MISSING:
                return False
            raise self.fail(exc, uri, Reason.TRAINER_ERROR, "object") from exc
        except BotoCoreError as exc:
            raise self.fail(exc, uri, Reason.TRAINER_ERROR, "object") from exc

    def read_text(self, uri: str, missing: Reason, what: str) -> str:
        bucket, key = split_s3(uri)
        body = self.call(uri, missing, what, self.client.get_object, Bucket=bucket, Key=key)["Body"]
        return str(body.read().decode())

    def stat(self, uri: str, missing: Reason, what: str) -> Object:
        bucket, key = split_s3(uri)
        head = self.call(uri, missing, what, self.client.head_object, Bucket=bucket, Key=key)
        return Object(key.rsplit("/", 1)[-1], int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))

    def list(self, uri: str, limit: int) -> Objects:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        out: list[Object] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self.call(uri, Reason.TRAINER_ERROR, "prefix", paginator.paginate, Bucket=bucket, Prefix=prefix)
        iterator = iter(pages)
        while True:
            page = self.call(uri, Reason.TRAINER_ERROR, "prefix", next, iterator, None)
            if page is None:
                return out
            for item in page.get("Contents", []):
                out.append(Object(item["Key"][len(prefix) :], int(item["Size"]), str(item.get("ETag", "")).strip('"')))
            bounded(out, uri, limit)

    # downloads

    def full_crc32(self, item: Fetch, missing: Reason, what: str) -> str | None:
        """The object's whole-object CRC32 as the server keeps it, if it does (a multipart upload's is composite)."""
        bucket, key = split_s3(item.uri)
        head = self.call(item.uri, missing, what, self.client.head_object, Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        value = head.get("ChecksumCRC32")
        if not value or "-" in value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        return str(value)

    def _open(self, item: Fetch, crc32: str | None = None) -> Transfer:
        parts = max(1, -(-item.size // PART_BYTES))
        partial = item.target.with_name(item.target.name + ".partial")
        record = item.target.with_name(item.target.name + ".partial.parts")
        done: set[int] = set()
        if partial.is_file() and record.is_file():  # an interrupted download of the same object: keep its parts
            try:
                saved = json.loads(record.read_text())
                if saved.get("etag") == item.etag and saved.get("size") == item.size and saved.get("part") == PART_BYTES:
                    done = {int(p) for p in saved.get("done", []) if 0 <= int(p) < parts}
            except (ValueError, TypeError):
                done = set()
        item.target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, item.size)
        return Transfer(item, parts, done, fd, crc32)

    def _get(self, transfer: Transfer, part: int, missing: Reason, what: str) -> int:
        item = transfer.item
        bucket, key = split_s3(item.uri)
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if item.size:
            start, end = transfer.span(part)
            args["Range"] = f"bytes={start}-{end}"
        else:
            start, end = 0, -1
        if item.etag:
            args["IfMatch"] = f'"{item.etag}"'
        body = self.call(item.uri, missing, what, self.client.get_object, **args)["Body"]
        offset, crc, check = start, 0, transfer.crc32 is not None
        from botocore.exceptions import BotoCoreError

        try:
            for chunk in body.iter_chunks(CHUNK):
                os.pwrite(transfer.fd, chunk, offset)
                if check:
                    crc = zlib.crc32(chunk, crc)  # in this thread, as the bytes pass: no second read
                offset += len(chunk)
        except BotoCoreError as exc:
            raise self.fail(exc, item.uri, missing, what) from exc
        if offset != end + 1:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"download of {item.uri} bytes {start}-{end} ended at {offset}")
        if check:
            transfer.part_crcs[part] = crc
        transfer.finished(part)
        return offset - start

    def fetch(self, items: Fetches, missing: Reason, what: str) -> int:
        """Every object, in concurrent ranged parts; each verified and renamed into place. Returns bytes fetched."""
        with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="kubetune-head") as pool:
            sums = list(pool.map(lambda item: self.full_crc32(item, missing, what), items))
        transfers = [self._open(item, crc) for item, crc in zip(items, sums, strict=True)]
        moved = 0
        try:
            with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="kubetune-get") as pool:
                futures = [
                    pool.submit(self._get, t, part, missing, what)
                    for t in transfers
                    for part in range(t.parts)
                    if part not in t.done
                ]
                # bounded by each part's requests: connect and read timeouts and a retry limit (the client's Config)
                finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
                for future in finished:
                    moved += future.result()  # raises the first failure
            for transfer in transfers:
                transfer.verify()
                os.close(transfer.fd)
                transfer.fd = -1
                transfer.partial.replace(transfer.item.target)
                transfer.record.unlink(missing_ok=True)
        finally:
            for transfer in transfers:
                if transfer.fd >= 0:
                    os.close(transfer.fd)
        return moved

    # writing

    def upload_file(self, path: Path, uri: str) -> None:
        bucket, key = split_s3(uri)
        self.call(uri, Reason.TRAINER_ERROR, "object", self.client.upload_file, str(path), bucket, key)

    def write_text(self, uri: str, text: str) -> None:
        bucket, key = split_s3(uri)
        self.call(uri, Reason.TRAINER_ERROR, "object", self.client.put_object, Bucket=bucket, Key=key, Body=text.encode())

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self.call(uri, Reason.TRAINER_ERROR, "object", self.client.delete_object, Bucket=bucket, Key=key)

    def delete_prefix(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        keys = [{"Key": key.rstrip("/") + "/" + o.relative} for o in self.list(uri, MAX_OBJECTS)]
        for start in range(0, len(keys), 1000):
            response = self.call(
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
                raise self.fail(
                    client_error(str(first.get("Code", "")), str(first.get("Message", ""))),
                    f"s3://{bucket}/{first.get('Key', '')}",
                    Reason.TRAINER_ERROR,
                    "object",
                )
