"""Data-path benchmark against a real S3 server (SeaweedFS, built by `make testbed`), side by side in one run (not a
test):

1. download throughput of a synthetic model prefix (several safetensors-sized shards of random bytes): kubetune's
   store (concurrent ranged GETs, per-part CRC32 combined, verified) against a plain parallel ranged-GET client (same
   concurrency and part size, no verification), alternating, best of each;
2. the base model's fetch cold (empty node cache), warm (same node: verified, nothing fetched) and after a gang
   restart (a new pod on the same node), from the fetch events of `kubetune run`, with the time to the first step;
3. the stall per checkpoint with uploads in the background against uploads in the loop (KUBETUNE_SYNC_CHECKPOINTS);
4. where the fixed cost of a small run goes (the trainer's timing events);
5. peak resident memory per rank and the time to read and tokenize 100k and 1M records with 1, 2 and 4 ranks,
   this checkout against the code before ranks tokenized only their own share (`--baseline-rev`, run from a git
   worktree of that revision).

  .venv/bin/python bench/data_bench.py [--gib 2] [--shards 4]      (or: make bench-data)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import S3Server, start  # noqa: E402

from kubetune_api.conditions import Reason  # noqa: E402
from kubetune_api.manifests import dump  # noqa: E402
from kubetune_api.storage import StorageSpec  # noqa: E402
from kubetune_trainer import tiny  # noqa: E402
from kubetune_trainer.storage import Store  # noqa: E402
from kubetune_trainer.storage import s3 as storage_s3  # noqa: E402


def plain_client(s3: S3Server, bucket: str, prefix: str, dest: Path) -> int:
    """The baseline: every object in PART_BYTES ranges, CONCURRENCY GETs in flight, written in place, nothing checked."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=storage_s3.CONCURRENCY + 4),
    )
    objects = [(o["Key"], o["Size"]) for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    part = storage_s3.PART_BYTES
    dest.mkdir(parents=True, exist_ok=True)
    handles = {}
    for key, size in objects:
        fd = os.open(dest / key.rsplit("/", 1)[-1], os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, size)
        handles[key] = fd

    def get(key: str, start: int, end: int) -> int:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
        offset = start
        for chunk in body.iter_chunks(1 << 20):
            os.pwrite(handles[key], chunk, offset)
            offset += len(chunk)
        return offset - start

    tasks = [(key, s, min(size, s + part) - 1) for key, size in objects for s in range(0, size, part)]
    with ThreadPoolExecutor(max_workers=storage_s3.CONCURRENCY) as pool:
        moved = sum(pool.map(lambda t: get(*t), tasks))
    for fd in handles.values():
        os.close(fd)
    return moved


def unchecked() -> Any:
    """kubetune's store with its checksums switched off: a diagnostic line only, to show what verifying costs."""
    import contextlib

    @contextlib.contextmanager
    def switched_off() -> Any:
        saved = storage_s3.S3Backend.full_crc32, storage_s3.is_md5
        storage_s3.S3Backend.full_crc32 = lambda self, item, missing, what: None  # type: ignore[method-assign]
        storage_s3.is_md5 = lambda etag: False
        try:
            yield
        finally:
            storage_s3.S3Backend.full_crc32, storage_s3.is_md5 = saved  # type: ignore[method-assign]

    return switched_off()


CLIENTS = ("plain", "kubetune", "unchecked")


def throughput(s3: S3Server, store: Store, work: Path, total: int, rounds: int) -> dict[str, float]:
    """Median MiB/s of each client over `rounds` rounds, the order rotating (the server and page cache favour
    whichever runs later in a round on this machine)."""
    import contextlib

    seen: dict[str, list[float]] = {name: [] for name in CLIENTS}
    for number in range(rounds):
        for name in CLIENTS[number % 3 :] + CLIENTS[: number % 3]:
            dest = work / f"dl-{name}"
            shutil.rmtree(dest, ignore_errors=True)
            started = time.monotonic()
            if name == "plain":
                plain_client(s3, "bench", "model/", dest)
            else:
                with unchecked() if name == "unchecked" else contextlib.nullcontext():
                    store.download_prefix("s3://bench/model/", dest, Reason.MODEL_MISSING, "base model")
            seen[name].append(total / (time.monotonic() - started) / 2**20)
            shutil.rmtree(dest, ignore_errors=True)
    return {name: statistics.median(values) for name, values in seen.items()}


def job(name: str, s3: S3Server, model: str, train: Path, out: str, **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model},
            "dataset": {"train": str(train), "maxSeqLength": 128},
            "lora": {"r": 8, "alpha": 16},
            "training": {"evalEverySteps": 0, "checkpointEverySteps": 0, "microBatchSize": 4, **training},
            "workers": {"replicas": 2, "gpusPerWorker": 0},
            "storage": {"endpoint": s3.endpoint, "region": "us-east-1", "addressingStyle": "path"},
            "output": {"uri": out, "overwrite": True},
        },
    }


