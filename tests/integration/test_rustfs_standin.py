"""The RustFS stand-in of the local stack answers the bucket set-up's admin calls as RustFS's source
says they go (runtime/batch/s3_users.py), so `make stack-up` runs the same set-up as stella: the real
stand-in script (moto behind RustFS's command line) on loopback, the real set-up command against it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "images" / "standins" / "rustfs" / "rustfs.py"
ROOT_KEY, ROOT_SECRET = "vllm-gb10", "root-secret-of-the-test"


@pytest.fixture(scope="module")
def standin() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "RUSTFS_ACCESS_KEY": ROOT_KEY, "RUSTFS_SECRET_KEY": ROOT_SECRET}
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--address", f"127.0.0.1:{port}", "/tmp"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "the RustFS stand-in's /health")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def set_up(url: str, root_secret: str = ROOT_SECRET) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ROOT_KEY,
        "AWS_SECRET_ACCESS_KEY": root_secret,
        "S3_BATCH_USER_SECRET": "batch-user-secret-0123456789",
        "S3_BACKUP_USER_SECRET": "backup-user-secret-0123456789",
    }
    return subprocess.run(
        [sys.executable, "-m", "runtime.batch.s3_users", "--endpoint", url, "--bucket", "batch",
         "--batch-user", "vllm-gb10-batch", "--backup-user", "vllm-gb10-backup"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_set_up_makes_both_users_on_the_standin_and_a_second_run_changes_nothing(standin: str) -> None:
    for _ in range(2):
        done = set_up(standin)
        assert done.returncode == 0, done.stderr
        assert "vllm-gb10-batch (vllm-gb10-batch-objects), vllm-gb10-backup (vllm-gb10-backup-backups)" in done.stdout


def test_the_standin_refuses_admin_calls_not_signed_by_the_root_user(standin: str) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "someone-else"}
    done = subprocess.run(
        [sys.executable, "-m", "runtime.batch.s3_users", "--endpoint", standin, "--bucket", "batch",
         "--batch-user", "vllm-gb10-batch", "--backup-user", "vllm-gb10-backup"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**env, "AWS_SECRET_ACCESS_KEY": "x" * 20, "S3_BATCH_USER_SECRET": "s" * 20,
             "S3_BACKUP_USER_SECRET": "t" * 20},
    )  # fmt: skip
    assert done.returncode == 1
    assert "step add-canned-policy vllm-gb10-batch-objects" in done.stderr and "HTTP 403" in done.stderr
