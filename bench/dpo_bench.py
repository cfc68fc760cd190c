"""DPO benchmark (not a test): preference tuning side by side with SFT on the same data.

  .venv/bin/python bench/dpo_bench.py [--processes 1] [--epochs 1]         (or: make bench-dpo)

Both jobs run through `kubetune run` on the shipped tiny model (examples/quickstart/tiny-llama) with
examples/dpo-quickstart.yaml's pairs, split and settings: DPO on the pairs (the baseline for its quality is the
same pairs before training: held-out preference accuracy 0.5, a tie on every pair), SFT on each pair's prompt and
chosen response as prompt-completion (the baseline for speed: one sequence a pair, no reference pass). Prints the
held-out preference accuracy and DPO loss before and after, SFT's held-out loss before and after, and the time a
step takes in each, with DPO's over SFT's (a DPO step forwards two sequences a pair twice, once without gradients
for the reference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.trainer_helpers import command  # noqa: E402

from kubetune_api.job import FineTuneJobSpec  # noqa: E402

EXAMPLE = ROOT / "examples" / "dpo-quickstart.yaml"


def run(body: dict[str, Any], work: Path, processes: int) -> dict[str, Any]:
    done = subprocess.run(command(body, work, processes), cwd=ROOT, capture_output=True, text=True, check=False)
    found: dict[str, Any] = {"steps": 0.0}
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") == "summary":
            found["summary"] = event
        elif event.get("event") == "timing" and event.get("phase") == "training steps":
            found["steps"] = event["seconds"]
    if found.get("summary", {}).get("status") != "Succeeded":
        raise SystemExit(f"{body['metadata']['name']} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    import yaml

    example = FineTuneJobSpec.model_validate(yaml.safe_load(EXAMPLE.read_text())["spec"])
    with tempfile.TemporaryDirectory(prefix="kubetune-dpo-bench-") as scratch:
        work = Path(scratch)
        pairs = [json.loads(line) for line in (ROOT / example.dataset.train).read_text().splitlines()]
        sft_data = work / "sft.jsonl"
        sft_data.write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs))
        spec = example.model_dump(mode="json", exclude_none=True)
        spec["model"]["uri"] = str(ROOT / example.model.uri)
        spec["dataset"]["train"] = str(ROOT / example.dataset.train)
        spec["training"] |= {"epochs": args.epochs, "checkpointEverySteps": 0}
        spec["workers"]["replicas"] = args.processes
        spec["output"] = {"uri": str(work / "dpo-out"), "overwrite": True}
        dpo = run(
            {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "dpo"}, "spec": spec},
            work,
            args.processes,
        )
        sft_spec = {**spec, "method": {"type": "sft"}}
        sft_spec["dataset"] = {**spec["dataset"], "train": str(sft_data), "format": "prompt-completion"}
        sft_spec["output"] = {"uri": str(work / "sft-out"), "overwrite": True}
        sft = run(
            {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "sft"}, "spec": sft_spec},
            work,
            args.processes,
        )
    d, s = dpo["summary"], sft["summary"]
    dm, sm = d["metrics"], s["metrics"]
    d_step, s_step = dpo["steps"] / d["steps"], sft["steps"] / s["steps"]
    trained = len(pairs) * (1 - (example.dataset.validationSplit or 0.0)) * args.epochs  # pairs (examples) trained
    d_pair, s_pair = dpo["steps"] / trained, sft["steps"] / trained
    print(
        f"side by side, {args.processes} process(es), {len(pairs)} pairs ({args.epochs} epoch), DPO {d['steps']} steps, SFT {s['steps']}"
    )
    print(f"{'':28}{'before':>10}{'after':>10}")
    print(f"{'DPO preference accuracy':28}{dm['basePreferenceAccuracy']:>10.3f}{dm['preferenceAccuracy']:>10.3f}")
    print(f"{'DPO held-out loss':28}{dm['baseEvalLoss']:>10.4f}{dm['evalLoss']:>10.4f}")
    print(f"{'SFT held-out loss':28}{sm['baseEvalLoss']:>10.4f}{sm['evalLoss']:>10.4f}")
    print(f"step time: DPO {d_step * 1000:.1f} ms, SFT {s_step * 1000:.1f} ms, DPO/SFT {d_step / s_step:.2f}x")
    print(
        f"time per pair trained: DPO {d_pair * 1000:.2f} ms, SFT (one example) {s_pair * 1000:.2f} ms, DPO/SFT {d_pair / s_pair:.2f}x"
    )


if __name__ == "__main__":
    main()
