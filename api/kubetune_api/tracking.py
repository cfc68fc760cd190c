"""spec.output.tracking: the run in the platform's MLflow (its server is the chart's, its credentials a Secret's;
neither is ever in a spec) and the model version a succeeded job registers."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, StrictStr

from ._base import Section

Name = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/ -]*$")]


class TrackingSpec(Section):
    """Experiment tracking and registration in the MLflow server the platform configured (the chart's
    tracking.mlflow; kubetune run: MLFLOW_TRACKING_URI). Without one nothing is tracked."""

    enabled: StrictBool = Field(True, description="Track this job's run: parameters, live curves, metrics, lineage.")
    experiment: Name | None = Field(
        None,
        description="MLflow experiment; empty: the job's namespace (kubetune run: kubetune). On a cluster it is "
        "<namespace>/<experiment> unless the platform policy shares names (sharedTrackingNames).",
    )
    registerModel: StrictBool = Field(
        True,
        description="On success (and output.minImprovement passed, when set), register the adapter as a model version.",
    )
    registeredModel: Name | None = Field(
        None,
        description="Registered model name; empty: the job's name. On a cluster it is <namespace>.<name> unless the "
        "platform policy shares names (sharedTrackingNames).",
    )


def tracking_names(settings: TrackingSpec | None, namespace: str, job_name: str, shared: bool = False) -> tuple[str, str]:
    """The MLflow experiment and registered model a job uses. MLflow's names are global: on a cluster each is bound to
    the job's namespace (experiment `<namespace>/<experiment>`, model `<namespace>.<name>`; a namespace has neither
    `/` nor `.`), so one team's job can never add a run or a model version to another team's, unless the platform
    policy's sharedTrackingNames lets names stand as written. `kubetune run` (no namespace): as written."""
    experiment = (settings.experiment if settings else None) or ""
    model = (settings.registeredModel if settings else None) or job_name or "kubetune"
    if not namespace:
        return experiment or "kubetune", model
    if shared:
        return experiment or namespace, model
    if experiment and experiment != namespace and not experiment.startswith(f"{namespace}/"):
        experiment = f"{namespace}/{experiment}"
    if not model.startswith(f"{namespace}."):
        model = f"{namespace}.{model}"
    return experiment or namespace, model
