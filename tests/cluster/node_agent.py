"""A node agent for the test control plane: registers Nodes (CPU, memory, nvidia.com/gpu) and runs the pods the
scheduler binds to them as local processes, the way a kubelet would report them.

Each container runs under `unshare --mount --uts` with its volumes (configMap, secret, emptyDir, downwardAPI, hostPath)
bind-mounted at their real mountPath, its own hostname, an /etc/hosts that resolves `<pod>.<subdomain>` to a
loopback address per pod, and its own /dev/termination-log. Logs are served to the API server (kubectl logs)
from the node's kubelet port. A pod being deleted (an eviction, a Job suspended or deleted) gets what a kubelet
gives: SIGTERM to the container's main process alone, its grace period (at most 60 s here), SIGKILL to what is
left, then its terminal status (exit codes, termination messages) before the pod goes.

Two ways to run a container:
- from its image, when the image is in podman's local store (`make images`): the image's root filesystem (read-only
  where the pod says readOnlyRootFilesystem, else a writable overlay of its own), its entry point and command as
  Kubernetes combines them with the pod's, its environment, working directory and user, the pod's runAsUser,
  runAsGroup, fsGroup and runAsNonRoot; a projected service-account token from the TokenRequest API, and the API
  server as KUBERNETES_SERVICE_HOST/PORT. The end-to-end tests run the trainer and operator images this way.
- the fast path, for any other image name ("python", "local", ...): this machine's Python environment, as root,
  with the same volumes. Every other test's pods run this way.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import shlex
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from .images import Identity, Image, Store, chroot_script, mount_point
from .plane import die_with_parent

VENV_BIN = str(Path(sys.executable).parent)
# pods run this checkout's Python: a volume mounted over an ancestor of these (an emptyDir at /tmp while the
# checkout is under /tmp, say) would hide them, so such a mount is left out and the host directory is shared
PROTECTED = (Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2])
TERMINATION_LOG = Path("/dev/termination-log")


def _keyed(data: dict[str, bytes], items: list[Any] | None) -> dict[str, bytes]:
    """A configMap's or secret's files: every key under its own name, or only the listed keys at their paths."""
    return {item.path: data[item.key] for item in items} if items else data


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sub_path(volume: Path, sub_path: str | None) -> Path:
    """A volumeMount's subPath within its volume, made as the kubelet makes a missing one: a directory with the
    volume's own mode (its sticky bit included), owned by the kubelet's user; never outside the volume."""
    if not sub_path:
        return volume
    if sub_path.startswith("/") or ".." in Path(sub_path).parts:
        raise ConfigError(f"subPath {sub_path!r} must be a relative path within its volume")
    path = volume / sub_path
    if not path.exists():
        path.mkdir(parents=True)
        path.chmod(stat.S_IMODE(volume.stat().st_mode))
    return path


class ConfigError(Exception):
    """A container the kubelet would refuse to start (CreateContainerConfigError)."""


@dataclass
class Container:
    name: str
    process: subprocess.Popen[bytes] | None
    log: Path
    termination: Path
    started: str
    restarts: int = 0
    image_id: str = ""


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    directory: Path
    containers: dict[str, Container] = field(default_factory=dict)
    finished: bool = False
    deleting: bool = False


class NodeAgent:
    def __init__(
        self,
        kubeconfig: Path,
        directory: Path,
        nodes: list[str],
        serving_cert: Path,
        serving_key: Path,
        gpus: int = 4,
        cpu: str = "16",
        memory: str = "64Gi",
    ) -> None:
        self.api_client = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.coordination = client.CoordinationV1Api(self.api_client)
        self.directory = directory
        self.nodes = nodes
        self.capacity = {
            "cpu": cpu,
            "memory": memory,
            "pods": "110",
            "ephemeral-storage": "2Ti",
            "nvidia.com/gpu": str(gpus),
        }
        self.pods: dict[str, PodRun] = {}
        self.images = Store()
        self.api_server = urllib.parse.urlparse(self.api_client.configuration.host)
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.next_ip = 2
        self.hosts = directory / "hosts"
        self.threads: list[threading.Thread] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(serving_cert), str(serving_key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    # nodes

    def _node_status(self, name: str) -> dict[str, Any]:
        stamp = now()
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
                "kernelVersion": os.uname().release,
                "osImage": "kubetune testbed",
                "containerRuntimeVersion": "local://1",
                "kubeletVersion": "v1.34.4",
                "kubeProxyVersion": "v1.34.4",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "node agent is posting ready status",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                },
            ],
        }

    def register(self) -> None:
        for name in self.nodes:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
                },
            }
            try:
                self.core.create_node(body)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
            self.core.patch_node_status(name, {"status": self._node_status(name)})

    def _heartbeat(self) -> None:
        while not self.stopping.wait(5):
            for name in self.nodes:
                try:
                    self.core.patch_node_status(name, {"status": self._node_status(name)})
                    lease = {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": name, "namespace": "kube-node-lease"},
                        "spec": {
                            "holderIdentity": name,
                            "leaseDurationSeconds": 40,
                            "renewTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        },
                    }
                    try:
                        self.coordination.replace_namespaced_lease(
                            name,
                            "kube-node-lease",
                            {
                                **lease,
                                "metadata": {
                                    **lease["metadata"],
                                    "resourceVersion": self.coordination.read_namespaced_lease(
                                        name, "kube-node-lease"
                                    ).metadata.resource_version,
                                },
                            },
                        )
                    except client.ApiException as exc:
                        if exc.status != 404:
                            raise
                        self.coordination.create_namespaced_lease("kube-node-lease", lease)
                except Exception as exc:  # the API server may be restarting; try again next beat
                    print(f"node agent: heartbeat failed: {exc}", file=sys.stderr)

    # pods

    def _resolve_env(self, pod: Any, container: Any, image: Image | None = None) -> dict[str, str]:
        env: dict[str, str]
        if image is not None:
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **image.env}
        else:
            env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
            # the fast path's stand-in for the trainer image's prebuilt DeepSpeed CPU op, compiled once on this machine
            env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
        # the API server, as a kubelet and kube-proxy make the `kubernetes` Service reachable from every pod
        env["KUBERNETES_SERVICE_HOST"] = self.api_server.hostname or "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(self.api_server.port or 443)
        namespace = pod.metadata.namespace
        for source in container.env_from or []:
            if source.config_map_ref:
                cm = self.core.read_namespaced_config_map(source.config_map_ref.name, namespace)
                env.update({(source.prefix or "") + k: v for k, v in (cm.data or {}).items()})
            if source.secret_ref:
                secret = self.core.read_namespaced_secret(source.secret_ref.name, namespace)
                env.update({(source.prefix or "") + k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from
            try:
                if ref.field_ref:
                    env[var.name] = self._field(pod, ref.field_ref.field_path)
                elif ref.secret_key_ref:
                    data = self.core.read_namespaced_secret(ref.secret_key_ref.name, namespace).data or {}
                    if ref.secret_key_ref.key in data:
                        env[var.name] = base64.b64decode(data[ref.secret_key_ref.key]).decode()
                    elif not ref.secret_key_ref.optional:
                        raise KeyError(f"secret {ref.secret_key_ref.name} has no key {ref.secret_key_ref.key}")
                elif ref.config_map_key_ref:
                    data = self.core.read_namespaced_config_map(ref.config_map_key_ref.name, namespace).data or {}
                    if ref.config_map_key_ref.key in data:
                        env[var.name] = data[ref.config_map_key_ref.key]
                    elif not ref.config_map_key_ref.optional:
                        raise KeyError(f"configmap {ref.config_map_key_ref.name} has no key {ref.config_map_key_ref.key}")
            except client.ApiException as exc:
                optional = (ref.secret_key_ref and ref.secret_key_ref.optional) or (
                    ref.config_map_key_ref and ref.config_map_key_ref.optional
                )
                if exc.status == 404 and optional:
                    continue
                raise
        return env

    def _field(self, pod: Any, path: str) -> str:
        meta = pod.metadata
        if path == "metadata.name":
            return str(meta.name)
        if path == "metadata.namespace":
            return str(meta.namespace)
        if path == "metadata.uid":
            return str(meta.uid)
        if path == "spec.nodeName":
            return str(pod.spec.node_name)
        if path == "spec.serviceAccountName":
            return str(pod.spec.service_account_name or "")
        if path in ("status.podIP", "status.hostIP"):
            return self.pods[meta.uid].ip if path == "status.podIP" else "127.0.0.1"
        for prefix, values in (("metadata.annotations", meta.annotations or {}), ("metadata.labels", meta.labels or {})):
            if path.startswith(prefix + "['"):
                return str(values.get(path[len(prefix) + 2 : -2], ""))
        raise KeyError(f"unsupported fieldRef {path}")

    def _token(self, pod: Any, source: Any) -> bytes:
        """A service-account token for this pod from the TokenRequest API, bound to the pod, as the kubelet gets one."""
        request = {
            "spec": {
                "audiences": [source.audience] if source.audience else None,
                "expirationSeconds": source.expiration_seconds or 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
            }
        }
        account = pod.spec.service_account_name or "default"
        answer = self.core.create_namespaced_service_account_token(account, pod.metadata.namespace, request)
        return str(answer.status.token).encode()

    def _projected(self, pod: Any, volume: Any) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        namespace = pod.metadata.namespace
        for source in volume.projected.sources or []:
            if source.service_account_token:
                files[source.service_account_token.path] = self._token(pod, source.service_account_token)
            elif source.config_map:
                files.update(_keyed(self._config_map(source.config_map.name, namespace), source.config_map.items))
            elif source.secret:
                files.update(_keyed(self._secret(source.secret.name, namespace), source.secret.items))
            elif source.downward_api:
                files.update(self._downward(pod, source.downward_api.items))
        return files

    def _config_map(self, name: str, namespace: str) -> dict[str, bytes]:
        return {k: v.encode() for k, v in (self.core.read_namespaced_config_map(name, namespace).data or {}).items()}

    def _secret(self, name: str, namespace: str) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in (self.core.read_namespaced_secret(name, namespace).data or {}).items()}

    def _downward(self, pod: Any, items: list[Any] | None) -> dict[str, bytes]:
        return {item.path: self._field(pod, item.field_ref.field_path).encode() for item in items or []}

    def _volumes(self, pod: Any, run: PodRun) -> dict[str, Path]:
        out: dict[str, Path] = {}
        namespace = pod.metadata.namespace
        fs_group = pod.spec.security_context.fs_group if pod.spec.security_context else None
        for volume in pod.spec.volumes or []:
            if volume.host_path:  # the node's own directory, shared by every pod that mounts it
                out[volume.name] = Path(volume.host_path.path)
                out[volume.name].mkdir(parents=True, exist_ok=True)
                continue
            target = run.directory / "volumes" / volume.name
            target.mkdir(parents=True, exist_ok=True)
            files: dict[str, bytes] = {}
            if volume.config_map:
                files = _keyed(self._config_map(volume.config_map.name, namespace), volume.config_map.items)
            elif volume.secret:
                files = _keyed(self._secret(volume.secret.secret_name, namespace), volume.secret.items)
            elif volume.downward_api:
                files = self._downward(pod, volume.downward_api.items)
            elif volume.projected:
                files = self._projected(pod, volume)
            elif volume.empty_dir is None:
                continue  # other volume types are not supported by the testbed
            # as the kubelet leaves them: an emptyDir writable by any user, the files of the others readable
            # (0644) and, with an fsGroup, owned by that group
            target.chmod(0o777 if volume.empty_dir is not None else 0o755)
            for relative, content in files.items():
                path = target / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                path.chmod(0o644)
                if fs_group is not None:
                    os.chown(path, 0, fs_group)
            if fs_group is not None:
                os.chown(target, 0, fs_group)
            out[volume.name] = target
        return out

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        with self.lock:
            for run in self.pods.values():
                if run.finished:
                    continue
                names = [run.name]
                pod_hostname = getattr(run, "hostname", run.name)
                subdomain = getattr(run, "subdomain", None)
                if subdomain:
                    names = [
                        f"{pod_hostname}.{subdomain}",
                        f"{pod_hostname}.{subdomain}.{run.namespace}",
                        f"{pod_hostname}.{subdomain}.{run.namespace}.svc",
                        f"{pod_hostname}.{subdomain}.{run.namespace}.svc.cluster.local",
                        run.name,
                    ]
                lines.append(f"{run.ip} {' '.join(names)}")
            # written under the lock too: two pods starting at once must not leave the older list behind
            with self.hosts.open("r+" if self.hosts.exists() else "w") as handle:  # in place: bind mounts see it
                handle.seek(0)
                handle.write("\n".join(lines) + "\n")
                handle.truncate()

    def _identity(self, pod: Any, container: Any, image: Image) -> Identity:
        """uid, gid, supplementary groups and a read-only root, from the container's securityContext over the pod's
        over the image's USER; runAsNonRoot refuses a root user as the kubelet does."""
        pod_context = pod.spec.security_context or client.V1PodSecurityContext()
        context = container.security_context or client.V1SecurityContext()
        image_uid, image_gid = image.uid_gid()
        uid = next((v for v in (context.run_as_user, pod_context.run_as_user, image_uid) if v is not None), None)
        if uid is None:
            raise ConfigError(f"container has a non-numeric USER ({image.user}) in image {image.name}")
        gid = next((v for v in (context.run_as_group, pod_context.run_as_group, image_gid) if v is not None), 0)
        non_root = context.run_as_non_root if context.run_as_non_root is not None else pod_context.run_as_non_root
        if non_root and uid == 0:
            raise ConfigError("container has runAsNonRoot and image will run as root")
        groups = [
            gid,
            *([pod_context.fs_group] if pod_context.fs_group is not None else []),
            *(pod_context.supplemental_groups or []),
        ]
        escalation = context.allow_privilege_escalation
        return Identity(uid, gid, tuple(dict.fromkeys(groups)), bool(context.read_only_root_filesystem), escalation is False)

    def _start_container(self, pod: Any, run: PodRun, container: Any, volumes: dict[str, Path], restarts: int = 0) -> Container:
        image = self.images.get(container.image or "")
        env = self._resolve_env(pod, container, image)
        env["HOSTNAME"] = getattr(run, "hostname", run.name)
        termination = run.directory / f"{container.name}.termination-log"
        termination.write_text("")
        termination.chmod(0o666)  # the container's user writes it
        log = run.directory / f"{container.name}.log"
        mounts = [(str(self.hosts), "/etc/hosts"), (str(termination), container.termination_message_path or str(TERMINATION_LOG))]
        for mount in container.volume_mounts or []:
            source = volumes.get(mount.name)
            hides = image is None and any(str(path).startswith(mount.mount_path.rstrip("/") + "/") for path in PROTECTED)
            if source is not None and not hides:
                mounts.append((str(_sub_path(source, mount.sub_path)), mount.mount_path))
        if image is not None:
            script = self._image_script(pod, run, container, image, mounts, restarts)
            cwd = "/"
        else:
            script = self._host_script(container, env, mounts)
            cwd = container.working_dir or "/tmp"
        handle = log.open("ab")
        process = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", "\n".join(script)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            preexec_fn=die_with_parent,
        )
        return Container(container.name, process, log, termination, now(), restarts, image.id if image else "")

    def _host_script(self, container: Any, env: dict[str, str], mounts: list[tuple[str, str]]) -> list[str]:
        # a mount over an ancestor of the sources (an emptyDir at /tmp, say) would hide them: do those last
        sources = [src for src, _ in mounts]  # (list.sort empties the list while it sorts)
        mounts.sort(key=lambda m: any(src.startswith(m[1].rstrip("/") + "/") for src in sources))
        script = ["set -e"]
        for source, target in mounts:
            script += [mount_point(source, target), f"mount --bind {shlex.quote(source)} {shlex.quote(target)}"]
        script.append(f"hostname {shlex.quote(env['HOSTNAME'])}")
        script.append(f"cd {shlex.quote(container.working_dir or '/')}")
        argv = list(container.command or []) + list(container.args or [])
        script.append("exec " + " ".join(shlex.quote(a) for a in argv))
        return script

    def _image_script(
        self, pod: Any, run: PodRun, container: Any, image: Image, mounts: list[tuple[str, str]], restarts: int
    ) -> list[str]:
        argv = image.argv(list(container.command or []), list(container.args or []))
        if not argv:
            raise ConfigError(f"no command specified: image {image.name} has no entry point and the pod gives none")
        return chroot_script(
            image,
            run.directory / f"{container.name}-{restarts}",  # a new writable layer for each start, as a runtime gives
            mounts,
            self._identity(pod, container, image),
            getattr(run, "hostname", run.name),
            container.working_dir or image.workdir or "/",
            argv,
        )

    def _status(self, pod: Any, run: PodRun, phase: str) -> None:
        statuses = []
        for spec in pod.spec.containers:
            c = run.containers.get(spec.name)
            state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
            ready = False
            if c is not None and c.process is not None:
                code = c.process.poll()
                if code is None:
                    state, ready = {"running": {"startedAt": c.started}}, True
                else:
                    message = c.termination.read_text(errors="replace")[:4096] if c.termination.exists() else ""
                    if not message and spec.termination_message_policy == "FallbackToLogsOnError" and code != 0:
                        message = "\n".join(c.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
                    state = {
                        "terminated": {
                            "exitCode": code if code >= 0 else 128 - code,
                            "reason": "Completed" if code == 0 else "Error",
                            "message": message,
                            "startedAt": c.started,
                            "finishedAt": now(),
                        }
                    }
            statuses.append(
                {
                    "name": spec.name,
                    "image": spec.image or "local",
                    "imageID": f"{spec.image}@{c.image_id}" if c and c.image_id else "",
                    "ready": ready,
                    "restartCount": c.restarts if c else 0,
                    "started": ready,
                    "state": state,
                }
            )
        all_ready = all(s["ready"] for s in statuses)
        stamp = now()
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": str(all_ready), "lastTransitionTime": stamp},
            {"type": "Ready", "status": str(all_ready), "lastTransitionTime": stamp},
        ]
        status = {
            "phase": phase,
            "podIP": run.ip,
            "podIPs": [{"ip": run.ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if pod.status and pod.status.start_time else stamp,
            "conditions": conditions,
            "containerStatuses": statuses,
        }
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def _fail_pod(self, pod: Any, run: PodRun, reason: str, message: str) -> None:
        run.finished = True
        with contextlib.suppress(client.ApiException):
            self.core.patch_namespaced_pod_status(
                run.name,
                run.namespace,
                {
                    "status": {
                        "phase": "Failed",
                        "reason": reason,
                        "message": message,
                        "podIP": run.ip,
                        "hostIP": "127.0.0.1",
                        "containerStatuses": [
                            {
                                "name": c.name,
                                "image": c.image or "local",
                                "imageID": "",
                                "ready": False,
                                "restartCount": 0,
                                "state": {"waiting": {"reason": reason, "message": message}},
                            }
                            for c in pod.spec.containers
                        ],
                    }
                },
            )

    def _run_pod(self, pod: Any) -> None:
        uid = pod.metadata.uid
        with self.lock:
            if uid in self.pods:
                return
            run = PodRun(
                pod.metadata.namespace,
                pod.metadata.name,
                uid,
                pod.spec.node_name,
                f"127.0.{self.next_ip // 250}.{self.next_ip % 250 + 2}",
                self.directory / "pods" / uid,
            )
            self.next_ip += 1
            run.hostname = pod.spec.hostname or pod.metadata.name  # type: ignore[attr-defined]
            run.subdomain = pod.spec.subdomain  # type: ignore[attr-defined]
            run.directory.mkdir(parents=True, exist_ok=True)
            self.pods[uid] = run
        self._write_hosts()
        try:
            volumes = self._volumes(pod, run)
            for spec in pod.spec.containers:
                run.containers[spec.name] = self._start_container(pod, run, spec, volumes)
        except (client.ApiException, KeyError, OSError, ConfigError, subprocess.CalledProcessError) as exc:
            reason = "CreateContainerConfigError"
            self._fail_pod(pod, run, reason, str(getattr(exc, "reason", exc)))
            return
        self._status(pod, run, "Running")
        policy = pod.spec.restart_policy or "Always"
        while not self.stopping.is_set():
            codes = {name: c.process.poll() for name, c in run.containers.items() if c.process}
            if run.deleting:  # _kill ends them; this thread stays until they have ended, since the kernel kills
                if all(code is not None for code in codes.values()):  # a child whose starting thread ends (PDEATHSIG)
                    return
                time.sleep(0.2)
                continue
            if all(code is not None for code in codes.values()):
                failed = any(code != 0 for code in codes.values())
                if policy == "Always" or (policy == "OnFailure" and failed):
                    for spec in pod.spec.containers:
                        old = run.containers[spec.name]
                        run.containers[spec.name] = self._start_container(pod, run, spec, volumes, old.restarts + 1)
                    self._status(pod, run, "Running")
                    continue
                self._status(pod, run, "Failed" if failed else "Succeeded")
                run.finished = True
                self._write_hosts()
                return
            time.sleep(0.2)

    def _kill(self, run: PodRun, grace: int, pod: Any = None) -> None:
        """SIGTERM, the grace period, SIGKILL; then, as a kubelet does, the pod's terminal status (its containers'
        exit codes and termination messages: a Job controller and an operator read them) before the pod goes."""
        run.deleting = True
        for c in run.containers.values():  # the runtime signals the container's main process, no other
            if c.process and c.process.poll() is None:
                os.kill(c.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in run.containers.values():
            while c.process and c.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if c.process and c.process.poll() is None:
                os.killpg(c.process.pid, signal.SIGKILL)
                c.process.wait()
        if pod is not None and not run.finished:
            codes = [c.process.poll() for c in run.containers.values() if c.process]
            with contextlib.suppress(client.ApiException):
                self._status(pod, run, "Succeeded" if codes and all(code == 0 for code in codes) else "Failed")
        run.finished = True
        self._write_hosts()
        try:
            self.core.delete_namespaced_pod(
                run.name,
                run.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=run.uid)),
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _watch(self) -> None:
        while not self.stopping.is_set():
            try:
                stream = watch.Watch()
                for event in stream.stream(self.core.list_pod_for_all_namespaces, timeout_seconds=30):
                    if self.stopping.is_set():
                        break
                    pod = event["object"]
                    if pod.spec.node_name not in self.nodes:
                        continue
                    uid = pod.metadata.uid
                    if event["type"] == "DELETED":
                        run = self.pods.get(uid)
                        if run and not run.finished:
                            threading.Thread(target=self._kill, args=(run, 0), daemon=True).start()
                        continue
                    if pod.metadata.deletion_timestamp is not None:
                        run = self.pods.get(uid)
                        if run is None:
                            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
                        elif not run.deleting:
                            grace = pod.metadata.deletion_grace_period_seconds or 0
                            threading.Thread(target=self._kill, args=(run, min(grace, 60), pod), daemon=True).start()
                        continue
                    if uid not in self.pods and (pod.status is None or pod.status.phase in (None, "Pending")):
                        threading.Thread(target=self._run_pod, args=(pod,), daemon=True).start()
            except Exception as exc:  # watch expiry or API restart: start a new watch
                if not self.stopping.is_set():
                    print(f"node agent: watch restarted: {exc}", file=sys.stderr)
                    time.sleep(0.5)

    # logs, as the kubelet serves them to the API server

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                _, namespace, name, container = parts
                query = urllib.parse.parse_qs(url.query)
                with agent.lock:
                    run = next((r for r in agent.pods.values() if r.namespace == namespace and r.name == name), None)
                c = run.containers.get(container) if run else None
                if c is None:
                    self.send_error(404, f"container {container} of pod {namespace}/{name} not found on this node")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                text = c.log.read_bytes()
                tail = query.get("tailLines")
                if tail:
                    text = b"".join(text.splitlines(keepends=True)[-int(tail[0]) :])
                limit = query.get("limitBytes")
                if limit:
                    text = text[: int(limit[0])]
                self.wfile.write(text)
                if query.get("follow", ["false"])[0] == "true" and not limit:
                    offset = c.log.stat().st_size
                    while c.process and (c.process.poll() is None or c.log.stat().st_size > offset):
                        size = c.log.stat().st_size
                        if size > offset:
                            with c.log.open("rb") as handle:
                                handle.seek(offset)
                                self.wfile.write(handle.read(size - offset))
                                self.wfile.flush()
                            offset = size
                        time.sleep(0.2)

        return Handler

    # lifecycle

    def start(self) -> NodeAgent:
        if not TERMINATION_LOG.exists():
            TERMINATION_LOG.touch()  # a mount point for each container's own termination log
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        self.register()
        for target in (self.server.serve_forever, self._heartbeat, self._watch):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            runs = list(self.pods.values())
        for run in runs:
            for c in run.containers.values():
                if c.process and c.process.poll() is None:
                    os.killpg(c.process.pid, signal.SIGKILL)
                    c.process.wait()
        self.server.shutdown()
        self.images.close()


def main() -> None:
    """`python -m tests.cluster.node_agent KUBECONFIG DIR CERT KEY [NODE...]`: run until interrupted."""
    kubeconfig, directory, cert, key, *nodes = sys.argv[1:]
    agent = NodeAgent(Path(kubeconfig), Path(directory), nodes or ["node-1"], Path(cert), Path(key)).start()
    print(json.dumps({"kubeletPort": agent.port, "nodes": agent.nodes}), flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    agent.stop()


if __name__ == "__main__":
    main()
