"""The README's main job: `kubetune run examples/quickstart.yaml`, exactly as shipped, and its assets are fresh."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

QUICKSTART = ROOT / "examples" / "quickstart"


def test_quickstart_assets_regenerate_identically(tmp_path: Path) -> None:
    from kubetune_trainer.tiny import write_quickstart

    write_quickstart(tmp_path)
    shipped = sorted(p.relative_to(QUICKSTART) for p in QUICKSTART.rglob("*") if p.is_file())
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for relative in shipped:
        assert (QUICKSTART / relative).read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run `make generate`"
        )


def run_example(name: str, tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`kubetune run examples/NAME` as shipped, from a copy of examples/ (its model and data beside it)."""
    if not (tmp_path / "examples" / "quickstart").is_dir():
        shutil.copytree(QUICKSTART, tmp_path / "examples" / "quickstart")
    shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    return subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "run", f"examples/{name}", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.trainer
def test_quickstart_runs_to_completion_twice(tmp_path: Path) -> None:
    for options in ((), ("--progress", "bar")):  # the second starts afresh (output.overwrite), as at a terminal
        result = run_example("quickstart.yaml", tmp_path, *options)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "held-out            base      adapter" in result.stdout
        base, adapter = (
            float(x) for x in next(line for line in result.stdout.splitlines() if line.startswith("loss")).split()[1:]
        )
        assert adapter < base
        assert (tmp_path / "out" / "quickstart" / "adapter" / "adapter_model.safetensors").is_file()
        assert (tmp_path / "out" / "quickstart" / "_SUCCESS").is_file()
        # its task (spec.evaluation.tasks): what it answers moved from the base model's towards the references
        assert "task (grader)                    base      adapter   items" in result.stdout
        chrf = next(line for line in result.stdout.splitlines() if line.startswith("answers (chrf)")).split()
        assert float(chrf[4]) > float(chrf[2]), chrf  # adapter against base, each followed by its standard error
        samples = (tmp_path / "out" / "quickstart" / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 8 and all(json.loads(line)["task"] == "answers" for line in samples)
        # the curves, for a person: a sparkline at the end and a picture beside the adapter
        spark = next(line for line in result.stdout.splitlines() if line.startswith("training loss"))
        assert len(set(spark.split()[-1]) - set("▁▂▃▄▅▆▇█")) == 0 and len(spark.split()[-1]) > 5
        picture = (tmp_path / "out" / "quickstart" / "curves.svg").read_text()
        assert picture.startswith("<svg") and picture.count("<polyline") == 2
    # at a terminal: words for each event, one table of timings, no JSON, no library chatter (that is in the log)
    shown = [line.strip() for line in result.stdout.replace("\r", "\n").splitlines()]
    assert not [line for line in shown if line.startswith("{")], result.stdout[-3000:]
    assert any(line.startswith("data prepared: 1,080 records") for line in shown)
    assert "held-out at base model: loss 5.5523, token accuracy 0.0012" in shown
    assert "checkpoint saved at step 20: ./out/quickstart/checkpoints/step-000020" in shown
    assert "time by phase:" in shown and any(line.startswith("training steps ") for line in shown)
    assert "built successfully" not in result.stdout
    assert "built successfully" in (tmp_path / ".kubetune" / "quickstart" / "trainer.log").read_text()


@pytest.mark.trainer
def test_dpo_quickstart_raises_the_preference_accuracy(tmp_path: Path) -> None:
    """`kubetune run examples/dpo-quickstart.yaml` as shipped: the held-out preference accuracy before and after."""
    result = run_example("dpo-quickstart.yaml", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("pref. accuracy"))
    base, adapter = (float(x) for x in line.split()[2:])
    assert base == 0.5 and adapter >= 0.9  # output.minPreferenceAccuracy: 0.9 wrote _SUCCESS
    assert (tmp_path / "out" / "dpo-quickstart" / "_SUCCESS").is_file()
