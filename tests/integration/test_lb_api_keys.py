"""API keys on the load balancer, tried as someone on the LAN would: real HAProxy with the rendered
config, a stand-in vLLM backend, and the key CLI (runtime.lbkeys) changing keys through HAProxy's
admin socket while it serves."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.lb_harness import BackendProcess, Haproxy
from harness.servers import ROOT, free_port, wait_for
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
VLLM_KEY = "vllm-internal-key-for-the-test"


@dataclass
class Guarded:
    url: str
    keys_dir: Path
    stack_key: str
    haproxy: Haproxy
    log_path: Path

    def chat(self, key: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.post(f"{self.url}/v1/chat/completions", json={"model": "m"}, headers=headers, timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runtime.lbkeys", "--dir", str(self.keys_dir), "--map-path",
             str(self.keys_dir / "api-keys.map"), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip


def lbkeys_cli(keys_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.lbkeys", "--dir", str(keys_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    require_binary("haproxy")
    backend = BackendProcess("b1", free_port())
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    # What the kubernetes pod's init container runs (compose's up script seeds the file instead).
    seeded = lbkeys_cli(keys_dir, "init")
    assert seeded.returncode == 0 and (keys_dir / "api-keys.map").read_text() == "", seeded.stderr
    stack_key = "sk-stack-operator-key"
    stack_map = tmp_path / "stack-keys.map"  # what Pulumi renders: the stack's own keys, by digest
    stack_map.write_text(f"{hashlib.sha256(stack_key.encode()).hexdigest()} operator\n")
    port, stats_port = free_port(), free_port()
    config = _render_two_maps(backend.address, port, stats_port, stack_map, keys_dir)
    log_path = tmp_path / "haproxy.log"
    haproxy = Haproxy(config, port, stats_port, log_path=log_path, env={"VLLM_API_KEY": VLLM_KEY})
    haproxy.wait_status({"vllm1": "UP"})
    try:
        yield Guarded(f"http://127.0.0.1:{port}", keys_dir, stack_key, haproxy, log_path)
    finally:
        haproxy.stop()
        backend.kill()


def _render_two_maps(backend: str, port: int, stats_port: int, stack_map: Path, keys_dir: Path) -> str:
    args = [
        sys.executable, "-m", "infra.lb", "--backend", backend, "--port", str(port), "--stats-port", str(stats_port),
        "--api-key-map", str(stack_map), "--api-key-map", str(keys_dir / "api-keys.map"),
        "--admin-socket", str(keys_dir / "admin.sock"), "--backend-key-env", "VLLM_API_KEY",
    ]  # fmt: skip
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_no_key_or_an_unknown_key_is_refused_and_health_stays_open(guarded: Guarded) -> None:
    for key in (None, "sk-guess", guarded.stack_key + "x", guarded.stack_key.upper()):
        refused = guarded.chat(key)
        assert refused.status_code == 401, key
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{guarded.url}/health", timeout=10).status_code == 200


def test_a_valid_key_passes_and_the_backend_sees_vllms_key_not_the_clients(guarded: Guarded) -> None:
    served = guarded.chat(guarded.stack_key)
    assert served.status_code == 200, served.text
    assert served.json()["authorization"] == f"Bearer {VLLM_KEY}"  # the client's key never reaches vLLM


def test_keys_made_and_revoked_with_the_cli_take_effect_at_once_without_a_reload(guarded: Guarded) -> None:
    created = guarded.cli("create", "alice")
    assert created.returncode == 0, created.stderr
    assert "applied to the running HAProxy" in created.stderr
    alice = created.stdout.strip()
    assert alice.startswith("sk-lb-") and alice not in (guarded.keys_dir / "api-keys.map").read_text()
    assert guarded.chat(alice).status_code == 200
    assert guarded.cli("list").stdout.split() == ["alice"]
    revoked = guarded.cli("revoke", "alice")
    assert revoked.returncode == 0 and "applied to the running HAProxy" in revoked.stderr
    assert guarded.chat(alice).status_code == 401
    assert guarded.chat(guarded.stack_key).status_code == 200  # others unaffected
    assert guarded.haproxy.process.poll() is None  # the same HAProxy process: no restart, no reload


def test_the_cli_names_bad_input(guarded: Guarded) -> None:
    assert guarded.cli("create", "alice").returncode == 0
    again = guarded.cli("create", "alice")
    assert again.returncode == 1 and "a key named 'alice' exists" in again.stderr
    assert "no key named 'bob'" in guarded.cli("revoke", "bob").stderr
    assert "letters, digits" in guarded.cli("create", "a b; rm").stderr
    (guarded.keys_dir / "api-keys.map").write_text("not-a-digest alice\n")
    broken = guarded.cli("list")
    assert broken.returncode == 1 and "api-keys.map:1: expected '<sha256 hex> <name>'" in broken.stderr


def test_the_request_log_names_the_key_never_the_key_itself(guarded: Guarded) -> None:
    assert guarded.chat(guarded.stack_key).status_code == 200

    def logged() -> list[dict]:
        lines = guarded.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    entries = wait_for(logged, 10, "a JSON request log line")
    assert entries[-1]["key"] == "operator" and entries[-1]["status"] == 200
    assert guarded.stack_key not in guarded.log_path.read_text()


def test_init_keeps_the_keys_a_restarted_pod_finds_and_names_a_broken_map(guarded: Guarded) -> None:
    """The init container runs at every pod start: it must never empty a map with users' keys in it."""
    made = guarded.cli("create", "alice")
    assert made.returncode == 0, made.stderr
    again = lbkeys_cli(guarded.keys_dir, "init")
    assert again.returncode == 0 and "kept (1 keys)" in again.stderr, again.stderr
    assert guarded.chat(made.stdout.strip()).status_code == 200
    (guarded.keys_dir / "api-keys.map").write_text("not-a-digest alice\n")
    broken = lbkeys_cli(guarded.keys_dir, "init")
    assert broken.returncode == 1 and "api-keys.map:1: expected '<sha256 hex> <name>'" in broken.stderr


def test_the_sidecars_hold_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    """The pod's sidecar process: up until the kubelet's SIGTERM, then gone with status 0 (a process
    that ignored it would hold every rollout for the whole grace period)."""
    held = subprocess.Popen(
        [sys.executable, "-m", "runtime.lbkeys", "--dir", str(tmp_path), "hold"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert held.stderr is not None
        assert "holding until SIGTERM" in held.stderr.readline()  # its handlers are in place
        assert held.poll() is None
        held.send_signal(signal.SIGTERM)
        assert held.wait(timeout=10) == 0
    finally:
        held.kill()
        held.communicate()
