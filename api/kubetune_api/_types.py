"""Constrained string types shared by the spec sections (URIs, Kubernetes names, quantities)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, PlainValidator, StrictStr, WithJsonSchema

S3_URI = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
LOCAL_PATH = r"(/|\./|\.\./)[^\s]*"
HUB_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
DATA_FILE = r"[^\s]*\.(jsonl|json|parquet)(\.gz|\.zst)?"

MODEL_URI_PATTERN = rf"^({S3_URI}|{LOCAL_PATH}|{HUB_ID})$"
DATA_SHARDS = r"([^\s]*/)?"  # a prefix or directory (ending in /) of data files, read in key order
DATA_URI_PATTERN = (
    rf"^(s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]/({DATA_FILE}|{DATA_SHARDS})|(/|\./|\.\./)({DATA_FILE}|{DATA_SHARDS}))$"
)
OUTPUT_URI_PATTERN = rf"^({S3_URI}|{LOCAL_PATH})$"
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
ENDPOINT_PATTERN = r"^https?://[^\s/@?#]+/?$"


def s3_cel(expr: str) -> str:
    """CEL: expr is an s3:// URI without . or .. segments (a cluster job's storage; local paths are kubetune run's)."""
    return (
        f"{expr}.startsWith('s3://') && !{expr}.contains('/./') && !{expr}.contains('/../') && "
        f"!{expr}.endsWith('/.') && !{expr}.endsWith('/..')"
    )


def is_s3(uri: str) -> bool:
    """Python twin of s3_cel."""
    return uri.startswith("s3://") and not any(part in (".", "..") for part in uri[5:].split("/"))


def _matcher(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check)


ModelUri = Annotated[
    StrictStr,
    Field(json_schema_extra={"pattern": MODEL_URI_PATTERN}, min_length=1, max_length=1024),
    _matcher(MODEL_URI_PATTERN, "s3://bucket/prefix/, an absolute or ./relative path, or a hub id like org/name"),
]
DataUri = Annotated[
    StrictStr,
    Field(json_schema_extra={"pattern": DATA_URI_PATTERN}, min_length=1, max_length=1024),
    _matcher(
        DATA_URI_PATTERN,
        "s3://bucket/key (bucket: 3 to 63 lowercase letters, digits, dots or dashes) or an absolute or ./relative path, "
        "ending in .jsonl, .json or .parquet (optionally .gz or .zst), or a prefix or directory of such files ending in /",
    ),
]
OutputUri = Annotated[
    StrictStr,
    Field(json_schema_extra={"pattern": OUTPUT_URI_PATTERN}, min_length=1, max_length=1024),
    _matcher(
        OUTPUT_URI_PATTERN,
        "s3://bucket/prefix/ (bucket: 3 to 63 lowercase letters, digits, dots or dashes) or an absolute or ./relative path",
    ),
]
DnsSubdomain = Annotated[
    StrictStr,
    Field(json_schema_extra={"pattern": DNS_SUBDOMAIN_PATTERN}, min_length=1, max_length=253),
    _matcher(DNS_SUBDOMAIN_PATTERN, "a Kubernetes object name: lowercase letters, digits, '-' and '.'"),
]
Endpoint = Annotated[
    StrictStr,
    Field(json_schema_extra={"pattern": ENDPOINT_PATTERN}, min_length=1, max_length=1024),
    _matcher(
        ENDPOINT_PATTERN,
        "http(s)://host[:port] with no path (it would retarget buckets and keys), user:password@, query or fragment "
        "(credentials come from credentialsSecret)",
    ),
]
EnvName = Annotated[
    StrictStr,
    Field(json_schema_extra={"pattern": ENV_NAME_PATTERN}, min_length=1, max_length=253),
    _matcher(ENV_NAME_PATTERN, "an environment variable name: letters, digits, '_', '.' or '-', not starting with a digit"),
]


def _quantity(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 64 and re.match(QUANTITY_PATTERN, value):
        return value
    raise ValueError("must be a Kubernetes quantity such as 8, '500m' or '16Gi' (quote fractions: '0.5')")


# One validator rather than an int|str union, so an error has one path and one message.
Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN, "maxLength": 64}),
]
NON_NEGATIVE_QUANTITY_PATTERN = r"^\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$"


def _non_negative_quantity(value: object) -> int | str:
    checked = _quantity(value)
    if (isinstance(checked, int) and checked < 0) or (isinstance(checked, str) and checked.startswith("-")):
        raise ValueError("must be a quantity of at least 0, such as 8, '500m' or '16Gi'")
    return checked


NonNegativeQuantity = Annotated[
    int | str,
    PlainValidator(_non_negative_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": NON_NEGATIVE_QUANTITY_PATTERN, "maxLength": 64, "minimum": 0}),
]


_SUFFIX = {
    "": 1,
    "n": 10**-9,
    "u": 10**-6,
    "m": 10**-3,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_value(value: int | str) -> float:
    """A Kubernetes quantity as a number: '16Gi' -> 17179869184, '500m' -> 0.5."""
    if isinstance(value, int):
        return float(value)
    match = re.match(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([KMGTPE]i|[numkMGTPE])?$", value)
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2) or ""]