def start_run(body: dict[str, Any], work: Path, env: dict[str, str], cwd: Path, processes: int | None = None) -> Any:
    """`kubetune run` of the manifest, JSON progress on a pipe, the log in its work directory."""
    name = body["metadata"]["name"]
    manifest = work / f"{name}.yaml"
    manifest.write_text(dump(body))
    command = [sys.executable, "-m", "kubetune_cli", "run", str(manifest), "--progress", "json", "--work-dir", str(work / name)]
    if processes is not None:
        command += ["--processes", str(processes)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)


def kubetune_run(
    body: dict[str, Any], s3: S3Server, work: Path, env: dict[str, str]
) -> tuple[list[dict[str, Any]], float | None, float]:
    """Events printed by `kubetune run`, the seconds to its first progress line, and the whole run's seconds."""
    started = time.monotonic()
    process = start_run(body, work, {**os.environ, **s3.env, **env}, ROOT)
    events, first = [], None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            events.append(event)
            if event.get("event") == "progress" and first is None:
                first = time.monotonic() - started
    process.wait()
    if process.returncode:
        raise SystemExit(f"kubetune run {body['metadata']['name']} failed: {events[-1:]}")
    return events, first, time.monotonic() - started


def peak_rss(body: dict[str, Any], s3: S3Server, work: Path, processes: int, pythonpath: str | None) -> tuple[float, float]:
    """(peak resident MiB of the largest rank, seconds to read and tokenize) of a one-step `kubetune run`."""
    import psutil

    env = {**os.environ, **s3.env}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    process = start_run(body, work, env, work, processes)  # outside the checkout: PYTHONPATH picks the revision
    peak = 0.0
    import threading

    def watch() -> None:
        nonlocal peak
        while process.poll() is None:
            try:
                ranks = [
                    c
                    for c in psutil.Process(process.pid).children(recursive=True)
                    if "kubetune_trainer.recipe.train" in " ".join(c.cmdline())
                ]
                peak = max([peak, *(c.memory_info().rss / 2**20 for c in ranks)])
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = process.communicate()
    watcher.join()
    tokenize = next(
        (json.loads(line)["seconds"] for line in out.splitlines() if '"read and tokenize data"' in line), float("nan")
    )
    return peak, tokenize


