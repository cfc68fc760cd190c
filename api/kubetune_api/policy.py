"""The platform policy: what tenants may choose in a FineTuneJob on a shared cluster.

The platform team writes it once (the chart's `policy` values, or a file for `kubetune validate --policy`). The
same rules, with the same words, are checked in three places: offline (`kubetune validate --policy FILE`), by the
API server itself at admission (a ValidatingAdmissionPolicy whose parameters are the policy, rendered from
`admission_policy()` into the chart), and by the operator at every reconcile (defence in depth: a job stored before
the policy changed fails with `PolicyDenied`).

Lists hold exact names, or `*` for any. Prefixes may contain `{namespace}`, replaced by the job's namespace, so
one line gives every tenant a prefix of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ._types import HUB_ID, is_s3
from .manifests import ManifestError, load
from .names import QUEUE_LABEL
from .validate import Problem, show

Entry = StrictStr  # one list entry: no commas (the admission policy's parameters are comma-separated)


class Policy(BaseModel):
    """What tenants may choose. The defaults allow nothing beyond the operator's own choices, except credential
    Secrets in the job's own namespace and any storage prefix."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    images: list[Entry] = Field(
        default_factory=list,
        description="Prefixes workers.image may start with (e.g. registry.example.com/kubetune/). Empty: workers.image "
        "must be left unset, so every job runs the operator's trainer image.",
    )
    serviceAccounts: list[Entry] = Field(
        default_factory=list, description="Names storage.serviceAccountName may take (and with it a cloud IAM role)."
    )
    credentialSecrets: list[Entry] = Field(
        default_factory=list, description="Names storage.credentialsSecret may take; '*': any Secret. Empty: none."
    )
    endpoints: list[Entry] = Field(
        default_factory=list,
        description="URLs storage.endpoint may take, exactly (e.g. https://s3.example.com); '*': any. Empty: "
        "storage.endpoint must be left unset (the SDK's default, AWS S3).",
    )
    priorityClasses: list[Entry] = Field(default_factory=list, description="Names workers.priorityClassName may take.")
    nodeSelectorKeys: list[Entry] = Field(default_factory=list, description="Label keys workers.nodeSelector may use.")
    tolerationKeys: list[Entry] = Field(
        default_factory=list,
        description="Taint keys workers.tolerations may name; a toleration without a key (tolerating every taint) is "
        "never allowed.",
    )
    gpuResourceNames: list[Entry] = Field(
        default_factory=lambda: ["nvidia.com/gpu"],
        description="Extended resources workers.gpuResourceName may name: what GPUs are counted (maxGpusPerJob, the "
        "ledger) and billed as.",
    )
    readPrefixes: list[Entry] = Field(
        default_factory=list,
        description="Prefixes model.uri, model.adapter and the dataset URIs must start with ({namespace} is the job's "
        "namespace). Empty: any.",
    )
    writePrefixes: list[Entry] = Field(
        default_factory=list,
        description="Prefixes output.uri must start with ({namespace} is the job's namespace). Empty: any.",
    )
    allowTrustRemoteCode: StrictBool = Field(False, description="Whether model.trustRemoteCode may be true.")
    allowHubModels: StrictBool = Field(
        False, description="Whether model.uri may be a hub id (downloaded from a model hub) rather than s3://."
    )
    requireCredentialSource: StrictBool = Field(
        False,
        description="Whether every job must name storage.credentialsSecret or storage.serviceAccountName (never the "
        "node's own role).",
    )
    maxGpusPerJob: StrictInt = Field(
        0, ge=0, description="Most GPUs one job may request (replicas x gpusPerWorker); 0: no limit."
    )
    requirePreflight: StrictBool = Field(
        False, description="Whether every job must run the preflight before it requests GPUs (runPolicy.preflight true)."
    )
    servingServiceAccount: StrictStr = Field(
        "",
        max_length=253,
        description="The service account `kubetune serve` puts on the LLMInferenceService (read access to adapters); "
        "never the training one, which may write. Empty: the namespace's default.",
    )
    sharedTrackingNames: StrictBool = Field(
        False,
        description="Whether output.tracking's experiment and registeredModel stand as written (MLflow's names are "
        "global: any team may then add to any experiment or registered model its MLflow credentials reach). Off: "
        "each is bound to the job's namespace (<namespace>/<experiment>, <namespace>.<model>).",
    )
    requireQueue: StrictBool = Field(
        False,
        description=f"Whether every job must name a Kueue LocalQueue (the {QUEUE_LABEL} label), so none runs outside the "
        "platform's quotas.",
    )

    def params(self) -> dict[str, str]:
        """The policy as the admission policy's parameter object (a ConfigMap's data: strings only)."""
        out = {name: ",".join(getattr(self, name)) for name in LISTS}
        for flag in FLAGS:
            out[flag] = "true" if getattr(self, flag) else "false"
        out["maxGpusPerJob"] = str(self.maxGpusPerJob)
        return out


