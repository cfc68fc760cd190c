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
    experiment: Name | None = Field(None, description="MLflow experiment; empty: the job's namespace (kubetune run: kubetune).")
    registerModel: StrictBool = Field(
        True,
        description="On success (and output.minImprovement passed, when set), register the adapter as a model version.",
    )
    registeredModel: Name | None = Field(None, description="Registered model name; empty: the job's name.")
