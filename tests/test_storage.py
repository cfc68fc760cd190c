"""The storage layer against a real S3 protocol server: a prefix mirrored concurrently in ranged parts and verified,
an interrupted download resumed with only the parts it lacks, a corrupt part caught by the streamed MD5, and one
backend per URI scheme."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage import BACKENDS, Store, scheme
from kubetune_trainer.storage import s3 as storage_s3

from .s3server import S3Server
from .trainer_helpers import store_for

PART = 64 << 10


@pytest.fixture
def store(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(storage_s3, "PART_BYTES", PART)  # small parts: several per object at test sizes
    return store_for(s3, monkeypatch, "storage")


def put_model(s3: S3Server, prefix: str) -> dict[str, bytes]:
    files = {
        "model-00001-of-00002.safetensors": os.urandom(5 * PART + 123),
        "model-00002-of-00002.safetensors": os.urandom(3 * PART),
        "config.json": b'{"model_type": "llama"}',
        "sub/empty.txt": b"",
    }
    for name, body in files.items():
        s3.put("storage", f"{prefix}/{name}", body)
    return files


def test_a_prefix_is_mirrored_in_parts_and_verified(s3: S3Server, store: Store, tmp_path: Path) -> None:
    files = put_model(s3, "mirror")
    dest = store.download_prefix("s3://storage/mirror/", tmp_path / "m", Reason.MODEL_MISSING, "base model")
    for name, body in files.items():
        assert (dest / name).read_bytes() == body, name
    assert not list(dest.rglob("*.partial*"))
    again = store.download_prefix("s3://storage/mirror/", tmp_path / "m", Reason.MODEL_MISSING, "base model")
    assert again == dest  # complete already: nothing fetched again


def test_an_interrupted_download_resumes_with_the_parts_it_lacks(s3: S3Server, store: Store, tmp_path: Path) -> None:
    body = os.urandom(6 * PART + 7)
    s3.put("storage", "resume/big.bin", body)
    target = tmp_path / "big.bin"
    etag = hashlib.md5(body).hexdigest()
    partial = target.with_name("big.bin.partial")
    partial.write_bytes(body[: 3 * PART] + b"\0" * (len(body) - 3 * PART))  # parts 0-2 landed before the crash
    target.with_name("big.bin.partial.parts").write_text(
        json.dumps({"etag": etag, "size": len(body), "part": PART, "done": [0, 1, 2]})
    )
    backend = store.backend("s3://storage/resume/big.bin")
    from kubetune_trainer.storage.base import Fetch

    moved = backend.fetch([Fetch("s3://storage/resume/big.bin", target, len(body), etag)], Reason.MODEL_MISSING, "model")
    assert moved == len(body) - 3 * PART  # only the missing parts crossed the network
    assert target.read_bytes() == body


def test_a_part_that_is_not_what_storage_holds_fails_the_digest(s3: S3Server, store: Store, tmp_path: Path) -> None:
    body = os.urandom(4 * PART)
    s3.put("storage", "corrupt/w.bin", body)
    target = tmp_path / "w.bin"
    etag = hashlib.md5(body).hexdigest()
    target.with_name("w.bin.partial").write_bytes(b"\1" * PART + b"\0" * (3 * PART))  # a "done" part of wrong bytes
    target.with_name("w.bin.partial.parts").write_text(json.dumps({"etag": etag, "size": len(body), "part": PART, "done": [0]}))
    with pytest.raises(TrainerFailure) as caught:
        store.download_file("s3://storage/corrupt/w.bin", target, Reason.MODEL_MISSING, "model")
    assert "is corrupt: crc32" in caught.value.message and not target.exists()  # the CRC32 the server keeps


def test_a_missing_object_and_a_missing_prefix_name_their_reason(store: Store, tmp_path: Path) -> None:
    with pytest.raises(TrainerFailure) as caught:
        store.download_file("s3://storage/nope/x.jsonl", tmp_path / "x", Reason.DATASET_MISSING, "dataset")
    assert caught.value.reason is Reason.DATASET_MISSING
    with pytest.raises(TrainerFailure) as caught:
        store.download_prefix("s3://storage/nothing/", tmp_path / "n", Reason.MODEL_MISSING, "base model")
    assert caught.value.reason is Reason.MODEL_MISSING and "nothing under" in caught.value.message


def test_each_scheme_has_one_backend_and_an_unknown_one_is_named(store: Store, tmp_path: Path) -> None:
    assert scheme("s3://b/k") == "s3" and scheme("./data/x.jsonl") == "file" and scheme("gs://b/k") == "gs"
    assert set(BACKENDS) == {"s3", "file"}
    (tmp_path / "d").mkdir()
    assert store.local_path(str(tmp_path / "d")) == tmp_path / "d"  # a local prefix is read where it is
    assert store.local_path("s3://storage/x") is None
    with pytest.raises(TrainerFailure) as caught:
        store.exists("gs://bucket/key")
    assert "no storage backend for gs://" in caught.value.message