FLAGS = ("allowTrustRemoteCode", "allowHubModels", "requireCredentialSource", "requirePreflight", "requireQueue")
LISTS = (
    "images",
    "serviceAccounts",
    "credentialSecrets",
    "endpoints",
    "priorityClasses",
    "nodeSelectorKeys",
    "tolerationKeys",
    "gpuResourceNames",
    "readPrefixes",
    "writePrefixes",
)


class PolicyError(ValueError):
    """The policy file itself is wrong."""


def load_policy(path: Path) -> Policy:
    try:
        documents = load(path.read_bytes())
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror or exc}") from exc
    except ManifestError as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    data = documents[0].body if documents else {}
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):  # the chart's values file: its `policy` key
        data = {k: v for k, v in data["policy"].items() if k != "enforce"}
    try:
        policy = Policy.model_validate(data or {})
    except ValueError as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    for name in LISTS:
        for entry in getattr(policy, name):
            if not entry or "," in entry or entry != entry.strip():
                raise PolicyError(f"{path}: {name}: entries must be non-empty, without commas or spaces (got {entry!r})")
            if entry != "*" and name in ENDINGS and not entry.endswith(ENDINGS[name]):
                raise PolicyError(f"{path}: {name}: {ENDING_WORDS[name]} (got {entry!r})")
            if name in ("readPrefixes", "writePrefixes") and entry != "*" and not is_s3(entry.replace("{namespace}", "ns")):
                raise PolicyError(f"{path}: {name}: a prefix is s3://bucket/.../ without . or .. segments (got {entry!r})")
    return policy


# A prefix matches whole path segments: s3://datasets/team/ does not cover s3://datasets/team-b/, and an image prefix
# ends where a registry path, tag or digest does (registry.corp/kubetune/ never covers registry.corp/kubetune-evil/).
ENDINGS = {"readPrefixes": "/", "writePrefixes": "/", "images": ("/", ":", "@")}
ENDING_WORDS = {
    "readPrefixes": "a prefix ends with / (whole path segments)",
    "writePrefixes": "a prefix ends with / (whole path segments)",
    "images": "an image prefix ends with /, : or @ (a whole repository path, a tag or a digest)",
}


def _allowed(entries: list[str], value: str) -> bool:
    return "*" in entries or value in entries


def _under(prefixes: list[str], uri: str, namespace: str) -> bool:
    return not prefixes or any(uri.startswith(p.replace("{namespace}", namespace)) for p in prefixes)


def _listing(entries: list[str], namespace: str = "") -> str:
    return ", ".join(e.replace("{namespace}", namespace) for e in entries) if entries else "none"


@dataclass(frozen=True)
class PolicyRule:
    """One policy rule: its check in Python and in CEL (for the ValidatingAdmissionPolicy), with one message."""

    field: str  # the field path reported
    text: str  # the message, before ": <allowed>" and " (got ...)"
    allowed: str  # the policy list shown after the message, or "" for none
    check: Callable[[Any, str, Policy], bool]  # (spec, namespace, policy) -> allowed?
    got: Callable[[Any], Any]  # the value given, as shown after the message
    cel: str  # true when allowed; `object`, `params.data` and `namespace` as in a ValidatingAdmissionPolicy
    cel_got: str  # CEL string for the value given

    def message(self, spec: Any, namespace: str, policy: Policy) -> str:
        allowed = ""
        if self.allowed in LISTS:
            allowed = f": {_listing(getattr(policy, self.allowed), namespace)}"
        elif self.allowed:
            allowed = f": {getattr(policy, self.allowed)}"
        return f"{self.text}{allowed} (got {show(self.got(spec))})"

    def cel_message(self) -> str:
        allowed = ""
        if self.allowed and self.allowed not in LISTS:
            allowed = f"': ' + params.data.{self.allowed} + "
        elif self.allowed:
            listing = f"params.data.{self.allowed}.replace('{{namespace}}', object.metadata.namespace).split(',').join(', ')"
            allowed = f"': ' + (params.data.{self.allowed} == '' ? 'none' : {listing}) + "
        return f"{json.dumps(self.field + ': ' + self.text)} + {allowed}' (got ' + {self.cel_got} + ')'"


def _gpus(spec: Any) -> int:
    return int(spec.workers.gpus)


