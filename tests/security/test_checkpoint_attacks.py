"""Checkpoints are untrusted input: whoever can write under a job's output prefix must not get code run in its pods
(nothing is unpickled: DeepSpeed's states load weights-only with an allow-list, the RNG state is JSON and
safetensors), and a checkpoint another job or spec wrote is never continued silently."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from ..s3server import S3Server
from ..trainer_helpers import manifest, run

pytestmark = pytest.mark.trainer


class Payload:
    """What an attacker leaves in a checkpoint: unpickling it runs a command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def spec(stored: dict[str, str], out: str, **lora: Any) -> dict[str, Any]:
    return {
        "model": {"uri": stored["model"]},
        "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128},
        "lora": {"r": 4, "alpha": 8, **lora},
        "training": {"maxSteps": 4, "microBatchSize": 4, "evalEverySteps": 0, "checkpointEverySteps": 2},
        "output": {"uri": out},
    }


def copy_prefix(s3: S3Server, source: str, target: str) -> None:
    client = s3.client()
    for key in s3.keys(source):
        if key.startswith("checkpoints/"):
            body = s3.get(source + key)
            bucket, _, prefix = target[len("s3://") :].partition("/")
            client.put_object(Bucket=bucket, Key=prefix + key, Body=body)


@pytest.fixture(scope="module")
def finished(s3: S3Server, stored: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    out = "s3://adapters/ckpt-source/"
    s3.bucket("adapters")
    outcome = run(manifest("ckpt-source", s3, spec(stored, out)), s3, tmp_path_factory.mktemp("source"))
    assert outcome.returncode == 0, outcome.stdout[-2000:] + outcome.stderr[-2000:]
    assert any(k.endswith("/COMPLETE") for k in s3.keys(out + "checkpoints/"))
    return out


def test_a_checkpoint_written_for_another_spec_is_not_resumed(
    s3: S3Server, stored: dict[str, str], finished: str, tmp_path: Path
) -> None:
    out = "s3://adapters/ckpt-foreign/"
    copy_prefix(s3, finished, out)  # someone else's checkpoints appear under this job's prefix
    outcome = run(manifest("ckpt-foreign", s3, spec(stored, out, r=8)), s3, tmp_path)
    assert outcome.returncode == 1
    assert outcome.summary["reason"] == "CheckpointMismatch", outcome.summary
    assert "was written for another spec" in outcome.summary["message"]
    assert not outcome.of("resumed") and not outcome.of("progress")


def test_a_pickle_planted_in_a_checkpoint_never_runs(s3: S3Server, stored: dict[str, str], finished: str, tmp_path: Path) -> None:
    from kubetune_api.validate import validate_object
    from kubetune_trainer.recipe import checkpoint

    out = "s3://adapters/ckpt-planted/"
    body = manifest("ckpt-planted", s3, spec(stored, out))
    copy_prefix(s3, finished, out)
    newest = sorted({k.split("/")[0] for k in s3.keys(out + "checkpoints/")})[-1]
    marker = tmp_path / "pwned"
    bucket, _, prefix = out[len("s3://") :].partition("/")
    client = s3.client()
    # the attacker knows the spec, so the record names this job: only the pickle stands between it and the pod
    job = validate_object(body).job
    assert job is not None
    record = {"step": int(newest.split("-")[1]), "worldSize": 2, **checkpoint.identity(job.spec, "").model_dump()}
    client.put_object(Bucket=bucket, Key=f"{prefix}checkpoints/{newest}/COMPLETE", Body=json.dumps(record).encode())
    client.put_object(
        Bucket=bucket,
        Key=f"{prefix}checkpoints/{newest}/mp_rank_00_model_states.pt",
        Body=pickle.dumps({"module": Payload(str(marker))}),
    )
    outcome = run(body, s3, tmp_path)
    assert not marker.exists(), "the planted pickle ran"
    assert outcome.returncode == 1
    assert outcome.summary["reason"] == "CheckpointMismatch", outcome.summary
    assert "holds objects other than tensors" in outcome.summary["message"]
