"""spec.output: where the adapter, metrics and checkpoints go."""

from __future__ import annotations

from pydantic import Field, StrictBool

from ._base import Section
from ._types import OutputUri


class OutputSpec(Section):
    """Where results are written: checkpoints/, adapter/, metrics.json, manifest.json and _SUCCESS last."""

    uri: OutputUri = Field(description="s3://bucket/prefix/ (or, for kubetune run only, a local path).")
    overwrite: StrictBool = Field(
        False, description="Replace a finished output (one with _SUCCESS). Off: a finished output is never overwritten."
    )