def _in(list_name: str, value: str) -> str:
    return f"(params.data.{list_name}.split(',').exists(e, e == '*' || e == {value}))"


def _quoted(expr: str) -> str:
    return f"'\"' + {expr} + '\"'"


_W = "object.spec.workers"
_GPU_RESOURCE = f"(has({_W}.gpuResourceName) ? {_W}.gpuResourceName : 'nvidia.com/gpu')"  # the CRD's default
_S = "object.spec.storage"

# Every field of FineTuneJobSpec that names storage the job reads or writes, and the policy list it must be under.
# tests/security/test_uri_fields.py walks the spec and fails for a URI-typed field missing here.
URI_FIELDS = {
    "spec.model.uri": "readPrefixes",
    "spec.model.adapter": "readPrefixes",
    "spec.dataset.train": "readPrefixes",
    "spec.dataset.validation": "readPrefixes",
    "spec.output.uri": "writePrefixes",
}
_VERBS = {"readPrefixes": "read", "writePrefixes": "write"}


def _prefixed(list_name: str, uri: str) -> str:
    return (
        f"(params.data.{list_name} == '' || params.data.{list_name}.split(',').exists(p, "
        f"{uri}.startsWith(p.replace('{{namespace}}', object.metadata.namespace))))"
    )


def _value(spec: Any, path: str) -> Any:
    """The spec's value at a field path (spec.a.b), None where a section on the way is unset."""
    value = spec
    for name in path.split(".")[1:]:
        value = getattr(value, name, None) if value is not None else None
    return value


def _prefix_rule(path: str, key: str) -> PolicyRule:
    """The rule that the URI at path (when set) starts with one of the policy's prefixes of key."""
    expr = "object." + path
    parts = expr.split(".")
    unset = " || ".join(f"!has({'.'.join(parts[:i])})" for i in range(3, len(parts) + 1))
    return PolicyRule(
        path,
        f"the platform policy lets this namespace {_VERBS[key]} only under",
        key,
        lambda s, ns, p: (uri := _value(s, path)) is None or _under(getattr(p, key), uri, ns),
        lambda s: _value(s, path),
        f"{unset} || {_prefixed(key, expr)}",
        _quoted(expr),
    )


# URI fields inside a list: each element's under the same rule (tests/security/test_uri_fields.py counts them too)
LIST_URI_FIELDS = {"spec.evaluation.tasks[].items": "readPrefixes"}
_TASKS = "object.spec.evaluation.tasks"


def _task_items_outside(spec: Any, namespace: str, policy: Policy) -> str | None:
    """The first task's items outside the policy's readPrefixes, or None."""
    tasks = spec.evaluation.tasks if spec.evaluation is not None else []
    return next((t.items for t in tasks if t.items is not None and not _under(policy.readPrefixes, t.items, namespace)), None)


def _task_items_rule() -> PolicyRule:
    """spec.evaluation.tasks[].items (a task's own items, when set) under readPrefixes, as every URI the job reads."""
    return PolicyRule(
        "spec.evaluation.tasks[].items",
        "the platform policy lets this namespace read only under",
        "readPrefixes",
        lambda s, ns, p: _task_items_outside(s, ns, p) is None,
        lambda s: ", ".join(t.items for t in s.evaluation.tasks if t.items is not None),
        f"!has(object.spec.evaluation) || !has({_TASKS}) || {_TASKS}.all(t, !has(t.items) || {_prefixed('readPrefixes', 't.items')})",
        _quoted(f"{_TASKS}.filter(t, has(t.items)).map(t, t.items).join(', ')"),
    )


RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        "spec.workers.image",
        "this image is not allowed by the platform policy; allowed image prefixes",
        "images",
        lambda s, ns, p: s.workers.image is None or any(s.workers.image.startswith(i) for i in p.images),
        lambda s: s.workers.image,
        f"!has({_W}.image) || (params.data.images != '' && params.data.images.split(',').exists(i, {_W}.image.startsWith(i)))",
        _quoted(f"{_W}.image"),
    ),
    PolicyRule(
        "spec.storage.serviceAccountName",
        "this service account is not allowed by the platform policy; allowed",
        "serviceAccounts",
        lambda s, ns, p: s.storage.serviceAccountName is None or _allowed(p.serviceAccounts, s.storage.serviceAccountName),
        lambda s: s.storage.serviceAccountName,
        f"!has({_S}.serviceAccountName) || {_in('serviceAccounts', f'{_S}.serviceAccountName')}",
        _quoted(f"{_S}.serviceAccountName"),
    ),
    PolicyRule(
        "spec.storage.credentialsSecret",
        "this Secret is not allowed by the platform policy; allowed",
        "credentialSecrets",
        lambda s, ns, p: s.storage.credentialsSecret is None or _allowed(p.credentialSecrets, s.storage.credentialsSecret),
        lambda s: s.storage.credentialsSecret,
        f"!has({_S}.credentialsSecret) || {_in('credentialSecrets', f'{_S}.credentialsSecret')}",
        _quoted(f"{_S}.credentialsSecret"),
    ),
    PolicyRule(
        "spec.storage.endpoint",
        "this endpoint is not allowed by the platform policy; allowed",
        "endpoints",
        lambda s, ns, p: s.storage.endpoint is None or _allowed(p.endpoints, s.storage.endpoint),
        lambda s: s.storage.endpoint,
        f"!has({_S}.endpoint) || {_in('endpoints', f'{_S}.endpoint')}",
        _quoted(f"{_S}.endpoint"),
    ),
    PolicyRule(
        "spec.storage",
        "the platform policy requires a credential source: storage.credentialsSecret or storage.serviceAccountName",
        "",
        lambda s, ns, p: (
            not p.requireCredentialSource or s.storage.credentialsSecret is not None or s.storage.serviceAccountName is not None
        ),
        lambda s: "none",
        f"params.data.requireCredentialSource != 'true' || has({_S}.credentialsSecret) || has({_S}.serviceAccountName)",
        "'\"none\"'",
    ),
    PolicyRule(
        "spec.workers.priorityClassName",
        "this priority class is not allowed by the platform policy; allowed",
        "priorityClasses",
        lambda s, ns, p: s.workers.priorityClassName is None or _allowed(p.priorityClasses, s.workers.priorityClassName),
        lambda s: s.workers.priorityClassName,
        f"!has({_W}.priorityClassName) || {_in('priorityClasses', f'{_W}.priorityClassName')}",
        _quoted(f"{_W}.priorityClassName"),
    ),
    PolicyRule(
        "spec.workers.nodeSelector",
        "a node selector key is not allowed by the platform policy; allowed keys",
        "nodeSelectorKeys",
        lambda s, ns, p: all(_allowed(p.nodeSelectorKeys, k) for k in s.workers.nodeSelector),
        lambda s: sorted(s.workers.nodeSelector),
        f"!has({_W}.nodeSelector) || {_W}.nodeSelector.all(k, {_in('nodeSelectorKeys', 'k')})",
        f"'[' + ({_W}.nodeSelector.map(k, '\"' + k + '\"')).join(', ') + ']'",
    ),
    PolicyRule(
        "spec.workers.tolerations",
        "a toleration is not allowed by the platform policy (every toleration names a key); allowed keys",
        "tolerationKeys",
        lambda s, ns, p: all(t.key and _allowed(p.tolerationKeys, t.key) for t in s.workers.tolerations),
        lambda s: [t.key or "" for t in s.workers.tolerations],
        f"!has({_W}.tolerations) || {_W}.tolerations.all(t, has(t.key) && t.key != '' && {_in('tolerationKeys', 't.key')})",
        f"'[' + ({_W}.tolerations.map(t, '\"' + (has(t.key) ? t.key : '') + '\"')).join(', ') + ']'",
    ),
    PolicyRule(
        "spec.workers.gpuResourceName",
        "this GPU resource is not allowed by the platform policy; allowed",
        "gpuResourceNames",
        lambda s, ns, p: _allowed(p.gpuResourceNames, s.workers.gpuResourceName),
        lambda s: s.workers.gpuResourceName,
        _in("gpuResourceNames", _GPU_RESOURCE),
        _quoted(_GPU_RESOURCE),
    ),
    PolicyRule(
        "spec.model.trustRemoteCode",
        "the platform policy does not allow running a model's own code",
        "",
        lambda s, ns, p: p.allowTrustRemoteCode or not s.model.trustRemoteCode,
        lambda s: s.model.trustRemoteCode,
        "params.data.allowTrustRemoteCode == 'true' || !has(object.spec.model.trustRemoteCode) || "
        "!object.spec.model.trustRemoteCode",
        "'true'",
    ),
    PolicyRule(
        "spec.model.uri",
        "the platform policy does not allow models from a hub; use s3://",
        "",
        lambda s, ns, p: p.allowHubModels or re.fullmatch(HUB_ID, s.model.uri) is None,
        lambda s: s.model.uri,
        f"params.data.allowHubModels == 'true' || !object.spec.model.uri.matches('^{HUB_ID}$')",
        _quoted("object.spec.model.uri"),
    ),
    PolicyRule(
        "spec.workers",
        "the job asks for more GPUs (replicas x gpusPerWorker) than the platform policy allows per job",
        "maxGpusPerJob",
        lambda s, ns, p: p.maxGpusPerJob == 0 or _gpus(s) <= p.maxGpusPerJob,
        lambda s: f"{_gpus(s)} GPUs",
        f"params.data.maxGpusPerJob == '0' || {_W}.replicas * {_W}.gpusPerWorker <= int(params.data.maxGpusPerJob)",
        f"'\"' + string({_W}.replicas * {_W}.gpusPerWorker) + ' GPUs\"'",
    ),
    PolicyRule(
        "spec.runPolicy.preflight",
        "the platform policy requires the preflight (CPU-only checks before GPUs are requested)",
        "",
        lambda s, ns, p: not p.requirePreflight or s.runPolicy.preflight,
        lambda s: s.runPolicy.preflight,
        "params.data.requirePreflight != 'true' || !has(object.spec.runPolicy) || "
        "!has(object.spec.runPolicy.preflight) || object.spec.runPolicy.preflight",
        "'false'",
    ),
    *(_prefix_rule(path, key) for path, key in URI_FIELDS.items()),
    _task_items_rule(),
)


