"""Soak through the commands users run, at the sizes they have (`make soak`; not part of CI).

On generated chat records of about 600 tokens (bench/prepare_bench.py's 32,000-word fast tokenizer and records, a
tiny Llama of that vocabulary), for each size in --records:

  run-1       `kubetune run JOB --processes 1` to the end
  run-2       `kubetune run JOB --processes 2` to the end
  preflight   `kubetune preflight JOB`
  term-prep   `kubetune run`, SIGTERM once preparing has begun: must end within the grace with the preempted code
  term-train  `kubetune run`, SIGTERM after the first step: must end within the grace with the preempted code and a
              complete checkpoint to resume from, and the same command again must resume from it and finish

and beside them, on the same records and in fresh processes, the floor (json, chat template, batched fast
tokenizer) and TRL 1.16's SFTTrainer preparation (bench/prepare_bench.py's sides). It prints the time to the first
step and its growth over a 500-record run of the same command, that growth against the floor and TRL, the
launcher's peak RSS and its growth per prepared token, and every outcome. Any run that hangs past --timeout, or
ends otherwise than it must, fails the soak (exit 1).

  .venv/bin/python bench/soak.py --records 100000,1000000 [--skip-baselines] [--timeout 3600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import prepare_bench  # noqa: E402

EXIT_PREEMPTED = 75
GRACE = 60.0  # what the soak allows a SIGTERM'd run (a pod's terminationGracePeriodSeconds is set by the chart)
SMALL = 500


def make_model(directory: Path) -> Path:
    """prepare_bench's tokenizer with a tiny Llama of its vocabulary beside it: a model directory kubetune loads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    prepare_bench.make_tokenizer(directory)
    config = json.loads((directory / "config.json").read_text())
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config["vocab_size"],
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        )
    )
    model.save_pretrained(directory)
    return directory


def manifest(name: str, model: Path, train: Path, validation: Path, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": str(model) + "/"},
            "dataset": {"train": str(train), "validation": str(validation), "format": "chat", "maxSeqLength": 2048},
            "lora": {"r": 8, "alpha": 16},
            "training": {
                "maxSteps": 4,
                "microBatchSize": 1,
                "logEverySteps": 1,
                "checkpointEverySteps": 100,
                "evalEverySteps": 100,
            },
            "deepspeed": {"zeroStage": 2},
            "workers": {"replicas": 1, "gpusPerWorker": 0},
            "output": {"uri": str(out) + "/", "overwrite": True},
        },
    }


class Watched:
    """A command, its output read line by line (times of the first `preparing` line and the first step), the peak
    RSS of its own process (the launcher, which prepares the data), and a hard timeout."""

    def __init__(self, command: list[str], cwd: Path, timeout: float) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
        )
        self.timeout, self.lines, self.peak = timeout, [], 0
        self.first: dict[str, float] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "progress" and event.get("step", 0) >= 1:
                kind = "step"
            if isinstance(kind, str) and kind not in self.first:
                self.first[kind] = time.monotonic() - self.started

    def _sample(self) -> None:
        try:
            me = psutil.Process(self.process.pid)
            while self.process.poll() is None:
                self.peak = max(self.peak, me.memory_info().rss)
                time.sleep(0.1)
        except psutil.Error:
            pass

    def wait_for(self, kind: str) -> bool:
        while kind not in self.first and self.process.poll() is None:
            if time.monotonic() - self.started > self.timeout:
                return False
            time.sleep(0.05)
        return kind in self.first

    def end(self, within: float | None = None) -> tuple[int | None, float]:
        """The exit code (None: it hung and was killed) and the seconds it took from now."""
        asked = time.monotonic()
        limit = within if within is not None else max(1.0, self.timeout - (asked - self.started))
        try:
            code: int | None = self.process.wait(limit)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()
            self.process.wait()
            code = None
        self.reader.join(10)
        return code, time.monotonic() - asked

    def tail(self) -> str:
        return "".join(self.lines[-8:])


