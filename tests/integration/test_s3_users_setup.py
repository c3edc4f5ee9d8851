"""The scoped-user set-up (python -m runtime.batch.s3_users) against a recorded RustFS admin exchange.

No RustFS runs here: tests/integration/recordings/rustfs_admin_users.json is the exchange as RustFS's
source defines it (each entry cites its handler). A real HTTP server on loopback replays it and checks
every request: method, path, query, the SigV4 signature (recomputed with the root key), the payload
hash and the JSON body. It also keeps the state the calls set, so a second run is seen to change nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from harness.servers import free_port
from tests.integration.batch_fixtures import LoopbackServer

RECORDING = json.loads((Path(__file__).parent / "recordings" / "rustfs_admin_users.json").read_text())
ROOT = RECORDING["root"]
AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})"
)


class RecordedAdmin(LoopbackServer):
    """Replays the recording in order (again from the top on each run); a request that differs is a 400
    and a finding. `refuse` = (step index, status) answers that step with a RustFS error instead."""

    def __init__(self, refuse: tuple[int, int] | None = None):
        self.findings: list[str] = []
        self.steps: list[str] = []  # the steps answered, in order
        self.state: dict[str, Any] = {"policies": {}, "users": {}, "mappings": {}}
        self.position = 0
        self.refuse = refuse
        self.lock = threading.Lock()
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with admin.lock:
                    status, headers, reply = admin.answer(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:
                self.handle_one()

            def do_PUT(self) -> None:
                self.handle_one()

        self.serve(Handler)

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        exchanges = RECORDING["exchanges"]
        index = self.position % len(exchanges)
        expected = exchanges[index]
        self.position += 1
        problems = self.check(expected["request"], method, target, headers, body)
        if problems:
            self.findings.extend(f"{expected['step']}: {p}" for p in problems)
            return 400, {}, b"not the recorded request"
        self.steps.append(expected["step"])
        if self.refuse is not None and self.refuse[0] == index:
            return self.refuse[1], {"Content-Type": "application/xml"}, RECORDING["refusal_body"].encode()
        self.apply(expected["request"])
        response = expected["response"]
        return response["status"], response["headers"], response["body"].encode()

    def check(self, want: dict[str, Any], method: str, target: str, headers: dict[str, str], body: bytes) -> list[str]:
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        problems = []
        if (method, url.path, query) != (want["method"], want["path"], want["query"]):
            problems.append(f"got {method} {url.path} {query}")
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
            problems.append("x-amz-content-sha256 is not the body's SHA-256")
        problems.extend(self.check_signature(method, target, lower, body))
        if want["body_json"] is None:
            if body:
                problems.append(f"a body where RustFS reads none: {body[:100]!r}")
        else:
            try:
                if json.loads(body) != want["body_json"]:
                    problems.append(f"body {body[:300]!r} is not the recorded JSON")
            except ValueError:
                problems.append(f"body is not JSON (encrypted?): {body[:60]!r}")
        return problems

    @staticmethod
    def check_signature(method: str, target: str, headers: dict[str, str], body: bytes) -> list[str]:
        match = AUTH.fullmatch(headers.get("authorization", ""))
        if match is None:
            return [f"no SigV4 Authorization header: {headers.get('authorization')!r}"]
        access_key, _date, region, service, signed, signature = match.groups()
        problems = []
        if (access_key, region, service) != (ROOT["access_key"], "us-east-1", "s3"):
            problems.append(f"signed as {access_key}/{region}/{service}, not the root key for us-east-1/s3")
        names = signed.split(";")
        if not {"host", "x-amz-content-sha256", "x-amz-date"} <= set(names):
            problems.append(f"signed headers {names} lack host, x-amz-content-sha256 or x-amz-date")
        # Recompute it from what arrived, with the root key (botocore's own canonical form).
        request = AWSRequest(method=method, url=f"http://{headers['host']}{target}", data=body)
        for name in names:
            request.headers[name] = headers.get(name, "")
        request.context["timestamp"] = headers.get("x-amz-date", "")
        auth = S3SigV4Auth(Credentials(ROOT["access_key"], ROOT["secret_key"]), "s3", "us-east-1")
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if expected != signature:
            problems.append("the signature is not the root key's")
        return problems

    def apply(self, request: dict[str, Any]) -> None:
        """What RustFS stores for each call (policies.rs set_policy, sys.rs create_user, policy_db_set)."""
        path, query = request["path"].rsplit("/", 1)[1], request["query"]
        if path == "add-canned-policy":
            self.state["policies"][query["name"]] = request["body_json"]
        elif path == "add-user":
            self.state["users"][query["accessKey"]] = request["body_json"]
        elif path == "set-user-or-group-policy":
            self.state["mappings"][query["userOrGroup"]] = query["policyName"]


def _env(**extra: str) -> dict[str, str]:
    users = RECORDING["users"]
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ROOT["access_key"],
        "AWS_SECRET_ACCESS_KEY": ROOT["secret_key"],
        users["batch"]["secret_env"]: users["batch"]["secret"],
        users["backup"]["secret_env"]: users["backup"]["secret"],
        **extra,
    }


def _setup(endpoint: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    users = RECORDING["users"]
    return subprocess.run(
        [
            *(sys.executable, "-m", "runtime.batch.s3_users", "--endpoint", endpoint, "--bucket", RECORDING["bucket"]),
            *("--batch-user", users["batch"]["access_key"], "--backup-user", users["backup"]["access_key"]),
        ],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def admin() -> Iterator[RecordedAdmin]:
    server = RecordedAdmin()
    yield server
    server.close()


def test_the_calls_in_order_and_a_rerun_changes_nothing(admin: RecordedAdmin) -> None:
    first = _setup(admin.url)
    assert first.returncode == 0, first.stderr
    assert admin.findings == []
    assert admin.steps == [e["step"] for e in RECORDING["exchanges"]]
    state = json.loads(json.dumps(admin.state))
    assert state["mappings"] == {
        "vllm-gb10-batch": "vllm-gb10-batch-objects",
        "vllm-gb10-backup": "vllm-gb10-backup-backups",
    }
    again = _setup(admin.url)  # the users and policies exist now: the same calls, the same state, success
    assert again.returncode == 0, again.stderr
    assert admin.findings == [] and admin.steps == 2 * [e["step"] for e in RECORDING["exchanges"]]
    assert admin.state == state
    assert "vllm-gb10-batch (vllm-gb10-batch-objects), vllm-gb10-backup (vllm-gb10-backup-backups)" in again.stdout


@pytest.mark.parametrize(("step", "status"), [(0, 403), (1, 500), (6, 403)])
def test_a_refusal_fails_the_step_by_name(step: int, status: int) -> None:
    server = RecordedAdmin(refuse=(step, status))
    try:
        failed = _setup(server.url)
    finally:
        server.close()
    name = RECORDING["exchanges"][step]["step"]
    assert failed.returncode == 1
    assert f"S3 user set-up at {server.url} failed: step {name}:" in failed.stderr
    assert f"refused with HTTP {status}" in failed.stderr and "AccessDenied" in failed.stderr
    assert server.steps[-1] == name and len(server.steps) == step + 1  # nothing after the refusal
    assert server.findings == []


def test_the_wrong_root_key_is_refused_by_the_signature_check(admin: RecordedAdmin) -> None:
    failed = _setup(admin.url, _env(AWS_SECRET_ACCESS_KEY="not-the-root-secret-key"))
    assert failed.returncode == 1 and "step add-canned-policy vllm-gb10-batch-objects" in failed.stderr
    assert admin.findings == ["add-canned-policy vllm-gb10-batch-objects: the signature is not the root key's"]


def test_unreachable_and_bad_input_are_named() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = _setup(nobody)
    assert unreachable.returncode == 1
    step = "step add-canned-policy vllm-gb10-batch-objects: PUT /rustfs/admin/v3/add-canned-policy"
    assert f"{step} at {nobody} unreachable" in unreachable.stderr
    short = _setup(nobody, _env(S3_BATCH_USER_SECRET="short"))
    assert short.returncode == 1
    assert "S3_BATCH_USER_SECRET: the secret key of vllm-gb10-batch must be 8-40" in short.stderr
    no_root = _setup(nobody, {k: v for k, v in _env().items() if k != "AWS_SECRET_ACCESS_KEY"})
    assert no_root.returncode == 1 and "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in no_root.stderr


def test_the_recording_holds_the_documents_the_set_up_sends() -> None:
    """The recorded policy bodies are the policies whose effect test_s3_scoped_policy proves on moto."""
    from runtime.batch.s3_policies import backup_policy, batch_policy

    requests = [e["request"] for e in RECORDING["exchanges"]]
    bodies = [r["body_json"] for r in requests if r["path"].endswith("canned-policy")]
    assert bodies == [batch_policy(RECORDING["bucket"]), backup_policy(RECORDING["bucket"])]
