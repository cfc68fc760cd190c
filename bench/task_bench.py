"""Task evaluation's generation speed (not a test): the answers of spec.evaluation.tasks generated batched with a KV
cache and left padding (kubetune_trainer.recipe.answers, BATCH prompts at a time) side by side with one prompt at a
time, for the base model and for an adapter, on the quickstart's held-out prompts: items and new tokens per second,
and the ratio. Both sides must give the same answers (greedy): the bench fails if they do not.

  .venv/bin/python bench/task_bench.py [--items 120] [--new-tokens 32] [--device cpu]

The model is the quickstart's tiny Llama (examples/quickstart/tiny-llama), its adapter a LoRA with random B so that
it changes the answers; on a GPU machine pass --device cuda (and a real model with --model DIR)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=str(ROOT / "examples" / "quickstart" / "tiny-llama"))
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_api.evaluation import GenerationSpec
    from kubetune_trainer.recipe import answers

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)).eval()
    records = [json.loads(line) for line in (ROOT / "examples" / "quickstart" / "train.jsonl").read_text().splitlines()]
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in records[-args.items :]]
    gen = GenerationSpec(maxNewTokens=args.new_tokens)
    print(f"{len(prompts)} prompts, up to {args.new_tokens} new tokens each, greedy, {args.device}, batch {answers.BATCH}")
    print(f"{'model':<9}{'side':<16}{'seconds':>9}{'items/s':>10}{'tokens/s':>10}")
    for name in ("base", "adapter"):
        runs = {}
        for side, size in (("one at a time", 1), ("batched", answers.BATCH)):
            with answers.generating(model), model.disable_adapter() if name == "base" else torch.no_grad():
                started = time.perf_counter()
                said, tokens = [], 0
                for start in range(0, len(prompts), size):
                    got, produced = answers.generate(model, tokenizer, prompts[start : start + size], gen, args.device, False)
                    said += got
                    tokens += sum(produced)
                seconds = time.perf_counter() - started
            runs[side] = (said, seconds)
            print(f"{name:<9}{side:<16}{seconds:>9.2f}{len(prompts) / seconds:>10.1f}{tokens / seconds:>10.0f}")
        if runs["batched"][0] != runs["one at a time"][0]:
            print(f"{name}: batched answers differ from one-at-a-time answers", file=sys.stderr)
            return 1
        ratio = runs["one at a time"][1] / runs["batched"][1]
        print(f"{name:<9}batched / one at a time: {ratio:.2f}x the items per second, the same answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