# the one rule on metadata rather than spec: checked at CREATE (a label is fixed on the Job when it is made, and the
# operator checks the FineTuneJob's labels again until then)
QUEUE_FIELD = "metadata.labels"
QUEUE_TEXT = f"the platform policy requires a Kueue queue: set the label {QUEUE_LABEL} to a LocalQueue of this namespace"
QUEUE_CEL = (
    f"params.data.requireQueue != 'true' || (has(object.metadata.labels) && '{QUEUE_LABEL}' in object.metadata.labels "
    f"&& object.metadata.labels['{QUEUE_LABEL}'] != '')"
)


def check(spec: Any, namespace: str, policy: Policy, labels: Any = None) -> list[Problem]:
    """Every policy rule the spec (and, for requireQueue, the job's labels) breaks, as Problems (field path, message
    with what is allowed)."""
    problems = []
    for rule in RULES:
        if not rule.check(spec, namespace, policy):
            text = rule.message(spec, namespace, policy)
            head, _, got = text.rpartition(" (got ")
            problems.append(Problem(rule.field, head, got[:-1]))
    if policy.requireQueue and not (labels or {}).get(QUEUE_LABEL):
        problems.append(Problem(QUEUE_FIELD, QUEUE_TEXT, "none"))
    return problems


def admission_policy(name: str) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy that makes the API server enforce RULES, its parameters a ConfigMap with
    Policy.params() as data (the chart renders both)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["kubetune.dev"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["finetunejobs"],
                    }
                ]
            },
            # an UPDATE that leaves spec alone (Kopf's annotations, labels) is not held to a policy changed since
            "matchConditions": [
                {"name": "spec-written", "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec"}
            ],
            "validations": [
                {"expression": rule.cel, "messageExpression": rule.cel_message(), "reason": "Forbidden"} for rule in RULES
            ]
            + [
                {
                    "expression": f"request.operation != 'CREATE' || {QUEUE_CEL}",
                    "messageExpression": json.dumps(f"{QUEUE_FIELD}: {QUEUE_TEXT} (got none)"),
                    "reason": "Forbidden",
                }
            ],
        },
    }


def admission_policy_template() -> str:
    """The chart's templates/admission-policy.yaml: the ValidatingAdmissionPolicy and its binding, whose parameters
    are the ConfigMap the chart renders from its `policy` values (templates/policy.yaml)."""
    from .manifests import dump

    policy = admission_policy("POLICY_NAME")
    body = dump(policy).replace("name: POLICY_NAME", 'name: {{ include "kubetune.fullname" . }}-policy')
    return (
        "{{- /* Generated by `kubetune admission-policy` from kubetune_api/policy.py (make generate): do not edit. */ -}}\n"
        "{{- if .Values.policy.enforce }}\n" + body + "---\n"
        "apiVersion: admissionregistration.k8s.io/v1\n"
        "kind: ValidatingAdmissionPolicyBinding\n"
        "metadata:\n"
        '  name: {{ include "kubetune.fullname" . }}-policy\n'
        "spec:\n"
        '  policyName: {{ include "kubetune.fullname" . }}-policy\n'
        "  validationActions: [Deny]\n"
        "  paramRef:\n"
        '    name: {{ include "kubetune.fullname" . }}-policy\n'
        "    namespace: {{ .Release.Namespace }}\n"
        "    parameterNotFoundAction: Deny\n"
        "{{- end }}\n"
    )
