"""A real S3 server for the tests: SeaweedFS (`weed server -s3`, built from its Go module by
hack/build-seaweedfs.sh) on 127.0.0.1, with one identity in its S3 config, so requests are signed and checked and
wrong credentials are refused (SignatureDoesNotMatch, InvalidAccessKeyId) as AWS refuses them.

moto's server (`start_moto`) stays for what only it does: AWS IAM users and policies (a credential allowed to read
but not to write)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key: unauthenticated; everything after is checked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    readonly: tuple[str, str] | None = None  # a second identity that may read and list, never write

    @property
    def readonly_env(self) -> dict[str, str]:
        """The read-only identity's credentials, as a pod gets them."""
        assert self.readonly is not None, "this server has no read-only identity"
        key, secret = self.readonly
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}

    @property
    def env(self) -> dict[str, str]:
        """Credentials as a pod gets them from its Secret (environment variables)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def bucket(self, name: str) -> str:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return name

    def upload_dir(self, directory: Path, bucket: str, prefix: str) -> str:
        client = self.client()
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(directory)}")
        return f"s3://{bucket}/{prefix.rstrip('/')}/"

    def put(self, bucket: str, key: str, body: bytes) -> str:
        self.client().put_object(Bucket=bucket, Key=key, Body=body)
        return f"s3://{bucket}/{key}"

    def get(self, uri: str) -> bytes:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, uri: str) -> list[str]:
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", []))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


ROOT = Path(__file__).resolve().parents[1]
WEED = ROOT / ".cache" / "testbed" / "bin" / "weed"


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}") from None
            time.sleep(0.2)


def start(log: Path) -> S3Server:
    """SeaweedFS in one process (master, volume server, filer, S3 gateway), data under log's folder."""
    if not WEED.is_file():
        raise RuntimeError(f"{WEED} is missing: run `make testbed` (hack/build-seaweedfs.sh) first")
    work = log.parent / "seaweedfs"
    work.mkdir(parents=True, exist_ok=True)
    access, secret = "kubetune-tests", secrets.token_hex(20)
    readonly = ("kubetune-readonly", secrets.token_hex(20))
    config = work / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "kubetune-tests",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "kubetune-readonly",
                        "credentials": [{"accessKey": readonly[0], "secretKey": readonly[1]}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    config.chmod(0o600)
    master, volume, filer, s3 = (free_port() for _ in range(4))
    grpc = [free_port() for _ in range(4)]
    process = subprocess.Popen(
        [
            str(WEED),
            "server",
            f"-dir={work}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={grpc[0]}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={grpc[1]}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=300",  # SeaweedFS grows 7 volumes per bucket; the default 8 would allow one bucket
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={grpc[2]}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={grpc[3]}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    _wait_port(s3, process, log, "SeaweedFS")
    server = S3Server(f"http://127.0.0.1:{s3}", access, secret, process, readonly)
    deadline = time.monotonic() + 120
    while True:  # the gateway listens before the filer and volumes are ready: wait for a real round trip
        try:
            server.bucket("kubetune-ready")
            server.put("kubetune-ready", "probe", b"ok")
            if server.get("s3://kubetune-ready/probe") == b"ok":
                return server
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not serve S3: {log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def start_moto(log: Path) -> S3Server:
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    _wait_port(port, process, log, "moto server", timeout=60)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    iam.create_user(UserName="kubetune-tests")
    iam.put_user_policy(
        UserName="kubetune-tests",
        PolicyName="s3-all",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
    )
    key = iam.create_access_key(UserName="kubetune-tests")["AccessKey"]
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process)
