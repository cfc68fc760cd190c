"""`kubetune operator`: the Kopf operator with JSON logs, a liveness endpoint, metrics and optional peering."""

from __future__ import annotations

import logging

import kopf

from .settings import Settings


def run(verbose: bool = False) -> None:
    settings = Settings.from_environ()
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_refkey="object", log_prefix=False)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        standalone=not settings.peering,
        peering_name=settings.peering or None,
    )
