"""The trainer config file: the resolved spec as YAML, read with the same validation as everywhere else."""

from __future__ import annotations

from pathlib import Path

from kubetune_api.conditions import Reason
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.manifests import ManifestError, dump, load
from kubetune_api.validate import problems_from
from kubetune_trainer.errors import TrainerFailure


def dump_spec(spec: FineTuneJobSpec) -> str:
    return dump(spec.model_dump(mode="json"))


def load_spec(path: Path) -> FineTuneJobSpec:
    from pydantic import ValidationError

    try:
        documents = load(path.read_bytes())
        return FineTuneJobSpec.model_validate(documents[0].body if documents else None)
    except (OSError, ManifestError) as exc:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"cannot read the trainer config {path}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"spec.{p}" for p in problems_from(exc))
        raise TrainerFailure(Reason.TRAINER_ERROR, f"invalid trainer config {path}: {problems}") from exc
