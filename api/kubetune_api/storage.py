"""spec.storage: the S3-compatible endpoint and where the pods' credentials come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictStr

from ._base import Section
from ._types import DnsSubdomain, Endpoint


class StorageSpec(Section):
    """Object storage for model, data, checkpoints and adapter. Credentials never appear here, only a Secret's name."""

    endpoint: Endpoint | None = Field(
        None,
        description="S3-compatible endpoint URL, http(s)://host[:port], with no path, user:password@, query or "
        "fragment (credentials come from credentialsSecret); empty means AWS S3. The platform policy lists the "
        "endpoints a tenant may name.",
    )
    region: StrictStr | None = Field(None, max_length=64, pattern=r"^[a-z0-9-]+$", description="Region, e.g. us-east-1.")
    credentialsSecret: DnsSubdomain | None = Field(
        None,
        description="Secret in the job's namespace with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_SESSION_TOKEN). Empty: use serviceAccountName (IRSA) or the node's role.",
    )
    serviceAccountName: DnsSubdomain | None = Field(
        None, description="Service account for the trainer pods, e.g. one bound to an IAM role (IRSA)."
    )
    addressingStyle: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 addressing style: auto, path (MinIO, Ceph) or virtual."
    )
    verifyTls: StrictBool = Field(True, description="Verify the endpoint's TLS certificate.")
