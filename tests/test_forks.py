"""The launcher's forked helpers (kubetune_trainer.forks): no helper runs the parent's Python signal handlers, no
wait on one lasts for ever (a dead helper is named, a silent one fails as stalled), and preparing a dataset under
the handlers `kubetune run` installs ends, over many chunks, with the tokenizer's threads running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.forks import ForkPool, HelperDied, Stalled

from .conftest import ROOT


def _square(shared: int, task: int) -> int:
    return shared + task * task


def _die_on(shared: int, task: int) -> int:
    if task == shared:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def _sleep_on(shared: int, task: int) -> int:
    if task == shared:
        time.sleep(60)
    return task


def _fail_on(shared: int, task: int) -> int:
    if task == shared:
        raise TrainerFailure(__import__("kubetune_api.conditions").conditions.Reason.BAD_RECORD, f"record {task}: bad")
    return task


def _signalled_on_a_thread(shared: Any, task: int) -> int:
    """A SIGTERM to this helper while its main thread sleeps on a lock and another thread runs (as a tokenizer's do)."""
    lock = threading.Lock()
    lock.acquire()
    threading.Thread(target=lambda: (time.sleep(0.2), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
    lock.acquire(timeout=30)  # a Python handler would only be flagged: the helper would sleep here for 30 s
    return -1


def test_results_come_in_task_order_from_every_helper() -> None:
    with ForkPool(3, _square, 10, "squaring", stall=60) as pool:
        assert list(pool.map(range(50))) == [10 + k * k for k in range(50)]
        assert list(pool.map(iter([7]))) == [59]  # one pool serves many maps
        assert list(pool.map([])) == []
        helpers = [process for process, _ in pool.helpers]
    assert not any(process.is_alive() for process in helpers)


def test_a_helper_that_dies_is_named_with_its_signal_never_waited_for() -> None:
    killed = r"a tokenizing process \(pid \d+\) was killed by SIGKILL \(most likely the kernel's out-of-memory"
    with pytest.raises(HelperDied, match=killed) as caught, ForkPool(2, _die_on, 5, "tokenizing", stall=60) as pool:
        list(pool.map(range(20)))
    assert caught.value.out_of_memory


def test_a_helper_that_makes_no_progress_fails_as_stalled() -> None:
    started = time.monotonic()
    stalled = r"tokenizing: no result from any of its processes in 1 s"
    with pytest.raises(Stalled, match=stalled), ForkPool(2, _sleep_on, 3, "tokenizing", stall=1) as pool:
        list(pool.map(range(10)))
    assert time.monotonic() - started < 30  # the sleeping helper was killed, not waited for


def test_a_helpers_failure_crosses_as_itself() -> None:
    with (
        pytest.raises(TrainerFailure, match=r"BadRecord: record 4: bad"),
        ForkPool(2, _fail_on, 4, "tokenizing", stall=60) as pool,
    ):
        list(pool.map(range(10)))


def test_a_helper_dies_of_sigterm_whichever_thread_takes_it_though_the_parent_has_a_python_handler() -> None:
    from kubetune_trainer import launch

    with (
        launch._on_sigterm(launch._stop_before_training),
        pytest.raises(HelperDied, match=r"killed by SIGTERM"),
        ForkPool(1, _signalled_on_a_thread, None, "tokenizing", stall=20) as pool,
    ):
        list(pool.map([0]))


def test_preparing_many_chunks_under_kubetune_runs_handlers_ends_and_no_helper_catches_a_signal(tmp_path: Path) -> None:
    """The hang `kubetune run` met at 100,000 records: a multiprocessing.Pool per chunk, whose terminate sent SIGTERM
    to helpers that had inherited the launcher's Python handler (a Python handler is only flagged by the signal; a
    helper whose main thread was asleep on the pool's lock when it came, or had it taken by a tokenizer thread,
    never ran it, and the launcher waited in join for ever). Here at a small size, under the launcher's SIGTERM
    handler with the fast tokenizer's threads on: every helper that tokenized had SIGTERM and SIGINT at their
    default actions (read from /proc: the race itself is rare, the mechanism is not), and 60 chunks of 2,000
    records end; a hang becomes a failure at the timeout."""
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from pathlib import Path
        from kubetune_api import validate_object
        from kubetune_trainer import launch, tiny
        from kubetune_trainer.data import prepared
        sys.path.insert(0, {str(ROOT)!r})
        from tests.conftest import job

        tmp = Path({str(tmp_path)!r})
        tokenize_any = prepared.tokenize_any

        def watched(*args, **kwargs):
            caught = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("SigCgt:"))
            with (tmp / "caught").open("a") as out:
                out.write(f"{{os.getpid()}} {{int(caught.split()[1], 16)}}\\n")
            return tokenize_any(*args, **kwargs)

        prepared.tokenize_any = watched
        prepared.CHUNK_RECORDS = 2000
        prepared.cpus = lambda: 2
        data = tiny.write_jsonl(tmp / "chat.jsonl", tiny.records(120_000, seed=1, fmt="chat"))
        spec = validate_object(job(**{{"spec.dataset": {{"train": "s3://data/chat.jsonl", "format": "chat", "maxSeqLength": 256}}}})).job.spec
        with launch._on_sigterm(launch._stop_before_training):
            meta = prepared.prepare(spec, tiny.byte_tokenizer(), "llama", data, None, tmp / "prepared")
        print(json.dumps({{"counts": meta.counts.model_dump(mode="json"), "parent": os.getpid()}}))
        """
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and any helper it left
        process.communicate()
        pytest.fail("preparing hung under the launcher's SIGTERM handler (240 s)")
    assert process.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    counts = out["counts"]
    assert counts["train"]["records"] + counts["validation"]["records"] == 120_000
    masks = {int(pid): int(mask) for pid, mask in (line.split() for line in (tmp_path / "caught").read_text().splitlines())}
    helpers = {pid: mask for pid, mask in masks.items() if pid != out["parent"]}
    assert len(helpers) >= 2, masks
    for signum in (signal.SIGTERM, signal.SIGINT):
        catching = sorted(pid for pid, mask in helpers.items() if mask >> (signum - 1) & 1)
        assert not catching, f"tokenizing helpers {catching} catch {signum.name} with the parent's Python handler"


def test_a_tokenizing_process_killed_for_memory_fails_the_preparation_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_api import validate_object
    from kubetune_api.conditions import Reason
    from kubetune_trainer import tiny
    from kubetune_trainer.data import prepared

    from .conftest import job

    def killed(shared: Any, task: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(prepared, "cpus", lambda: 2)
    monkeypatch.setattr(prepared, "_tokenize_task", killed)
    data = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.records(3000, seed=1))
    spec = validate_object(job(**{"spec.dataset": {"train": "s3://data/t.jsonl", "maxSeqLength": 64}})).job
    assert spec is not None
    with pytest.raises(TrainerFailure) as caught:
        prepared.prepare(spec.spec, tiny.byte_tokenizer(), "llama", data, None, tmp_path / "out")
    assert caught.value.reason == Reason.OUT_OF_MEMORY
    assert "preparing the data failed: a tokenizing process" in caught.value.message and "SIGKILL" in caught.value.message
