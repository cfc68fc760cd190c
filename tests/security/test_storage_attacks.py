"""Storage is untrusted input: whoever can write under a job's model, data or output prefix must not be able to
write outside the cache, run code in the job's pods, exhaust its disk or memory, or hide a failed delete.
Against the tests' S3 server (real HTTP, real S3 protocol)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage import Store, file_digest, safe_target

from ..s3server import S3Server
from ..trainer_helpers import store_for

EVIL_KEYS = [
    "../../../../tmp/.local/lib/python3.11/site-packages/evil.pth",
    "a/../../evil.pth",
    "a//evil.pth",
    "./evil.pth",
    "a/./evil.pth",
    "/abs/evil.pth",
    "a\\..\\..\\evil.pth",
]


@pytest.fixture
def s3(moto_s3: S3Server) -> S3Server:
    """moto keeps hostile keys (`..`, `//`, absolute) verbatim, as AWS S3 does; SeaweedFS, a filesystem underneath,
    refuses or normalizes them, so it cannot play the attacker's bucket here."""
    return moto_s3


@pytest.fixture
def store(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Store:
    return store_for(s3, monkeypatch, "attacks")


@pytest.mark.parametrize("evil", EVIL_KEYS)
def test_a_key_that_leaves_its_prefix_is_refused_before_anything_is_written(
    s3: S3Server, store: Store, tmp_path: Path, evil: str
) -> None:
    prefix = f"model-{abs(hash(evil))}"
    s3.put("attacks", f"{prefix}/config.json", b"{}")
    s3.put("attacks", f"{prefix}/{evil}", b"import os; os.system('touch /tmp/pwned')\n")
    assert any(k.endswith(evil) for k in s3.keys(f"s3://attacks/{prefix}/")), "the server must keep the key verbatim"
    dest = tmp_path / "cache" / "models" / "m"
    with pytest.raises(TrainerFailure) as caught:
        store.download_prefix(f"s3://attacks/{prefix}/", dest, Reason.MODEL_MISSING, "base model")
    assert caught.value.reason == Reason.UNSAFE_OBJECT_KEY
    assert "refusing object" in caught.value.message
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written  # not even the harmless object: keys are checked before the first download


def test_a_checkpoint_prefix_gets_the_same_check(s3: S3Server, store: Store, tmp_path: Path) -> None:
    s3.put("attacks", "out/checkpoints/step-000004/mp_rank_00_model_states.pt", b"x")
    s3.put("attacks", "out/checkpoints/step-000004/../../../../../evil.pth", b"x")
    with pytest.raises(TrainerFailure) as caught:
        store.download_prefix("s3://attacks/out/checkpoints/step-000004", tmp_path / "resume", Reason.TRAINER_ERROR, "checkpoint")
    assert caught.value.reason == Reason.UNSAFE_OBJECT_KEY


def test_a_link_already_in_the_cache_cannot_lead_outside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(TrainerFailure) as caught:
        safe_target(dest, "link/evil.pth", "s3://b/p/link/evil.pth")
    assert caught.value.reason == Reason.UNSAFE_OBJECT_KEY
    for bad in ("a/evil\n.pth", "a/\x1b[2Jevil", "", "a/"):
        with pytest.raises(TrainerFailure):
            safe_target(dest, bad, "s3://b/p/x")
    assert (
        safe_target(dest, "sub/dir/model.safetensors", "s3://b/p/sub/dir/model.safetensors") == dest / "sub/dir/model.safetensors"
    )


def test_a_model_larger_than_the_cache_fails_before_download(s3: S3Server, store: Store, tmp_path: Path) -> None:
    s3.put("attacks", "big/model.safetensors", os.urandom(3 << 20))
    dest = tmp_path / "big"
    with pytest.raises(TrainerFailure) as caught:
        store.download_prefix(
            "s3://attacks/big/", dest, Reason.MODEL_MISSING, "base model", max_bytes=1 << 20, too_large=Reason.MODEL_TOO_LARGE
        )
    assert caught.value.reason == Reason.MODEL_TOO_LARGE
    assert "3.0 MiB" in caught.value.message and "1.0 MiB" in caught.value.message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_huge_listing_is_refused_instead_of_held_in_memory(s3: S3Server, store: Store) -> None:
    for i in range(12):
        s3.put("attacks", f"many/{i:03d}", b"x")
    with pytest.raises(TrainerFailure, match="more than 10 objects"):
        store.list("s3://attacks/many/", limit=10)


def test_hashes_are_computed_streaming(tmp_path: Path) -> None:
    import hashlib

    big = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with big.open("wb") as handle:
        for _ in range(64):
            handle.write(block)
    tracemalloc.start()
    digest = file_digest(big, "md5")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert digest == hashlib.md5(block * 64, usedforsecurity=False).hexdigest()
    assert peak < 16 << 20, f"hashing a 64 MiB file peaked at {peak >> 20} MiB"
