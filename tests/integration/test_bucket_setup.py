"""The bucket set-up job (python -m runtime.batch.bucket) against a real S3 server: new bucket, re-run, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import boto3

from harness.servers import S3Server

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "setup-test", "AWS_SECRET_ACCESS_KEY": "setup-test-secret"}


def _run(s3_server: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.batch.bucket", "--endpoint", s3_server.url, *args],
        env={**os.environ, **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _client(s3_server: S3Server) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3_server.url, region_name="us-east-1", **{k.lower(): v for k, v in CREDENTIALS.items()}
    )


def _rules(s3_server: S3Server, bucket: str) -> list[dict]:
    return _client(s3_server).get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]


def test_a_new_bucket_gets_its_expiry_and_a_rerun_replaces_it(s3_server: S3Server) -> None:
    first = _run(s3_server, "--bucket", "setup-new", "--expire-days", "7")
    assert first.returncode == 0, first.stderr
    assert [r["Expiration"]["Days"] for r in _rules(s3_server, "setup-new")] == [7]
    again = _run(s3_server, "--bucket", "setup-new", "--expire-days", "3")  # idempotent; the rule is replaced
    assert again.returncode == 0, again.stderr
    assert [r["Expiration"]["Days"] for r in _rules(s3_server, "setup-new")] == [3]


def test_the_bucket_is_encrypted_at_rest_by_default(s3_server: S3Server) -> None:
    """SSE-S3 as the bucket's default (README "Object store": RustFS applies it to every write)."""
    for _ in range(2):  # a re-run keeps it
        done = _run(s3_server, "--bucket", "setup-sse", "--expire-days", "7")
        assert done.returncode == 0, done.stderr
        assert "encrypted (AES256)" in done.stdout
    client = _client(s3_server)
    rules = client.get_bucket_encryption(Bucket="setup-sse")["ServerSideEncryptionConfiguration"]["Rules"]
    assert [r["ApplyServerSideEncryptionByDefault"] for r in rules] == [{"SSEAlgorithm": "AES256"}]
    client.put_object(Bucket="setup-sse", Key="files/f", Body=b"x")  # no SSE header: the default applies
    assert client.head_object(Bucket="setup-sse", Key="files/f")["ServerSideEncryption"] == "AES256"


def test_bad_input_is_named(s3_server: S3Server) -> None:
    zero = _run(s3_server, "--bucket", "setup-bad", "--expire-days", "0")
    assert zero.returncode == 2 and "--expire-days must be at least 1, got 0" in zero.stderr
    unreachable = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.batch.bucket",
            "--endpoint",
            "http://127.0.0.1:9",
            "--bucket",
            "b",
            "--expire-days",
            "1",
        ],
        env={**os.environ, **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unreachable.returncode == 1
    assert "bucket set-up of b at http://127.0.0.1:9 failed" in unreachable.stderr