def tokenizing(s3: S3Server, work: Path, args: argparse.Namespace) -> None:
    baseline = work / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(baseline), args.baseline_rev], cwd=ROOT, check=True, capture_output=True
    )
    try:
        model_dir = tiny.save_tiny_model(work / "tiny-rss")
        old = os.pathsep.join(str(baseline / part) for part in ("api", "cli", "operator", "trainer"))
        print(f"\n5. peak resident memory of the largest rank and seconds to read and tokenize (baseline: {args.baseline_rev})")
        print(f"   {'records':>9} {'ranks':>5} {'baseline MiB':>13} {'now MiB':>9} {'baseline s':>11} {'now s':>7}")
        for count in (int(c) for c in args.records.split(",")):
            train = tiny.write_jsonl(work / f"rss-{count}.jsonl", tiny.records(count, seed=1))
            for ranks in (int(r) for r in args.ranks.split(",")):
                body = job("rss", s3, str(model_dir), train, str(work / "out-rss"), maxSteps=1)
                body["spec"]["workers"] = {"replicas": ranks, "gpusPerWorker": 0}
                body["spec"]["dataset"]["validationSplit"] = 0.01
                before = peak_rss(body, s3, work, ranks, old)
                now = peak_rss(body, s3, work, ranks, None)
                print(f"   {count:9d} {ranks:5d} {before[0]:13.0f} {now[0]:9.0f} {before[1]:11.1f} {now[1]:7.1f}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the synthetic model prefix")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--records", default="100000,1000000", help="dataset sizes for part 5")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--baseline-rev", default="d0f999c", help="the revision before rank-sharded tokenization")
    parser.add_argument("--only", default="", help="1 (downloads alone), 5 (tokenizing alone); default: every part")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubetune-bench-data-"))
    s3 = start(work / "weed.log")
    try:
        for key, value in s3.env.items():
            os.environ[key] = value
        s3.bucket("bench")
        client = s3.client()
        shard = int(args.gib * 2**30 / args.shards)
        block = os.urandom(64 << 20)
        for i in range(args.shards):
            path = work / "shard.bin"
            with path.open("wb") as handle:
                left = shard
                while left:
                    handle.write(block[: min(left, len(block))])
                    left -= min(left, len(block))
            with path.open("rb") as handle:  # one PUT: a single-part object, whose ETag is its MD5
                client.put_object(Bucket="bench", Key=f"model/model-{i + 1:05d}-of-{args.shards:05d}.safetensors", Body=handle)
        only = {int(p) for p in args.only.split(",") if p} or {1, 2, 3, 4, 5}
        if only == {5}:
            tokenizing(s3, work, args)
            return
        total = shard * args.shards
        store = Store(StorageSpec(endpoint=s3.endpoint, region="us-east-1", addressingStyle="path"))
        best = throughput(s3, store, work, total, args.rounds)
        print(
            f"\n1. download of {total / 2**30:.1f} GiB in {args.shards} objects, {storage_s3.CONCURRENCY} GETs of {storage_s3.PART_BYTES >> 20} MiB in flight"
        )
        print(
            f"   plain parallel ranged GETs (no checks)            {best['plain']:8.1f} MiB/s   (medians of {args.rounds} rounds)"
        )
        print(
            f"   kubetune (per-part CRC32, verified, resumable)    {best['kubetune']:8.1f} MiB/s   ratio {best['kubetune'] / best['plain']:.2f}"
        )
        print(
            f"   kubetune, checksums off (diagnostic only)         {best['unchecked']:8.1f} MiB/s   ratio {best['unchecked'] / best['plain']:.2f}"
        )

        if only == {1}:
            return

        # 2. cold, warm and restart: a tiny model padded with the synthetic shards' bytes, through `kubetune run`
        model_dir = tiny.save_tiny_model(work / "tiny")
        s3.upload_dir(model_dir, "bench", "runmodel")
        client.copy_object(
            Bucket="bench",
            Key="runmodel/padding.bin",
            CopySource={"Bucket": "bench", "Key": f"model/model-00001-of-{args.shards:05d}.safetensors"},
        )
        train = tiny.write_jsonl(work / "train.jsonl", tiny.records(400, seed=1))
        cache = work / "node-cache"
        env = {"KUBETUNE_MODEL_CACHE": str(cache)}
        rows = []
        for label in ("cold (empty node cache)", "warm (second job, same node)", "gang restart (new pod, same node)"):
            events, first, whole = kubetune_run(
                job("fetch", s3, "s3://bench/runmodel/", train, str(work / "out-fetch"), maxSteps=2), s3, work, env
            )
            fetched = next(e for e in events if e.get("event") == "fetch")
            rows.append((label, fetched, first))
        print(f"\n2. the base model ({rows[0][1]['fromStorage'] / 2**20:.0f} MiB) at the start of `kubetune run`")
        print(f"   {'':36} {'from storage':>14} {'from cache':>12} {'fetch s':>8} {'verify s':>9} {'first step s':>13}")
        for label, fetched, first in rows:
            print(
                f"   {label:36} {fetched['fromStorage'] / 2**20:11.0f} MiB {fetched['fromCache'] / 2**20:9.0f} MiB "
                f"{fetched['fetchSeconds']:8.2f} {fetched['verifySeconds']:9.2f} {first or 0:13.1f}"
            )

        # 3. checkpoint stall: uploads in the background against in the loop
        s3.bucket("bench-out")
        print("\n3. stall per checkpoint (a 2-process ZeRO-2 run, checkpoint every 4 steps, to the S3 server)")
        for label, extra in (
            ("upload in the loop (before)", {"KUBETUNE_SYNC_CHECKPOINTS": "1"}),
            ("upload in the background", {}),
        ):
            events, _, whole = kubetune_run(
                job("ckpt", s3, str(model_dir), train, "s3://bench-out/ckpt/", maxSteps=24, checkpointEverySteps=4),
                s3,
                work,
                extra,
            )
            stalls = [e["stallSeconds"] for e in events if e.get("event") == "checkpoint"]
            print(
                f"   {label:30} mean stall {sum(stalls) / len(stalls):6.3f} s over {len(stalls)} checkpoints; run {whole:5.1f} s"
            )

        # 4. the fixed cost of a run
        events, _, whole = kubetune_run(
            job(
                "fixed",
                s3,
                str(model_dir),
                tiny.write_jsonl(work / "t3000.jsonl", tiny.records(3000, seed=1)),
                str(work / "out-fixed"),
                epochs=2,
            ),
            s3,
            work,
            {},
        )
        timings = [e for e in events if e.get("event") == "timing"]
        print(f"\n4. where a 3,000-record, 2-epoch CPU run's {whole:.1f} s go (rank 0's timing events)")
        for timing in timings:
            print(f"   {timing['phase']:28} {timing['seconds']:7.2f} s")
        if 5 in only:
            tokenizing(s3, work, args)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