def kubetune(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubetune_cli", *args]


def forget(work: Path, name: str) -> None:
    """A run's work directory and outputs, once measured: at 1,000,000 records each holds gigabytes (the prepared
    arrays, checkpoints), and the soak's runs together would fill a disk."""
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    shutil.rmtree(work / "out" / name, ignore_errors=True)


def one_size(
    records: int, work: Path, model: Path, small: Path, validation: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    data = work / f"train-{records}.jsonl"
    if not data.exists():
        prepare_bench.make_records(data, records)
    rows: list[dict[str, Any]] = []

    def job(name: str, train: Path) -> Path:
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest(name, model, train, validation, work / "out" / name)))
        return path

    def run(label: str, processes: int, train: Path, n: int) -> dict[str, Any]:
        name = f"{label}-{n}"
        watched = Watched(
            kubetune(
                "run",
                str(job(name, train)),
                "--processes",
                str(processes),
                "--progress",
                "json",
                "--work-dir",
                str(work / "runs" / name),
            ),
            work,
            args.timeout,
        )
        code, _ = watched.end()
        meta = work / "runs" / name / "prepared" / "meta.json"
        counts = json.loads(meta.read_text())["counts"] if meta.exists() else None
        forget(work, name)
        return {
            "run": label,
            "records": n,
            "ok": code == 0,
            "code": code,
            "firstStep": watched.first.get("step"),
            "peakMiB": watched.peak / 2**20,
            "tokens": counts["train"]["tokens"] + counts["validation"]["tokens"] if counts else None,
            "tail": watched.tail() if code != 0 else "",
        }

    for label, processes in (("run-1", 1), ("run-2", 2)):
        if label not in args.runs:
            continue
        base = run(label, processes, small, SMALL)
        big = run(label, processes, data, records)
        if base["ok"] and big["ok"]:
            big["growth"] = big["firstStep"] - base["firstStep"]
            big["rssGrowthMiB"] = big["peakMiB"] - base["peakMiB"]
        rows += [base, big]

    if "preflight" not in args.runs:
        return rows + one_size_signalled(records, work, data, job, args)
    started = Watched(kubetune("preflight", str(job(f"preflight-{records}", data)), "-o", "json"), work, args.timeout)
    code, _ = started.end()
    forget(work, f"preflight-{records}")
    rows.append(
        {
            "run": "preflight",
            "records": records,
            "ok": code == 0,
            "code": code,
            "seconds": time.monotonic() - started.started,
            "peakMiB": started.peak / 2**20,
            "tail": started.tail() if code != 0 else "",
        }
    )

    return rows + one_size_signalled(records, work, data, job, args)


