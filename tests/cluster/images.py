"""Container images for the node agent: the images `make images` built (hack/build-images.sh) in podman's local
store, as root filesystems the agent can chroot into.

`podman run` cannot start containers in this VM (crun cannot set RLIMIT_NOFILE; the cgroups are hybrid), so the agent
does what a container runtime does with the parts that work: `podman image mount` gives the image's root filesystem
and `podman image inspect` its entry point, command, user, working directory and environment.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

TAG = "dev"  # hack/build-images.sh's default IMAGE_TAG
TRAINER = f"localhost/kubetune-trainer:{TAG}"
OPERATOR = f"localhost/kubetune-operator:{TAG}"


@dataclass(frozen=True)
class Image:
    name: str
    id: str
    root: Path  # the mounted, read-only root filesystem: a pod's container gets an overlay on top of it
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str
    workdir: str
    env: dict[str, str]
    size: int

    def argv(self, command: list[str], args: list[str]) -> list[str]:
        """Kubernetes' rule: command replaces the entry point (and drops the image's command), args replace the
        image's command."""
        if command:
            return [*command, *args]
        return [*self.entrypoint, *(args or self.cmd)]

    def uid_gid(self) -> tuple[int | None, int | None]:
        """The image's USER as numbers (a name would need the image's /etc/passwd; ours are numeric)."""
        user, _, group = self.user.partition(":")
        uid = int(user) if user.isdigit() else (0 if not user or user == "root" else None)
        gid = int(group) if group.isdigit() else None
        return uid, gid


def available() -> bool:
    return shutil.which("podman") is not None


class Store:
    """Looks images up in podman's store once each, and mounts each once (unmounted at close)."""

    def __init__(self) -> None:
        self.found: dict[str, Image | None] = {}
        self.lock = threading.Lock()

    def get(self, name: str) -> Image | None:
        with self.lock:
            if name not in self.found:
                self.found[name] = _load(name)
            return self.found[name]

    def close(self) -> None:
        with self.lock:
            for image in self.found.values():
                if image is not None:
                    subprocess.run(["podman", "image", "unmount", image.id], capture_output=True, check=False)
            self.found.clear()


def _load(name: str) -> Image | None:
    if not available() or not name or "/" not in name:  # "python", "x", "local": no image, the fast path
        return None
    inspect = subprocess.run(["podman", "image", "inspect", name], capture_output=True, text=True, check=False)
    if inspect.returncode != 0:
        return None
    (data,) = json.loads(inspect.stdout)
    config = data.get("Config") or {}
    mounted = subprocess.run(["podman", "image", "mount", name], capture_output=True, text=True, check=True)
    env = {key: value for key, _, value in (item.partition("=") for item in config.get("Env") or [])}
    return Image(
        name=name,
        id=data["Id"],
        root=Path(mounted.stdout.strip()),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        user=config.get("User") or "",
        workdir=config.get("WorkingDir") or "/",
        env=env,
        size=int(data.get("Size") or 0),
    )


def missing(*names: str) -> list[str]:
    """The names among these that are not in podman's store."""
    if not available():
        return list(names)
    return [n for n in names if subprocess.run(["podman", "image", "exists", n], check=False).returncode != 0]


def mount_point(source: str, target: str) -> str:
    """The shell that makes `target` exist as a directory or a file, whichever `source` is."""
    if Path(source).is_dir():
        return f"mkdir -p {shlex.quote(target)}"
    parent = shlex.quote(str(Path(target).parent))
    return f"[ -e {shlex.quote(target)} ] || {{ mkdir -p {parent}; touch {shlex.quote(target)}; }}"


def within(root: Path, path: str, hops: int = 40) -> str:
    """`path` resolved inside the image's root filesystem `root`, relative to it, its symbolic links followed inside
    `root` (as a runtime resolves a mount path: the image's /var/run -> /run must not lead to the node's /run)."""
    resolved = root
    parts = [p for p in path.split("/") if p not in ("", ".")]
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            hops -= 1
            if hops < 0:
                raise OSError(f"too many symbolic links resolving {path} in {root}")
            link = str(candidate.readlink())
            resolved = root if link.startswith("/") else resolved
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        resolved = candidate
    return str(resolved.relative_to(root))


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    read_only: bool
    no_new_privileges: bool = True  # allowPrivilegeEscalation: false (setpriv --no-new-privs)


def chroot_script(
    image: Image, layer: Path, mounts: list[tuple[str, str]], who: Identity, hostname: str, workdir: str, argv: list[str]
) -> list[str]:
    """The shell (run under `unshare --mount --uts`) that starts a container: an overlay of its own (under `layer`)
    on the image's root filesystem, the node's /proc, /sys and /dev, the (source, path) mounts shallowest first,
    the root made read-only if asked, then chroot as the user into the working directory and exec argv."""
    for part in ("root", "upper", "work"):
        (layer / part).mkdir(parents=True, exist_ok=True)
    root = layer / "root"
    q = shlex.quote
    script = [
        "set -e",
        f"mount -t overlay overlay -o lowerdir={image.root},upperdir={layer / 'upper'},workdir={layer / 'work'} {q(str(root))}",
    ]
    script += [f"mount --rbind /{name} {q(str(root / name))}" for name in ("proc", "sys", "dev")]
    for source, target in sorted(mounts, key=lambda m: m[1].count("/")):
        inside = str(root / within(image.root, target))  # links resolved in the image
        script += [mount_point(source, inside), f"mount --bind {q(source)} {q(inside)}"]
    if who.read_only:
        script.append(f"mount -o remount,ro {q(str(root))}")
    script.append(f"hostname {q(hostname)}")
    user = f"--userspec={who.uid}:{who.gid} --groups={','.join(map(str, who.groups))}"
    privileges = "setpriv --no-new-privs " if who.no_new_privileges else ""
    script.append(
        f'exec {privileges}chroot {user} {q(str(root))} /bin/sh -c \'cd "$0" && exec "$@"\' {q(workdir)} '
        + " ".join(q(a) for a in argv)
    )
    return script


def run(
    image: Image,
    argv: list[str],
    layer: Path,
    env: dict[str, str] | None = None,
    mounts: list[tuple[str, str]] | None = None,
    read_only: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the image as its USER (read-only root by default), with the image's environment and `env`."""
    uid, gid = image.uid_gid()
    who = Identity(uid or 0, gid or 0, (gid or 0,), read_only)
    script = chroot_script(image, layer, mounts or [], who, "image-test", image.workdir, argv)
    return subprocess.run(
        ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", "\n".join(script)],
        env={**image.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
