"""The node-level model cache against a real S3 server: a second job and a restart fetch nothing, a damaged file is
fetched again (and only it), two pods starting at once download the model once, least recently used entries
are evicted but never one in use, and multipart ETags are checked."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from kubetune_api.conditions import Reason
from kubetune_trainer.storage import Store
from kubetune_trainer.storage.model_cache import ModelCache, fetch_model, multipart_matches

from .s3server import S3Server
from .trainer_helpers import store_for

BIG = 1 << 30


@pytest.fixture
def store(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Store:
    return store_for(s3, monkeypatch, "cache")


def model(s3: S3Server, name: str, size: int = 300_000) -> tuple[str, dict[str, bytes]]:
    files = {"model.safetensors": os.urandom(size), "config.json": b'{"model_type": "llama"}'}
    for relative, body in files.items():
        s3.put("cache", f"{name}/{relative}", body)
    return f"s3://cache/{name}/", files


def test_a_second_job_and_a_restart_take_the_model_from_the_cache(s3: S3Server, store: Store, tmp_path: Path) -> None:
    uri, files = model(s3, "shared")
    cache = ModelCache(tmp_path / "node-cache")
    first = fetch_model(store, uri, cache, BIG)
    total = sum(len(b) for b in files.values())
    assert (first.from_storage, first.from_cache) == (total, 0)
    first.release()
    second = fetch_model(store, uri, cache, BIG)
    assert (second.from_storage, second.from_cache) == (0, total) and second.path == first.path
    assert (second.path / "model.safetensors").read_bytes() == files["model.safetensors"]
    second.release()


def test_a_damaged_cached_file_is_fetched_again_and_only_it(s3: S3Server, store: Store, tmp_path: Path) -> None:
    uri, files = model(s3, "damaged")
    cache = ModelCache(tmp_path / "node-cache")
    entry = fetch_model(store, uri, cache, BIG)
    entry.release()
    weights = entry.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # a flipped byte: same size, another MD5 (another tenant, a bad disk)
    weights.write_bytes(bytes(data))
    again = fetch_model(store, uri, cache, BIG)
    assert again.from_storage == len(files["model.safetensors"]) and again.from_cache == len(files["config.json"])
    assert weights.read_bytes() == files["model.safetensors"]
    again.release()


def test_two_pods_starting_at_once_download_the_model_once(s3: S3Server, store: Store, tmp_path: Path) -> None:
    uri, files = model(s3, "together", size=4_000_000)
    cache = ModelCache(tmp_path / "node-cache")
    results = []

    def start() -> None:
        results.append(fetch_model(store, uri, cache, BIG))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(len(b) for b in files.values())
    assert sorted(r.from_storage for r in results) == [0, total]  # one downloaded, the other waited and verified
    assert results[0].path == results[1].path
    for entry in results:
        entry.release()


def test_two_workers_that_both_found_the_entry_missing_do_not_wait_for_each_other(
    s3: S3Server, store: Store, tmp_path: Path
) -> None:
    """Both saw no entry (a reader held the lock meanwhile); one writes it and keeps a shared lock while it trains:
    the other must take the finished entry, not queue for the exclusive lock behind a reader that never leaves."""
    import fcntl
    import os as _os
    import time

    from kubetune_trainer.storage import fingerprint

    uri, _ = model(s3, "race", size=2_000_000)
    cache = ModelCache(tmp_path / "node-cache")
    key = fingerprint(store.listing(uri, Reason.MODEL_MISSING, "base model"))
    (tmp_path / "node-cache").mkdir()
    gate = _os.open(tmp_path / "node-cache" / f"{key}.lock", _os.O_RDWR | _os.O_CREAT)
    fcntl.flock(gate, fcntl.LOCK_SH)  # both workers pass the shared lock, see no entry, and go for the exclusive one
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch_model(store, uri, cache, BIG)), daemon=True) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    _os.close(gate)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker waits forever for the exclusive lock"
    assert len(results) == 2
    for entry in results:
        entry.release()  # type: ignore[attr-defined]


def test_least_recently_used_entries_go_first_and_never_one_in_use(s3: S3Server, store: Store, tmp_path: Path) -> None:
    uris = [model(s3, f"lru-{i}", size=100_000)[0] for i in range(3)]
    cache = ModelCache(tmp_path / "node-cache", max_bytes=250_000)  # room for two
    held = fetch_model(store, uris[0], cache, BIG)  # in use throughout
    second = fetch_model(store, uris[1], cache, BIG)
    second.release()
    third = fetch_model(store, uris[2], cache, BIG)  # needs room: lru-1 goes (not in use); lru-0 stays (in use)
    assert held.path.is_dir() and not second.path.exists() and third.path.is_dir()
    for entry in (held, third):
        entry.release()


def test_multipart_etags_are_checked(s3: S3Server, store: Store, tmp_path: Path) -> None:
    body = os.urandom(11 << 20)
    path = tmp_path / "w.bin"
    path.write_bytes(body)
    s3.client().upload_file(
        str(path), "cache", "multipart/w.bin", Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    )
    (found,) = store.list("s3://cache/multipart/")
    assert found.etag.endswith("-3")
    assert multipart_matches(path, len(body), found.etag) is True
    path.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    assert multipart_matches(path, len(body), found.etag) is False


def test_waiting_for_another_pods_download_is_watched_not_endless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod waiting for the entry another pod writes waits while that download makes progress, and fails naming
    the stage once nothing has been written for KUBETUNE_STALL_SECONDS (a writer hung on the same node)."""
    import fcntl
    import time

    from kubetune_trainer.errors import TrainerFailure

    monkeypatch.setenv("KUBETUNE_STALL_SECONDS", "1")
    cache = ModelCache(tmp_path / "node-cache")
    cache.root.mkdir(parents=True)
    writer, waiter = cache._lock("k"), cache._lock("k")  # two open file descriptions: two pods' locks
    fcntl.flock(writer, fcntl.LOCK_EX)
    partial = cache.root / "k.partial"
    partial.mkdir()

    def download() -> None:  # progress for 2.5 s (longer than the stall), then done
        for k in range(25):
            (partial / "model.safetensors").write_bytes(b"x" * (k + 1))
            time.sleep(0.1)
        fcntl.flock(writer, fcntl.LOCK_UN)

    thread = threading.Thread(target=download)
    thread.start()
    cache._wait_shared(waiter, "k")  # returns once the writer lets go
    thread.join()
    fcntl.flock(waiter, fcntl.LOCK_UN)
    fcntl.flock(writer, fcntl.LOCK_EX)  # a writer that writes nothing more
    with pytest.raises(TrainerFailure, match=r"fetching the base model stalled: another process on this node is writing"):
        cache._wait_shared(waiter, "k")
    with pytest.raises(TrainerFailure, match=r"wrote nothing in 1 s \(KUBETUNE_STALL_SECONDS\)"):
        cache._writer(waiter, cache.root / "k")
    os.close(writer)
    os.close(waiter)