def one_size_signalled(records: int, work: Path, data: Path, job: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The two SIGTERM runs."""
    rows: list[dict[str, Any]] = []
    if "term-prep" in args.runs:
        # SIGTERM while preparing: nothing trained, nothing to checkpoint; ends within the grace as preempted
        name = f"term-prep-{records}"
        watched = Watched(
            kubetune(
                "run", str(job(name, data)), "--processes", "1", "--progress", "json", "--work-dir", str(work / "runs" / name)
            ),
            work,
            args.timeout,
        )
        reached = watched.wait_for("preparing")
        if reached:
            time.sleep(2.0)
            watched.process.send_signal(signal.SIGTERM)
        code, took = watched.end(GRACE if reached else None)
        forget(work, name)
        rows.append(
            {
                "run": "term-prep",
                "records": records,
                "ok": reached and code == EXIT_PREEMPTED,
                "code": code,
                "seconds": took,
                "tail": watched.tail() if code != EXIT_PREEMPTED else "",
            }
        )

    if "term-train" not in args.runs:
        return rows
    # SIGTERM once training has begun: a checkpoint, the preempted code, and the same command resumes from it
    name = f"term-train-{records}"
    manifest_path = job(name, data)
    command = kubetune(
        "run", str(manifest_path), "--processes", "1", "--progress", "json", "--work-dir", str(work / "runs" / name)
    )
    watched = Watched(command, work, args.timeout)
    reached = watched.wait_for("step")
    if reached:
        watched.process.send_signal(signal.SIGTERM)
    code, took = watched.end(GRACE if reached else None)
    checkpoints = sorted(p.name for p in (work / "out" / name / "checkpoints").glob("*/COMPLETE"))
    again = Watched(command, work, args.timeout)
    resumed_code, _ = again.end()
    resumed = "resumed" in again.first
    forget(work, name)
    ok = reached and code == EXIT_PREEMPTED and bool(checkpoints) and resumed_code == 0 and resumed
    rows.append(
        {
            "run": "term-train",
            "records": records,
            "ok": ok,
            "code": code,
            "seconds": took,
            "checkpoint": bool(checkpoints),
            "resumed": resumed and resumed_code == 0,
            "tail": "" if ok else watched.tail() + again.tail(),
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="100000,1000000")
    parser.add_argument("--timeout", type=float, default=3600.0, help="a run still going after this long has hung")
    parser.add_argument("--skip-baselines", action="store_true", help="no floor and TRL sides")
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--runs", default="run-1,run-2,preflight,term-prep,term-train", help="which of the runs")
    args = parser.parse_args()
    scratch = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kubetune-soak-"))
    scratch.mkdir(parents=True, exist_ok=True)
    model = scratch / "model"
    if not (model / "model.safetensors").exists():
        make_model(model)
    small, validation = scratch / f"train-{SMALL}.jsonl", scratch / "validation.jsonl"
    prepare_bench.make_records(small, SMALL)
    prepare_bench.make_records(validation, 200)
    failed = False
    for records in (int(x) for x in args.records.split(",")):
        rows = one_size(records, scratch, model, small, validation, args)
        baselines: dict[str, dict[str, Any]] = {}
        if not args.skip_baselines:
            for side in ("floor", "trl"):
                shutil.rmtree(scratch / side, ignore_errors=True)  # TRL's datasets cache lives there: never a cached side
                baselines[side] = prepare_bench.run_side(side, scratch / f"train-{records}.jsonl", model, scratch / side, records)
                shutil.rmtree(scratch / side, ignore_errors=True)  # its arrays and cache: measured, not kept
        tokens = next((row["tokens"] for row in rows if row.get("tokens") and row["records"] == records), None)
        print(
            f"\n{records:,} chat records ({tokens or 0:,} prepared tokens), {os.cpu_count()} CPUs, through the commands users run"
        )
        for row in rows:
            failed |= not row["ok"]
            line = f"  {row['run']:<11} {row['records']:>10,}  {'ok  ' if row['ok'] else 'FAIL'}  exit {row['code']}"
            if row.get("firstStep") is not None:
                line += f"  first step {row['firstStep']:7.1f} s"
            if "growth" in row:
                line += f" (+{row['growth']:.1f} s over {SMALL} records"
                for side, result in baselines.items():
                    if "seconds" in result:
                        line += f", {row['growth'] / result['seconds']:.2f}x {side}"
                line += ")"
            if "peakMiB" in row:
                line += f"  launcher peak {row['peakMiB']:,.0f} MiB"
            if "rssGrowthMiB" in row and tokens:
                line += f" (+{row['rssGrowthMiB']:,.0f} MiB, {row['rssGrowthMiB'] * 2**20 / tokens:.1f} B/token)"
            if row["run"].startswith("term") or row["run"] == "preflight":
                line += f"  {row['seconds']:.1f} s"
            if row["run"] == "term-train":
                line += f"  checkpoint {'yes' if row['checkpoint'] else 'no'}, resumed {'yes' if row['resumed'] else 'no'}"
            print(line)
            if row.get("tail"):
                print("    " + row["tail"].replace("\n", "\n    "))
        for side, result in baselines.items():
            print(
                f"  {side:<11} {records:>10,}  {result.get('seconds', float('nan')):7.1f} s  peak +{result.get('peakMiB', float('nan')):,.0f} MiB  {result.get('error', '')}"
            )
        sys.stdout.flush()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
