"""What a job leaves under output.uri, named once for the trainer that writes it, the preflight and the launcher that
check it, and the operator and CLI that point at it.

  _SUCCESS        written last, when everything else is in place
  adapter/        the chosen adapter (PEFT layout)
  metrics.json    held-out metrics of the base model and the adapter, the history
  manifest.json   what the adapter was made from
  curves.svg      training and held-out loss by step
  samples.jsonl   with spec.evaluation.tasks: items with both models' answers and grades
  merged/         with output.merged: the base model with the adapter folded in
  checkpoints/    step-NNNNNN/ with COMPLETE written last, and best/
  prepared/       <digest>/: the prepared dataset (the preflight's), content-addressed, kept across runs
"""

from __future__ import annotations

SUCCESS = "_SUCCESS"
ADAPTER = "adapter"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
CURVES = "curves.svg"
SAMPLES = "samples.jsonl"  # spec.evaluation.tasks: items with the base model's and the adapter's answers and grades
MERGED = "merged"
CHECKPOINTS = "checkpoints"
PREPARED = "prepared"

# what one run writes, in the order an overwrite clears it: _SUCCESS first, so an interrupted clean-up never leaves
# a half-deleted output that still says it is finished. prepared/ is not a run's: its digest names what it holds.
RUN_FILES = (SUCCESS, METRICS, MANIFEST, CURVES, SAMPLES)
RUN_PREFIXES = (ADAPTER, MERGED, CHECKPOINTS)


def under(output_uri: str, part: str) -> str:
    """A part's URI (a prefix for the folders, ending in '/')."""
    base = output_uri.rstrip("/") + "/" + part
    return base + "/" if part in (*RUN_PREFIXES, PREPARED) else base


def adapter_uri(output_uri: str) -> str:
    """Where the finished adapter is: the status's adapterUri and the summary's."""
    return under(output_uri, ADAPTER)


def checkpoint_tag(step: int) -> str:
    """A checkpoint's folder under checkpoints/."""
    return f"step-{step:06d}"


def checkpoint_uri(output_uri: str, step: int) -> str:
    """Where the checkpoint of a step is (the status's lastCheckpoint.uri)."""
    return under(output_uri, CHECKPOINTS) + checkpoint_tag(step) + "/"
