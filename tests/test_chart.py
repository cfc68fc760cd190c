"""The Helm chart, with the real helm: lint, values schema, RBAC exactly the operator's rules, a restricted pod,
the CRDs identical to crds/, and every documented option rendering objects the real API server accepts."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_operator.rbac import RULES, scoped
from kubetune_operator.settings import Settings

from .cluster.plane import HELM
from .conftest import ROOT

CHART = ROOT / "charts" / "kubetune"
THIRD_PARTY_CRDS = ROOT / ".cache" / "testbed" / "crds"

# a CA bundle as a platform gives it (any PEM renders; the cluster tests use the API server's real one)
CLIENT_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()

# every option the chart documents in values.yaml, as `helm --set` arguments
OPTIONS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={team-a,research}"],
    "peering": ["--set", "peering.enabled=true", "--set", "replicas=2"],
    "peering-namespaced": ["--set", "peering.enabled=true", "--set", "replicas=2", "--set", "watchNamespaces={team-a}"],
    "service-monitor": ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=prom"],
    "irsa-and-placement": [
        "--set-string",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/kubetune",
        "--set",
        "nodeSelector.kubernetes\\.io/os=linux",
        "--set",
        "priorityClassName=system-cluster-critical",
        "--set",
        "logLevel=debug",
        "--set",
        "trainer.image=registry.internal/kubetune/trainer:0.1.0",
    ],
    "no-metrics-service": ["--set", "metrics.service.enabled=false"],
    "webhook": [
        "--set",
        "webhook.enabled=true",
        "--set",
        "watchNamespaces={team-a}",
        "--set",
        f"webhook.clientAuth.caBundle={CLIENT_CA}",
        "--set",
        "webhook.clientAuth.commonNames={kube-apiserver-webhook-client}",
    ],
    "webhook-any-client": ["--set", "webhook.enabled=true", "--set", "webhook.clientAuth.anyClient=true"],
    "no-network-policy": ["--set", "networkPolicy.enabled=false"],
    "mlflow": [
        "--set",
        "tracking.mlflow.uri=http://mlflow.mlflow:5000",
        "--set",
        "tracking.mlflow.credentialsSecret=mlflow-token",
    ],
    "platform-policy": ["-f", str(ROOT / "examples" / "platform" / "values.yaml")],
    "policy-not-enforced": ["--set", "policy.enforce=false"],
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(f"{HELM} is missing: run `make testbed` (hack/install-tools.py)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check, timeout=60)


def render(*values: str, namespace: str = "kubetune-system") -> list[dict[str, Any]]:
    out = helm("template", "kt", str(CHART), "-n", namespace, *values).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def canonical(rules: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in rules)


def test_chart_crds_are_the_repository_crds() -> None:
    shipped = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert in_chart == shipped, "charts/kubetune/crds differs from crds/: run `make generate`"


@pytest.mark.parametrize("option", OPTIONS, ids=str)
def test_lint_strict(option: str) -> None:
    result = helm("lint", "--strict", str(CHART), *OPTIONS[option], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_wide_rbac_is_exactly_the_operators_rules() -> None:
    docs = render()
    (role,) = of_kind(docs, "ClusterRole")
    assert canonical(role["rules"]) == canonical(RULES)
    assert not of_kind(docs, "Role")
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    (account,) = of_kind(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubetune-system"}
    ]


def test_namespaced_rbac_grants_the_namespaced_rules_only_where_watched() -> None:
    docs = render(*OPTIONS["namespaced"])
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert canonical(cluster_role["rules"]) == canonical(scoped(cluster=True))
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["research", "team-a"]
    for role in roles:
        assert canonical(role["rules"]) == canonical(scoped(cluster=False))
    assert canonical(cluster_role["rules"] + roles[0]["rules"]) == canonical(RULES)
    assert sorted(b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")) == ["research", "team-a"]
    assert not any("secrets" in r["resources"] for doc in docs for r in doc.get("rules", []))


def _environment(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_operator_pod_is_restricted_and_its_settings_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    (deployment,) = of_kind(render(*OPTIONS["namespaced"], "--set", "syncSeconds=5"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    security = container["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    # the command and user are the operator image's (the Dockerfile's `operator` stage)
    operator_stage = (ROOT / "Dockerfile").read_text().split("AS operator\n")[1].split("\nFROM ")[0]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", operator_stage, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
    user = re.search(r"^USER (\d+):(\d+)$", operator_stage, flags=re.MULTILINE)
    assert container["command"] == entrypoint and "args" not in container
    assert user and (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(user[1]), int(user[2]))
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators at once
    environment = _environment(deployment)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_environ()
    assert settings.namespaces == ("team-a", "research") and settings.sync_seconds == 5
    assert settings.wait_seconds == 60
    assert (settings.health_port, settings.metrics_port) == (ports["health"], ports["metrics"])
    assert settings.trainer_image == "ghcr.io/kubetune/trainer:0.1.0" and settings.peering == ""
    read = set((ROOT / "operator" / "kubetune_operator" / "settings.py").read_text().split('"'))
    assert set(environment) <= read, "the chart sets an environment variable the operator never reads"


def test_webhook_serves_the_operators_handler_with_a_certificate_for_its_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography import x509

    docs = render(*OPTIONS["webhook"])
    (configuration,) = of_kind(docs, "ValidatingWebhookConfiguration")
    (hook,) = configuration["webhooks"]
    (secret,) = [d for d in of_kind(docs, "Secret") if d["type"] == "kubernetes.io/tls"]
    (deployment,) = of_kind(docs, "Deployment")
    service = hook["clientConfig"]["service"]
    # Kopf serves each handler at its id (read, not imported: importing registers the handler in this process)
    assert (
        service["path"] == "/validate"
        and 'id="validate"' in (ROOT / "operator" / "kubetune_operator" / "admission.py").read_text()
    )
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a"] and hook["sideEffects"] == "None"
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    authority = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    certificate.verify_directly_issued_by(authority)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{service['name']}.kubetune-system.svc" in names
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": secret["metadata"]["name"]}} in pod["volumes"]
    for key, value in _environment(deployment).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_environ()
    assert settings.webhook_port == 9443 and settings.webhook_cert == "/etc/kubetune/webhook/tls.crt"
    assert {"name": "webhook", "containerPort": 9443} in pod["containers"][0]["ports"]
    # only the API server's client certificate is answered: the CA's file is mounted where the operator reads it
    (client_ca,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-webhook-client-ca")]
    assert base64.b64encode(client_ca["data"]["ca.crt"].encode()).decode() == CLIENT_CA
    assert {"name": "webhook-client-ca", "configMap": {"name": client_ca["metadata"]["name"]}} in pod["volumes"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert settings.webhook_client_ca == mounts["webhook-client-ca"] + "/ca.crt" and not settings.webhook_any_client
    assert settings.webhook_client_names == ("kube-apiserver-webhook-client",)


def test_the_webhook_needs_client_authentication_or_an_explicit_any_client() -> None:
    refused = helm("template", "kt", str(CHART), "--set", "webhook.enabled=true", check=False)
    assert refused.returncode != 0 and "webhook.enabled needs webhook.clientAuth.caBundle" in refused.stderr
    (deployment,) = of_kind(render(*OPTIONS["webhook-any-client"]), "Deployment")
    assert _environment(deployment)["KUBETUNE_WEBHOOK_ANY_CLIENT"] == "true"


def test_the_network_policy_opens_only_the_operators_ports() -> None:
    (policy,) = of_kind(render(*OPTIONS["webhook"]), "NetworkPolicy")
    (deployment,) = of_kind(render(*OPTIONS["webhook"]), "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert set(rules) == {8080, 9090, 9443}  # health, metrics, webhook: nothing else reaches the pod
    assert rules[9090] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rules[8080] is None and rules[9443] is None  # any source: probes; the API server (its certificate decides)
    assert not of_kind(render(*OPTIONS["no-network-policy"]), "NetworkPolicy")


def test_debug_logging_adds_the_verbose_flag() -> None:
    (deployment,) = of_kind(render("--set", "logLevel=debug"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kubetune", "operator"] and container["args"] == ["--verbose"]


def test_peering_runs_a_standby_replica() -> None:
    docs = render(*OPTIONS["peering"])
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and _environment(deployment)["KUBETUNE_PEERING"] == "kubetune"
    assert [d["metadata"]["name"] for d in of_kind(docs, "ClusterKopfPeering")] == ["kubetune"]
    namespaced = render(*OPTIONS["peering-namespaced"])
    assert [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind(namespaced, "KopfPeering")] == [
        ("team-a", "kubetune")
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "replicas=2"], "more than 1 needs peering.enabled=true"),
        (["--set", "replicas=-1"], "at '/replicas': minimum: got -1, want 0"),  # the words docs/platform.md shows
        (["--set", "metrics.port=0"], "at '/metrics/port': minimum: got 0, want 1"),
        (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
        (["--set", "watchNamespaces={Team_A}"], "at '/watchNamespaces/0'"),
        (["--set", "syncSeconds=0"], "at '/syncSeconds'"),
        (["--set", "replica=2"], "additional properties 'replica' not allowed"),
        (
            ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"],
            "needs metrics.service.enabled",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[1::2]),
)
def test_wrong_values_fail_with_the_field_and_what_is_allowed(values: list[str], message: str) -> None:
    result = helm("template", "kt", str(CHART), *values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- against the real API server ---


@pytest.fixture(scope="module")
def third_party_crds(plane, crd) -> None:  # type: ignore[no-untyped-def]
    """Kueue, Prometheus Operator, Argo CD, Flux and KServe CRDs from their Go modules (hack/build-testbed.sh)."""
    files = sorted(THIRD_PARTY_CRDS.glob("*.yaml"))
    needed = "serving.kserve.io_llminferenceservices.yaml"
    assert len(files) >= 7 and (THIRD_PARTY_CRDS / needed).exists(), (
        f"third-party CRDs missing from {THIRD_PARTY_CRDS}: run `make testbed`"
    )
    for path in files:
        plane.kubectl("apply", "--server-side", "-f", str(path))
    for path in files:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    for namespace in ("argocd", "flux-system"):
        plane.kubectl("create", "namespace", namespace, check=False)


@pytest.mark.cluster
@pytest.mark.parametrize("option", OPTIONS, ids=str)
def test_rendered_chart_is_accepted_by_the_api_server(plane, third_party_crds, option: str) -> None:  # type: ignore[no-untyped-def]
    rendered = helm("template", "kt", str(CHART), "-n", "kubetune-system", *OPTIONS[option]).stdout
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len([d for d in yaml.safe_load_all(rendered) if d])


@pytest.mark.cluster
@pytest.mark.parametrize(
    "example",
    sorted(p for p in (ROOT / "examples").glob("*/*.yaml") if p.parent.name != "platform"),  # platform/: Helm values
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_kueue_and_gitops_examples_are_accepted_by_the_api_server(plane, third_party_crds, example: Path) -> None:  # type: ignore[no-untyped-def]
    result = plane.kubectl("apply", "--dry-run=server", "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.cluster
def test_upgrade_and_uninstall_as_documented(plane, crd) -> None:  # type: ignore[no-untyped-def]
    """docs/platform.md: CRDs first, then `helm upgrade --reuse-values`; `helm uninstall` leaves CRDs and jobs."""
    from kubetune_api.manifests import dump

    from .conftest import RELEASE, RELEASE_NAMESPACE, job, wait_until_admitting

    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    plane.helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values")
    upgraded = json.loads(plane.helm("status", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert upgraded["info"]["status"] == "deployed" and upgraded["version"] >= 2
    # a second release watching one namespace, then removed: its RBAC goes, the CRDs and the jobs stay
    plane.kubectl("create", "namespace", "chart-tenant", check=False)
    plane.helm(
        "install", "second", str(CHART), "-n", "second-system", "--create-namespace",
        "--set", "replicas=0", "--set", "watchNamespaces={chart-tenant}",
    )  # fmt: skip
    assert plane.kubectl("get", "role/second-kubetune", "-n", "chart-tenant", check=False).returncode == 0
    plane.kubectl("apply", "-f", "-", input=dump(job(**{"metadata.name": "kept", "metadata.namespace": "chart-tenant"})))
    plane.helm("uninstall", "second", "-n", "second-system")
    wait_until_admitting(plane)  # the API server drops the removed release's admission policy a moment later
    assert plane.kubectl("get", "role/second-kubetune", "-n", "chart-tenant", check=False).returncode != 0
    assert plane.kubectl("get", "clusterrole/second-kubetune", check=False).returncode != 0
    assert plane.kubectl("get", "crd/finetunejobs.kubetune.dev", check=False).returncode == 0
    assert plane.kubectl("get", "ftj/kept", "-n", "chart-tenant", check=False).returncode == 0


def test_the_policy_configmap_is_the_policy_the_operator_and_the_api_server_read(tmp_path: Path) -> None:
    """The chart renders its `policy` values once as the admission policy's parameters and once as the operator's
    policy.yaml: both must be exactly what kubetune_api.policy makes of the same values."""
    from kubetune_api.policy import load_policy

    values = ROOT / "examples" / "platform" / "values.yaml"
    (configmap,) = [d for d in of_kind(render("-f", str(values)), "ConfigMap") if d["metadata"]["name"].endswith("-policy")]
    mounted = tmp_path / "policy.yaml"
    mounted.write_text(configmap["data"]["policy.yaml"])
    policy = load_policy(values)
    assert load_policy(mounted) == policy
    assert {k: v for k, v in configmap["data"].items() if k != "policy.yaml"} == policy.params()
    (deployment,) = of_kind(render("-f", str(values)), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_POLICY"] == "/etc/kubetune/policy/policy.yaml"
