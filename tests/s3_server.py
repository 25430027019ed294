"""A real S3 HTTP API on 127.0.0.1 for tests: moto's threaded server, one per test.

Use the ``moto_s3`` fixture (register this module as a pytest plugin, or import the
fixture into a test module). It points the standard AWS chain at fake credentials through
environment variables only (nothing reads ``~/.aws``), starts the server on a free port,
empties moto's in-process state and yields a :class:`MotoS3` with the endpoint, the
``storage_options`` the project's helpers take, and a boto3 client for setting up buckets.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No instance-metadata lookups (slow timeouts off EC2) and no real profiles.
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server: where it listens and a client to fill buckets."""

    endpoint_url: str
    client: Any  # boto3 S3 client (botocore builds its class at run time)

    @property
    def storage_options(self) -> dict[str, str]:
        """What ``orchestrate.datasets.filesystem`` helpers take to reach this server."""
        return {"endpoint_url": self.endpoint_url, "region": FAKE_CREDENTIALS["AWS_DEFAULT_REGION"]}

    def upload(self, local_path: Path, bucket: str, key: str) -> str:
        """Upload a local file and return its ``s3://`` URI."""
        self.client.upload_file(str(local_path), bucket, key)
        return f"s3://{bucket}/{key}"

    def put(self, bucket: str, key: str, body: bytes) -> str:
        """Store ``body`` under ``key`` and return its ``s3://`` URI."""
        self.client.put_object(Bucket=bucket, Key=key, Body=body)
        return f"s3://{bucket}/{key}"


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MotoS3]:
    """A moto S3 server on 127.0.0.1 with fake credentials in the environment."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # Point config/credential files at nothing so a developer's ~/.aws cannot leak in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))

    # Port 0: the OS picks a free port, so parallel runs cannot collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        # moto keeps buckets in process-wide state: start every test from an empty store.
        reset = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(reset, timeout=10):
            pass
        client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"]
        )
        yield MotoS3(endpoint_url=endpoint_url, client=client)
    finally:
        server.stop()
