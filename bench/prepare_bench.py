"""Dataset preparation at a real size, side by side in one run on the same generated chat records (`make bench-data`
runs it after the data-path benchmark; alone: `python bench/prepare_bench.py --records 100000`).

  floor     json.loads + the chat template + the fast tokenizer in batches of 1,000 (what any preparation costs)
  kubetune  prepared.prepare: read, render, tokenize on every CPU, loss masks, split, best-fit packing, .npy files
  trl       TRL 1.16's SFTTrainer dataset preparation (datasets' JSON loader, map in batches, packing_strategy="bfd")
  previous  the per-record tokenizer and first-fit packing this replaced (revision --previous-rev), at --previous-records

Each side runs in a fresh process; time and peak RSS above the process's RSS after its imports are printed, with
ratios against the floor and TRL. Then: the time from a prepared dataset to the first batch (it must not grow with
the dataset) and packing alone at 1M and 10M samples against first-fit decreasing at 20k.

The tokenizer is a 32,000-word vocabulary (a word-level fast tokenizer: ids up to 32k as a real tokenizer's) and the
records are chat conversations of about 600 tokens (system, user, assistant), words drawn Zipf-like."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 32_000
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
    words = {
        w: i for i, w in enumerate(specials + [f"w{i}" for i in range(VOCAB - len(specials))] + ["system", "user", "assistant"])
    }
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": len(tok)}))
    return directory


def make_records(path: Path, count: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    with path.open("w") as out:
        for start in range(0, count, 10_000):
            n = min(10_000, count - start)
            lengths = rng.integers(100, 500, size=(n, 2))  # user and assistant words: ~600 tokens a record with markup
            ids = (rng.zipf(1.2, size=int(lengths.sum())) % (VOCAB - 5)).tolist()
            at = 0
            for user, answer in lengths.tolist():
                u = " ".join(f"w{i}" for i in ids[at : at + user])
                a = " ".join(f"w{i}" for i in ids[at + user : at + user + answer])
                at += user + answer
                record = {
                    "messages": [
                        {"role": "system", "content": "w1 w2 w3"},
                        {"role": "user", "content": u},
                        {"role": "assistant", "content": a},
                    ]
                }
                out.write(json.dumps(record) + "\n")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side(name: str, data: Path, tok_dir: Path, work: Path, records: int) -> dict[str, Any]:
    """One side, in this (fresh) process."""
    import transformers

    transformers.logging.set_verbosity_error()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    base = rss_mib()
    started = time.perf_counter()
    tokens = 0
    if name == "floor":
        with data.open() as lines:
            batch: list[str] = []
            for line in lines:
                batch.append(tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False))
                if len(batch) == 1000:
                    tokens += sum(len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"])
                    batch = []
            if batch:
                tokens += sum(len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"])
    elif name in ("kubetune", "previous"):
        from kubetune_api import validate_object
        from kubetune_trainer.data import prepared

        body = {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"uri": str(tok_dir)},
                "dataset": {"train": str(data), "format": "chat", "maxSeqLength": 4096, "validationSplit": 0.01},
                "output": {"uri": str(work / "out")},
            },
        }
        result = validate_object(body)
        assert result.job is not None, result.problems
        if name == "kubetune":
            meta = prepared.prepare(result.job.spec, tokenizer, "llama", data, None, work / "prepared")
            tokens = meta.tokens()
        else:  # the previous revision's path: records -> per-record tokenize -> first-fit packing
            from kubetune_trainer import data as old  # the previous revision's flat module (its PYTHONPATH)

            records_, at, _ = old.read_dataset(data, "train.jsonl")
            samples, counts = old.tokenize(records_, result.job.spec.dataset, tokenizer, "train.jsonl", at)
            rows = old.rows(samples, 4096, True)
            tokens = counts.tokens
            assert len(rows)
    elif name == "trl":
        from datasets import load_dataset
        from transformers import LlamaConfig, LlamaForCausalLM
        from trl import SFTConfig, SFTTrainer

        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
            )
        )
        dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(work / "hf"))
        config = SFTConfig(
            output_dir=str(work / "trl"),
            packing=True,
            packing_strategy="bfd",
            max_length=4096,
            report_to=[],
            dataset_num_proc=os.cpu_count(),
            use_cpu=True,
            bf16=False,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        tokens = int(sum(len(x) for x in trainer.train_dataset["input_ids"]))
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest forked helper, shared pages included
    return {
        "side": name,
        "records": records,
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "peakMiB": round(rss_mib() - base, 1),
        "helperPeakMiB": round(children, 1),
    }


def first_batch(prepared_dir: Path, tok_dir: Path) -> tuple[float, float]:
    """Seconds from a prepared directory to a rank's first collated batch, and the launcher's full check."""
    from transformers import AutoTokenizer

    from kubetune_trainer.data import batching, prepared

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    started = time.perf_counter()
    ready = prepared.load(prepared_dir, len(tokenizer), 4096, full=False)  # as a rank loads it
    batch = batching.global_micro_batches(ready.train, micro=1, world=1, rank=0, multiple=1, seed=0)[0]
    batching.collate(batch, 0)
    rank = time.perf_counter() - started
    started = time.perf_counter()
    prepared.load(prepared_dir, len(tokenizer), 4096)  # the launcher's check of every element, once per worker
    return rank, time.perf_counter() - started


def packing_alone() -> list[str]:
    """Training rows (shuffled best fit) and held-out rows (best fit decreasing) at 1M and 10M samples of about
    500 tokens into rows of 4,096; first fit decreasing (the packer before) where it finishes."""
    import numpy as np

    from kubetune_trainer.data.packing import best_fit_decreasing, first_fit_decreasing, shuffled_best_fit

    rng = np.random.default_rng(0)
    lines = []
    for n in (20_000, 1_000_000, 10_000_000):
        lengths = np.clip(rng.lognormal(6.2, 0.6, size=n).astype(np.int64), 8, 4096)
        line = f"  {n:>10,} samples"
        for name, pack in (
            ("shuffled", lambda lengths=lengths: shuffled_best_fit(lengths, 4096, 0)),
            ("decreasing", lambda lengths=lengths: best_fit_decreasing(lengths, 4096)),
        ):
            started = time.perf_counter()
            _, offsets = pack()
            seconds = time.perf_counter() - started
            fill = lengths.sum() / ((len(offsets) - 1) * 4096)
            line += f"  {name} {seconds:6.2f} s {len(offsets) - 1:>9,} rows fill {fill:.4f}"
        if n == 20_000:
            started = time.perf_counter()
            bins = first_fit_decreasing(lengths.tolist(), 4096)
            line += f"  first-fit {time.perf_counter() - started:6.2f} s {len(bins):,} rows"
        lines.append(line)
    return lines


def run_side(name: str, data: Path, tok_dir: Path, work: Path, records: int, pythonpath: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--side",
            name,
            "--data",
            str(data),
            "--tokenizer",
            str(tok_dir),
            "--work",
            str(work),
            "--records",
            str(records),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        return {"side": name, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--sides", default="floor,kubetune,trl,previous")
    parser.add_argument("--previous-rev", default="f0dbbd5", help="a revision with the per-record path")
    parser.add_argument("--previous-records", type=int, default=20_000, help="the previous path is quadratic: fewer")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, Path(args.data), Path(args.tokenizer), Path(args.work), args.records)))
        return
    with tempfile.TemporaryDirectory(prefix="kubetune-prepare-bench-") as scratch:
        work = Path(scratch)
        tok_dir = make_tokenizer(work / "tokenizer")
        data = work / "train.jsonl"
        started = time.perf_counter()
        make_records(data, args.records)
        print(
            f"{args.records:,} chat records, {data.stat().st_size / 2**20:,.0f} MiB of JSONL, made in {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs"
        )
        results = {}
        for name in args.sides.split(","):
            records, source = args.records, data
            pythonpath = None
            if name == "previous":
                records = min(args.previous_records, args.records)
                source = work / "previous.jsonl"
                with data.open() as full, source.open("w") as part:
                    for _, line in zip(range(records), full, strict=False):
                        part.write(line)
                old = work / "previous-src"
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.previous_rev],
                    capture_output=True,
                    check=True,
                )
                pythonpath = f"{old / 'trainer'}:{old / 'api'}"
            try:
                results[name] = run_side(name, source, tok_dir, work / name, records, pythonpath)
            finally:
                if name == "previous":
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "previous-src")],
                        capture_output=True,
                        check=False,
                    )
            print("  " + json.dumps(results[name]), flush=True)
        print("\npreparation, side by side")
        for name, r in results.items():
            if "error" in r:
                print(f"  {name:<9} failed: {r['error']}")
                continue
            per_token = r["peakMiB"] * 2**20 / max(r["tokens"], 1)
            line = f"  {name:<9} {r['records']:>9,} records  {r['seconds']:8.1f} s  {r['records'] / r['seconds']:>9,.0f} records/s  peak +{r['peakMiB']:8.0f} MiB ({per_token:5.1f} B/token)"
            for other in ("floor", "trl"):
                o = results.get(other, {})
                if other != name and "seconds" in o and o["records"] == r["records"]:
                    line += f"  {r['seconds'] / o['seconds']:.2f}x {other}"
            print(line)
        if "kubetune" in results and "seconds" in results["kubetune"]:
            small = work / "small"
            small.mkdir()
            part = small / "train.jsonl"
            with data.open() as full, part.open("w") as out:
                for _, line in zip(range(1000), full, strict=False):
                    out.write(line)
            run_side("kubetune", part, tok_dir, small, 1000)
            print("\nfirst batch from a prepared dataset")
            for label, directory in (
                ("1,000 records", small / "prepared"),
                (f"{args.records:,} records", work / "kubetune" / "prepared"),
            ):
                rank, check = first_batch(directory, tok_dir)
                print(f"  {label:>17}: first batch in a rank {rank:.3f} s; the launcher's check of every element {check:.2f} s")
        print("\npacking alone (4,096-token rows, lengths log-normal around 500)")
        print("\n".join(packing_alone()))


if __name__ == "__main__":
    main()
